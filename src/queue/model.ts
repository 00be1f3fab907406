/**
 * Every state transition of a queued mail, written once as pure functions on plain data.
 * Backends load a mail, call one of these, and persist the result atomically; so the spool and
 * Kafka backends cannot disagree on what "hold", "remove" or "an attempt" means.
 *
 * Rules:
 * - A terminal mail (delivered, bounced, expired, removed) never changes again, except that
 *   outcomes of an attempt that was in flight when it was removed are still added to its history.
 * - hold/remove of an active mail keep its lease, so the worker can still record what it did;
 *   `checkLease` answers false from then on, so it will not start or finish a DATA. Once the
 *   worker passed the point of no return (`applyCommitDelivery`, just before a final "."), they
 *   are refused (MailInFlightError) until that "." is settled or the attempt recorded.
 * - Every change bumps `generation` and `updatedAt`.
 */
import { randomBytes } from 'node:crypto';
import { monotonicFactory } from 'ulid';
import { InvalidTransitionError, LeaseLostError, MailInFlightError, RecipientExistsError, RecipientNotPendingError } from './errors.js';
import type {
  AttemptResult, BrowseFilter, EnqueueRequest, MailState, Millis, QueueEventType, QueuedMail, Recipient, SmtpReply,
} from './types.js';
import { RECIPIENT_DONE, TERMINAL_STATES } from './types.js';

/**
 * ulid's default PRNG calls crypto.getRandomValues once per character (16 calls per id), which
 * showed as ~5% of the SMTP ingest CPU; this draws the same CSPRNG bytes from a pooled buffer.
 */
const RANDOM_POOL_BYTES = 4096;
let randomPool = randomBytes(RANDOM_POOL_BYTES);
let randomPoolPos = 0;
function pooledRandom(): number {
  if (randomPoolPos + 4 > RANDOM_POOL_BYTES) {
    randomPool = randomBytes(RANDOM_POOL_BYTES);
    randomPoolPos = 0;
  }
  const v = randomPool.readUInt32BE(randomPoolPos);
  randomPoolPos += 4;
  return v / 0x1_0000_0000;
}

const ulid = monotonicFactory(pooledRandom);

/** A new sortable mail id (ULID). */
export function newMailId(now: Millis = Date.now()): string {
  return ulid(now);
}

/** A new unguessable lease token. */
export function newLeaseToken(): string {
  return ulid() + Math.random().toString(36).slice(2, 10);
}

/** History is capped so a mail deferred for days does not grow without bound. */
export const MAX_HISTORY = 100;

export function isTerminal(state: MailState): boolean {
  return TERMINAL_STATES.includes(state);
}

/** Lower-cased domain of an address ('' for the null sender). */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

export function recipientDomains(mail: Pick<QueuedMail, 'recipients'>): string[] {
  return [...new Set(mail.recipients.map((r) => domainOf(r.address)))];
}

/** Recipients still to be tried. */
export function pendingRecipients(mail: Pick<QueuedMail, 'recipients'>): Recipient[] {
  return mail.recipients.filter((r) => !RECIPIENT_DONE.includes(r.status));
}

export function createMail(req: EnqueueRequest, now: Millis = Date.now()): QueuedMail {
  return {
    id: req.id,
    state: req.hold ? 'held' : 'queued',
    sender: req.sender,
    recipients: req.recipients.map((r) => ({
      address: r.address,
      status: 'pending',
      ...(r.notify ? { notify: r.notify } : {}),
      ...(r.orcpt ? { orcpt: r.orcpt } : {}),
    })),
    size: req.body.length,
    receivedAt: req.receivedAt ?? now,
    priority: req.priority,
    notBefore: req.notBefore,
    attempts: 0,
    history: [],
    dsn: req.dsn ?? {},
    smtputf8: req.smtputf8 ?? false,
    bodyType: req.bodyType ?? '7BIT',
    client: req.client,
    ...(req.subject !== undefined ? { subject: req.subject } : {}),
    ...(req.messageId !== undefined ? { messageId: req.messageId } : {}),
    classification: req.classification,
    ...(req.hold ? { holdReason: req.hold.reason } : {}),
    ...(req.mtPriority !== undefined ? { mtPriority: req.mtPriority } : {}),
    generation: 1,
    updatedAt: now,
  };
}

function changed(mail: QueuedMail, patch: Partial<QueuedMail>, now: Millis): QueuedMail {
  return { ...mail, ...patch, generation: mail.generation + 1, updatedAt: now };
}

/** Is the mail due for a worker at `now`: queued and not-before passed, or active with a lapsed lease. */
export function isDue(mail: QueuedMail, now: Millis): boolean {
  if (mail.state === 'queued') return mail.notBefore <= now;
  if (mail.state === 'active') return (mail.lease?.until ?? 0) <= now;
  return false;
}

export function applyReserve(mail: QueuedMail, owner: string, token: string, leaseMs: number, now: Millis): QueuedMail {
  if (!isDue(mail, now)) throw new InvalidTransitionError(mail.id, mail.state, 'reserve');
  return changed(mail, { state: 'active', lease: { owner, token, until: now + leaseMs } }, now);
}

/** True while `token` holds a live lease and nobody held or removed the mail. */
export function leaseValid(mail: QueuedMail | undefined, token: string, now: Millis): boolean {
  return !!mail && mail.state === 'active' && mail.lease?.token === token && mail.lease.until > now;
}

export function applyRenewLease(mail: QueuedMail, token: string, leaseMs: number, now: Millis): QueuedMail {
  if (!leaseValid(mail, token, now)) throw new LeaseLostError(mail.id);
  return changed(mail, { lease: { ...mail.lease!, until: now + leaseMs } }, now);
}

/** A final "." of the mail's running attempt is in flight (Lease.sending), and the lease lasts. */
export function sendingNow(mail: QueuedMail, now: Millis): boolean {
  return mail.state === 'active' && (mail.lease?.sending ?? 0) > 0 && mail.lease!.until > now;
}

/** The point of no return before a final "." (Queue.commitDelivery). */
export function applyCommitDelivery(mail: QueuedMail, token: string, now: Millis): QueuedMail {
  if (!leaseValid(mail, token, now)) throw new LeaseLostError(mail.id);
  return changed(mail, { lease: { ...mail.lease!, sending: (mail.lease!.sending ?? 0) + 1 } }, now);
}

/** One final "." settled (Queue.settleDelivery); the mail unchanged when the lease is another's or nothing is in flight. */
export function applySettleDelivery(mail: QueuedMail, token: string, now: Millis): QueuedMail {
  const lease = mail.lease;
  if (lease?.token !== token || !lease.sending) return mail;
  const { sending, ...rest } = lease;
  return changed(mail, { lease: sending > 1 ? { ...rest, sending: sending - 1 } : rest }, now);
}

export function applyReleaseLease(mail: QueuedMail, token: string, now: Millis): QueuedMail {
  if (mail.lease?.token !== token) throw new LeaseLostError(mail.id);
  const { lease: _lease, ...rest } = mail;
  return changed(rest, mail.state === 'active' ? { state: 'queued', notBefore: Math.min(mail.notBefore, now) } : {}, now);
}

/** What the mail's state becomes once no recipient is left to try. */
function finalState(recipients: Recipient[]): MailState {
  if (recipients.some((r) => r.status === 'failed')) return 'bounced';
  if (recipients.some((r) => r.status === 'expired')) return 'expired';
  return 'delivered';
}

export function applyAttempt(mail: QueuedMail, token: string, result: AttemptResult, now: Millis): QueuedMail {
  if (mail.lease?.token !== token) throw new LeaseLostError(mail.id);
  const byAddress = new Map(result.outcomes.map((o) => [o.address.toLowerCase(), o]));
  const recipients = mail.recipients.map((r): Recipient => {
    const o = byAddress.get(r.address.toLowerCase());
    if (!o || RECIPIENT_DONE.includes(r.status)) return r;
    return {
      ...r,
      status: o.outcome === 'deferred' ? 'deferred' : o.outcome,
      ...(o.reply ? { lastReply: o.reply } : {}),
      ...(o.remoteHost ? { remoteHost: o.remoteHost } : {}),
      lastAttemptAt: now,
    };
  });
  const history = [...mail.history, ...(result.history ?? [])].slice(-MAX_HISTORY);
  const left = recipients.some((r) => !RECIPIENT_DONE.includes(r.status));
  const { lease: _lease, ...rest } = mail;
  const patch: Partial<QueuedMail> = {
    recipients,
    history,
    attempts: mail.attempts + 1,
    ...(result.delayWarnedAt !== undefined ? { delayWarnedAt: result.delayWarnedAt } : {}),
  };
  if (mail.state === 'removed') return changed(rest, patch, now);
  if (!left) return changed(rest, { ...patch, state: finalState(recipients) }, now);
  // A partial bounce this attempt carried out is done with; one asked for while it ran is not.
  const bounce = mail.bounceRequest;
  const stillToBounce = bounce && (!bounce.recipients || bounce.recipients.some((a) => recipients.some((r) => r.address.toLowerCase() === a && !RECIPIENT_DONE.includes(r.status))));
  const { bounceRequest: _b, ...keep } = rest;
  const base = stillToBounce ? rest : keep;
  // An operator's bounce asked for while the attempt ran: due at once, to be given up.
  const notBefore = stillToBounce ? now : result.retryAt ?? now;
  // A mail held while its attempt ran stays held; otherwise it waits for its next try.
  return changed(base, { ...patch, state: mail.state === 'held' ? 'held' : 'queued', notBefore }, now);
}

export function applyHold(mail: QueuedMail, reason: string | undefined, now: Millis): QueuedMail {
  if (mail.state === 'held') return mail;
  if (isTerminal(mail.state)) throw new InvalidTransitionError(mail.id, mail.state, 'hold');
  if (sendingNow(mail, now)) throw new MailInFlightError(mail.id, 'hold');
  return changed(mail, { state: 'held', holdReason: reason ?? 'held by operator' }, now);
}

export function applyRelease(mail: QueuedMail, now: Millis): QueuedMail {
  if (mail.state !== 'held') throw new InvalidTransitionError(mail.id, mail.state, 'release');
  const { holdReason: _r, ...rest } = mail;
  // An attempt still in flight when it was held keeps its lease; the mail is active again.
  const state: MailState = mail.lease && mail.lease.until > now ? 'active' : 'queued';
  return changed(rest, { state }, now);
}

export function applyRemove(mail: QueuedMail, reason: string | undefined, now: Millis): QueuedMail {
  if (mail.state === 'removed') return mail;
  if (isTerminal(mail.state)) throw new InvalidTransitionError(mail.id, mail.state, 'remove');
  if (sendingNow(mail, now)) throw new MailInFlightError(mail.id, 'remove');
  return changed(mail, { state: 'removed', holdReason: reason ?? mail.holdReason }, now);
}

export function applyBounce(mail: QueuedMail, reason: string | undefined, now: Millis, recipients?: string[]): QueuedMail {
  if (isTerminal(mail.state)) throw new InvalidTransitionError(mail.id, mail.state, 'bounce');
  const named = recipients?.length ? bounceTargets(mail, recipients) : undefined;
  const bounceRequest: NonNullable<QueuedMail['bounceRequest']> = { reason: reason ?? 'bounced by the operator', at: now, ...(named ? { recipients: named } : {}) };
  if (bounceRequest.recipients) {
    // Only some recipients: the mail stays as it is (held stays held), due now when it waits.
    if (mail.state === 'active' || mail.state === 'held') return changed(mail, { bounceRequest }, now);
    return changed(mail, { bounceRequest, notBefore: Math.min(mail.notBefore, now) }, now);
  }
  if (mail.state === 'active') return changed(mail, { bounceRequest }, now);
  const { holdReason: _r, ...rest } = mail;
  const unheld = mail.state === 'held' ? rest : mail;
  // Held while an attempt was in flight (as applyRelease): that attempt keeps its lease, and the
  // mail is active again; it is given up once the attempt is recorded (due at once then).
  if (mail.lease && mail.lease.until > now) return changed(unheld, { state: 'active', bounceRequest }, now);
  return changed(unheld, { state: 'queued', bounceRequest, notBefore: Math.min(mail.notBefore, now) }, now);
}

/**
 * The recipients a partial bounce names (lower-cased, each a recipient not yet done), merged with
 * those of a request still waiting; undefined when that is every recipient left (a whole bounce).
 */
function bounceTargets(mail: QueuedMail, addresses: string[]): string[] | undefined {
  const pending = new Set(pendingRecipients(mail).map((r) => r.address.toLowerCase()));
  const all = new Set(mail.recipients.map((r) => r.address.toLowerCase()));
  const wanted = new Set(addresses.map((a) => a.toLowerCase()));
  for (const a of wanted) if (!pending.has(a)) throw new RecipientNotPendingError(mail.id, a, all.has(a));
  const earlier = mail.bounceRequest;
  // A whole bounce still waiting stays whole; a partial one adds its recipients.
  if (earlier && !earlier.recipients) return undefined;
  for (const a of earlier?.recipients ?? []) if (pending.has(a)) wanted.add(a);
  return wanted.size === pending.size ? undefined : [...wanted];
}

/**
 * An operator corrects a recipient (a misspelt address, a mailbox that moved): the recipient
 * `from`, not yet done, is `to` from now on, and is tried afresh (its last reply and host
 * forgotten). Its ORCPT keeps the address the sender gave (RFC 3461 §4.2), so a DSN still names
 * it. A mail being delivered cannot be changed (its attempt is sending to `from`): hold it
 * first, or wait for the attempt to end. A queued mail is due at once; a held one stays held.
 */
export function applyRedirect(mail: QueuedMail, from: string, to: string, now: Millis): QueuedMail {
  if (isTerminal(mail.state)) throw new InvalidTransitionError(mail.id, mail.state, 'redirect a recipient of');
  if (mail.state === 'active') throw new InvalidTransitionError(mail.id, 'being delivered (hold it first, or try again when the attempt ends)', 'redirect a recipient of');
  const wanted = from.toLowerCase();
  const i = mail.recipients.findIndex((r) => r.address.toLowerCase() === wanted);
  if (i < 0) throw new RecipientNotPendingError(mail.id, from, false);
  const old = mail.recipients[i]!;
  if (RECIPIENT_DONE.includes(old.status)) throw new RecipientNotPendingError(mail.id, from, true);
  if (mail.recipients.some((r, j) => j !== i && r.address.toLowerCase() === to.toLowerCase())) throw new RecipientExistsError(mail.id, to);
  const { lastReply: _l, remoteHost: _h, lastAttemptAt: _a, ...keep } = old;
  const recipients = mail.recipients.map((r, j) => (j === i ? { ...keep, address: to, status: 'pending' as const, orcpt: old.orcpt ?? `rfc822;${old.address}` } : r));
  return changed(mail, { recipients, ...(mail.state === 'queued' ? { notBefore: Math.min(mail.notBefore, now) } : {}) }, now);
}

export function applyRetryNow(mail: QueuedMail, now: Millis): QueuedMail {
  if (mail.state === 'active') return mail;
  if (mail.state !== 'queued') {
    throw new InvalidTransitionError(mail.id, mail.state, mail.state === 'held' ? 'retry (release it first)' : 'retry');
  }
  return changed(mail, {
    notBefore: Math.min(mail.notBefore, now),
    classification: { ...mail.classification, delay: { source: 'operator', detail: 'retry now', at: now } },
  }, now);
}

export function applySetPriority(mail: QueuedMail, priority: number, now: Millis): QueuedMail {
  if (isTerminal(mail.state)) throw new InvalidTransitionError(mail.id, mail.state, 'reprioritise');
  return changed(mail, { priority, classification: { ...mail.classification, priority: { source: 'operator' } } }, now);
}

export function applySetNotBefore(mail: QueuedMail, notBefore: Millis, now: Millis): QueuedMail {
  if (isTerminal(mail.state)) throw new InvalidTransitionError(mail.id, mail.state, 'reschedule');
  return changed(mail, { notBefore, classification: { ...mail.classification, delay: { source: 'operator' } } }, now);
}

/** The change-feed event type that describes going from `before` to `after`. */
export function eventTypeFor(before: QueuedMail | undefined, after: QueuedMail): QueueEventType {
  if (!before) return 'enqueued';
  if (before.state !== after.state) {
    switch (after.state) {
      case 'active': return 'reserved';
      case 'held': return 'held';
      case 'removed': return 'removed';
      case 'delivered': return 'delivered';
      case 'bounced': return 'bounced';
      case 'expired': return 'expired';
      case 'queued': return before.state === 'held' ? 'released' : 'deferred';
    }
  }
  if (after.state === 'active' && before.state === 'held') return 'released';
  return after.attempts > before.attempts ? 'deferred' : 'updated';
}

function listOf<T>(v: T | T[] | undefined): T[] | undefined {
  return v === undefined ? undefined : Array.isArray(v) ? v : [v];
}

/** Does the mail match every given filter? Used by backends after narrowing with an index. */
export function matchesFilter(mail: QueuedMail, f: BrowseFilter): boolean {
  const states = listOf(f.state);
  if (states && !states.includes(mail.state)) return false;
  const prios = listOf(f.priority);
  if (prios && !prios.includes(mail.priority)) return false;
  if (f.sender !== undefined && mail.sender.toLowerCase() !== f.sender.toLowerCase()) return false;
  if (f.recipient !== undefined) {
    const want = f.recipient.toLowerCase();
    if (!mail.recipients.some((r) => r.address.toLowerCase() === want)) return false;
  }
  if (f.domain !== undefined) {
    const want = f.domain.toLowerCase();
    if (!mail.recipients.some((r) => domainOf(r.address) === want)) return false;
  }
  if (f.since !== undefined && mail.receivedAt < f.since) return false;
  if (f.until !== undefined && mail.receivedAt > f.until) return false;
  if (f.minSize !== undefined && mail.size < f.minSize) return false;
  if (f.maxSize !== undefined && mail.size > f.maxSize) return false;
  if (f.q) {
    const q = f.q.toLowerCase();
    if (!(mail.subject ?? '').toLowerCase().includes(q) && !(mail.messageId ?? '').toLowerCase().includes(q)) return false;
  }
  if (f.reply) {
    const want = f.reply.toLowerCase();
    if (!mail.recipients.some((r) => (r.lastReply ? replyLine(r.lastReply).toLowerCase().includes(want) : false))) return false;
  }
  return true;
}

/**
 * A reply as one line, "CODE ENHANCED text" ("451 4.7.1 Greylisted"): as the delivery log writes
 * it, and what the browse filter `reply` searches, so that a text copied from the log finds its mail.
 */
export function replyLine(reply: SmtpReply): string {
  return reply.enhanced ? `${reply.code} ${reply.enhanced} ${reply.message}` : `${reply.code} ${reply.message}`;
}

/** qshape's age buckets, in minutes: 0-5, 5-10, 10-20, 20-40, 40-80, 80-160, 160-320, 320-1440, over a day. */
export const AGE_BUCKETS_MINUTES = [5, 10, 20, 40, 80, 160, 320, 1440, Infinity];

export function ageBucket(receivedAt: Millis, now: Millis): number {
  const minutes = (now - receivedAt) / 60_000;
  return AGE_BUCKETS_MINUTES.findIndex((limit) => minutes < limit);
}

/**
 * The order both backends hand due mail out in: classes high first; while a higher class has due
 * mail, `lowPriorityShare` of the picks go to the earliest-due mail of a lower class. The credit
 * for that is carried across calls (so it holds for callers that reserve one at a time) and capped
 * at one pick: it is not banked for a burst while nothing lower waits.
 */
export class DueOrder {
  #credit = 0;

  /** Takes the next item out of `classes` (high class first, each sorted); undefined when all are empty. */
  next<T>(classes: { items: T[] }[], lowPriorityShare: number | undefined, earlier: (a: T, b: T) => boolean): T | undefined {
    const live = classes.filter((c) => c.items.length);
    if (!live.length) return undefined;
    const [top, ...lower] = live;
    this.#credit = Math.min(1, this.#credit + Math.min(1, Math.max(0, lowPriorityShare ?? 0.1)));
    let from = top!;
    if (lower.length && this.#credit >= 1 - 1e-9) {
      from = lower.reduce((a, b) => (earlier(b.items[0]!, a.items[0]!) ? b : a));
      this.#credit -= 1;
    }
    return from.items.shift();
  }
}
