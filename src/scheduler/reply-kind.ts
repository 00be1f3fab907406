/**
 * What kind of trouble a reply tells of, for an operator reading deferrals and bounces: a bad
 * address, a full mailbox, a remote's throttle, a block for reputation, … (as KumoMTA's and
 * Halon's bounce classifications do). From the reply's enhanced status code (RFC 3463, with the
 * codes registered since: 4.7.28 rate limits, 5.7.23–27 SPF/DKIM/DMARC/PTR) and the words big
 * providers use where the code says little ("550 5.7.1" is a block for spam at one, a policy at
 * another). Our own made-up replies (connection refused, a paused destination, an operator's
 * bounce) have kinds of their own.
 */

export const REPLY_KINDS = [
  'invalid-recipient', 'invalid-domain', 'mailbox-full', 'mailbox-disabled', 'message-too-big', 'rate-limited',
  'greylisted', 'spam-block', 'authentication', 'content', 'policy', 'tls', 'dns', 'connection', 'expired',
  'operator', 'other',
] as const;

export type ReplyKind = (typeof REPLY_KINDS)[number];

/** Words that tell the kind where the code alone does not; tried in this order, first match wins. */
const BY_TEXT: [RegExp, ReplyKind][] = [
  [/\b(cancell?ed by the operator|paused by the operator)\b/i, 'operator'],
  [/\bgr[ae]ylist/i, 'greylisted'],
  [/\b(rate.?limit|too many (messages|connections|recipients|concurrent)|throttl|TS0[1-4]|TSS0[1-9]|server busy|unusual rate|exceeded .*(rate|quota for sending)|try again later\b.*\b(volume|rate))/i, 'rate-limited'],
  [/\b(over ?quota|quota exceeded|mailbox (is )?full|insufficient (storage|space)|out of storage)\b/i, 'mailbox-full'],
  [/\b(user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|doesn'?t exist|recipient (address )?rejected|address rejected|invalid (recipient|mailbox)|mailbox (not found|unavailable)|not our customer|unrouteable address)\b/i, 'invalid-recipient'],
  [/\b(account (is )?(disabled|inactive|suspended)|mailbox (is )?(disabled|inactive)|user (is )?(disabled|inactive))\b/i, 'mailbox-disabled'],
  [/\b(spamhaus|spamcop|barracuda|blacklist|blocklist|block ?list|listed (on|at|in)|\bRBL\b|DNSBL|reputation|poor sender|junk|spam|unsolicited|blocked)\b/i, 'spam-block'],
  [/\b(DMARC|DKIM|SPF|unauthenticated|not authenticated|PTR|reverse (DNS|lookup))\b/i, 'authentication'],
  [/\b(virus|malware|phish|attachment|content (rejected|filter))\b/i, 'content'],
  [/\b(TLS|STARTTLS|certificate|SSL)\b/i, 'tls'],
];

/** By enhanced status code (class ignored: X.1.1 is a bad mailbox whether 4 or 5). */
const BY_CODE: [RegExp, ReplyKind][] = [
  [/^\d\.1\.(1|3|6|0)$/, 'invalid-recipient'],
  [/^\d\.1\.(2|10)$|^5\.4\.4$/, 'invalid-domain'],
  [/^\d\.2\.2$/, 'mailbox-full'],
  [/^\d\.2\.1$/, 'mailbox-disabled'],
  [/^\d\.(2\.3|3\.4)$/, 'message-too-big'],
  [/^\d\.7\.(4|5|10)$/, 'tls'],
  [/^\d\.4\.(3|4)$/, 'dns'],
  [/^\d\.4\.(1|2)$/, 'connection'],
  [/^\d\.6\.\d+$/, 'content'],
  [/^\d\.7\.\d+$/, 'policy'],
];

/** Codes that say it all, whatever the words: a lifetime run out, SPF/DKIM/DMARC/PTR, a rate limit. */
const DEFINITE: [RegExp, ReplyKind][] = [
  [/^\d\.4\.7$/, 'expired'],
  [/^\d\.7\.(2[3-7])$/, 'authentication'],
  [/^\d\.7\.28$/, 'rate-limited'],
];

const SUSPENDED = 'delivery temporarily suspended: ';

export function replyKind(reply: { code: number; enhanced?: string; message: string }): ReplyKind {
  // A dead destination's mail carries the reply that suspended it: that is its kind.
  if (reply.message.startsWith(SUSPENDED)) return replyKind({ ...reply, message: reply.message.slice(SUSPENDED.length) });
  const enhanced = reply.enhanced ?? '';
  for (const [re, kind] of DEFINITE) if (re.test(enhanced)) return kind;
  for (const [re, kind] of BY_TEXT) if (re.test(reply.message)) return kind;
  for (const [re, kind] of BY_CODE) if (re.test(enhanced)) return kind;
  if (reply.code === 552) return 'message-too-big';
  if (reply.code === 421) return 'connection';
  return 'other';
}
