/**
 * Which DSN (if any) one delivery attempt of one mail calls for. Pure: the scheduler passes
 * the mail as it was reserved and the outcomes of the attempt.
 *
 * Rules (RFC 3461, with Postfix's habits where the RFC leaves a choice):
 * - NOTIFY absent means FAILURE,DELAY (Postfix's default). NOTIFY=NEVER: no DSN at all.
 * - failed or expired recipient with FAILURE → Action failed (expired: Status 4.4.7).
 * - deferred recipient with DELAY → Action delayed, once per mail: only when
 *   `delivery.delayWarning` is set, the mail is at least that old, and no warning went out before
 *   (the caller records `delayWarnedAt`).
 * - delivered recipient with SUCCESS → Action relayed. The delivery stage does not tell us
 *   whether the next hop took over DSN duties (advertised DSN), so we always report `relayed`:
 *   the sender may get a second notice from the final system, never none.
 * - One DSN per attempt covers every recipient to report (failed, delayed and relayed together).
 * - Never bounce a bounce: for a null-sender mail only failures are reported, and only to
 *   `delivery.postmaster` when set; otherwise the plan says `drop` and the caller logs it.
 * - Returned content: RET=FULL → the whole message (headers only when it is larger than
 *   FULL_RETURN_LIMIT, like Postfix's bounce_size_limit); RET=HDRS or no RET → headers only
 *   (our choice: a bounce need not carry megabytes back, and headers identify the message).
 *   Delay and success notices always carry headers only.
 */
import type { DsnNotify, QueuedMail, RecipientOutcome, SmtpReply } from '../queue/types.js';
import { remoteMtaName, type DsnRecipientReport } from './dsn.js';

/** Largest original returned whole in a failure DSN (RET=FULL); bigger ones return headers. */
export const FULL_RETURN_LIMIT = 10 * 1024 * 1024;

const DEFAULT_NOTIFY: DsnNotify[] = ['FAILURE', 'DELAY'];

export interface DsnPolicy {
  now: number;
  /** delivery.retry.lifetime in ms. */
  lifetimeMs: number;
  /** delivery.delayWarning in ms, or null for never. */
  delayWarningMs: number | null;
  /** delivery.postmaster, or null. */
  postmaster: string | null;
}

export type DsnPlan =
  | { kind: 'none' }
  /** A failed bounce with nowhere to go: the caller logs it. */
  | { kind: 'drop'; recipients: DsnRecipientReport[] }
  | {
      kind: 'send';
      to: string;
      recipients: DsnRecipientReport[];
      returnContent: 'full' | 'headers';
      /** True when a delay warning is part of it (record delayWarnedAt). */
      delayWarning: boolean;
    };

/** The RFC 3463 status of a reply: its enhanced code, else one derived from the basic code. */
export function statusOf(reply: SmtpReply | undefined, fallback: string): string {
  if (reply?.enhanced && /^[245]\.\d{1,3}\.\d{1,3}$/.test(reply.enhanced)) return reply.enhanced;
  if (reply && reply.code >= 200 && reply.code < 600) return `${Math.floor(reply.code / 100)}.0.0`;
  return fallback;
}

/** Diagnostic text: "550 5.1.1 User unknown" for a remote reply. */
export function replyText(reply: SmtpReply): string {
  const enhanced = reply.enhanced && !reply.message.startsWith(reply.enhanced) ? `${reply.enhanced} ` : '';
  return `${reply.code} ${enhanced}${reply.message}`.trim();
}

function report(
  mail: QueuedMail, o: RecipientOutcome, action: DsnRecipientReport['action'], status: string, policy: DsnPolicy,
): DsnRecipientReport {
  const orcpt = mail.recipients.find((r) => r.address.toLowerCase() === o.address.toLowerCase())?.orcpt;
  return {
    address: o.address,
    ...(orcpt ? { orcpt } : {}),
    action,
    status,
    ...(o.remoteHost ? { remoteMta: remoteMtaName(o.remoteHost) } : {}),
    ...(o.reply ? { diagnostic: { type: o.remoteHost ? 'smtp' as const : 'x-spoolhouse' as const, text: replyText(o.reply) } } : {}),
    lastAttemptAt: policy.now,
    ...(action === 'delayed' ? { willRetryUntil: mail.receivedAt + policy.lifetimeMs } : {}),
  };
}

function notifyOf(mail: QueuedMail, address: string): DsnNotify[] {
  return mail.recipients.find((r) => r.address.toLowerCase() === address.toLowerCase())?.notify ?? DEFAULT_NOTIFY;
}

/** Decides the DSN for one attempt of `mail` with these recipient outcomes. */
export function planDsn(mail: QueuedMail, outcomes: RecipientOutcome[], policy: DsnPolicy): DsnPlan {
  const failed: DsnRecipientReport[] = [];
  const delayed: DsnRecipientReport[] = [];
  const relayed: DsnRecipientReport[] = [];
  const delayDue = policy.delayWarningMs !== null && mail.delayWarnedAt === undefined
    && policy.now - mail.receivedAt >= policy.delayWarningMs;
  for (const o of outcomes) {
    const notify = notifyOf(mail, o.address);
    if (notify.includes('NEVER')) continue;
    if ((o.outcome === 'failed' || o.outcome === 'expired') && notify.includes('FAILURE')) {
      failed.push(report(mail, o, 'failed', o.outcome === 'expired' ? '4.4.7' : statusOf(o.reply, '5.0.0'), policy));
    } else if (o.outcome === 'deferred' && delayDue && notify.includes('DELAY')) {
      delayed.push(report(mail, o, 'delayed', statusOf(o.reply, '4.0.0'), policy));
    } else if (o.outcome === 'delivered' && notify.includes('SUCCESS')) {
      relayed.push(report(mail, o, 'relayed', statusOf(o.reply, '2.0.0'), policy));
    }
  }
  if (mail.sender === '') {
    if (failed.length === 0) return { kind: 'none' };
    if (!policy.postmaster) return { kind: 'drop', recipients: failed };
    return { kind: 'send', to: policy.postmaster, recipients: failed, returnContent: 'headers', delayWarning: false };
  }
  const recipients = [...failed, ...delayed, ...relayed];
  if (recipients.length === 0) return { kind: 'none' };
  const full = failed.length > 0 && mail.dsn.ret === 'FULL' && mail.size <= FULL_RETURN_LIMIT;
  return { kind: 'send', to: mail.sender, recipients, returnContent: full ? 'full' : 'headers', delayWarning: delayed.length > 0 };
}
