/**
 * What remote servers answered, summed up (pflogsumm's "message deferral detail" and "message
 * bounce detail"): recipients deferred, failed or expired, by outcome, destination domain and
 * reply, in buckets of a minute for the last hour, in this node's memory. Replies that differ only
 * in addresses, numbers and ids ("421 4.7.0 [TSS04] Messages from 192.0.2.7 temporarily
 * deferred", with another address or id each time) are counted as one, shown with the last one
 * seen as it was.
 */
import type { ReplyDigestPage, ReplyDigestRow } from '../api-types.js';
import { REPLY_KINDS, replyKind, type ReplyKind } from './reply-kind.js';

export type { ReplyDigestPage, ReplyDigestRow };
export type DigestOutcome = ReplyDigestRow['outcome'];

interface Entry {
  outcome: DigestOutcome;
  kind: ReplyKind;
  domain: string;
  code: number;
  enhanced?: string;
  message: string;
  count: number;
  lastAt: number;
  lastMailId: string;
  example: string;
}

interface Bucket {
  start: number;
  entries: Map<string, Entry>;
  /** Recorded when the bucket already held maxKeys entries: counted, not itemised. */
  overflow: number;
}

/**
 * A reply's text with what varies from mail to mail masked: IPv4 addresses (<ip>), mail addresses
 * (<address>), and any word with three or more digits (#: ids, stamps, IPv6 addresses, host names
 * of a farm). Kept: a provider's own code in the dotted form Yahoo gives after a dash
 * ("… user complaints - 4.16.55.1; see …"), which names the kind of deferral: a dotted quad right
 * after " - " that starts with the class digit of a reply (4 or 5). Cut at 200 characters.
 */
export function replyShape(message: string): string {
  const codes: string[] = [];
  return message
    .replace(/\s+/g, ' ')
    .replace(/\u0000/g, '')
    .trim()
    .replace(/(?<= - )[45](?:\.\d{1,3}){3}\b/g, (code) => `\u0000${codes.push(code) - 1}\u0000`)
    .replace(/\[?\b(?:\d{1,3}\.){3}\d{1,3}\b\]?/g, '<ip>')
    .replace(/<?[^\s<>@"]+@[^\s<>@"]+>?/g, '<address>')
    .replace(/[A-Za-z0-9._:-]+/g, (word) => ((word.match(/\d/g)?.length ?? 0) >= 3 ? '#' : word))
    .replace(/\u0000(\d+)\u0000/g, (_, i: string) => codes[Number(i)]!)
    .slice(0, 200);
}

export class ReplyDigest {
  readonly #bucketMs: number;
  readonly #keepMs: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  readonly #buckets: Bucket[] = [];

  constructor(o: { bucketMs?: number; keepMs?: number; maxKeysPerBucket?: number; now?: () => number } = {}) {
    this.#bucketMs = o.bucketMs ?? 60_000;
    this.#keepMs = o.keepMs ?? 3_600_000;
    this.#maxKeys = o.maxKeysPerBucket ?? 2_000;
    this.#now = o.now ?? Date.now;
  }

  get keepMs(): number {
    return this.#keepMs;
  }

  /** Counts one recipient's reply; returns its kind. */
  record(outcome: DigestOutcome, domain: string, reply: { code: number; enhanced?: string; message: string }, mailId: string): ReplyKind {
    const at = this.#now();
    const bucket = this.#bucketAt(at);
    const message = replyShape(reply.message);
    const key = `${outcome}\u0000${domain}\u0000${reply.code}\u0000${reply.enhanced ?? ''}\u0000${message}`;
    const entry = bucket.entries.get(key);
    if (entry) {
      entry.count++;
      entry.lastAt = at;
      entry.lastMailId = mailId;
      entry.example = reply.message;
      return entry.kind;
    }
    const kind = replyKind(reply);
    if (bucket.entries.size >= this.#maxKeys) {
      bucket.overflow++;
      return kind;
    }
    bucket.entries.set(key, {
      outcome, kind, domain, code: reply.code, ...(reply.enhanced ? { enhanced: reply.enhanced } : {}), message, count: 1, lastAt: at, lastMailId: mailId, example: reply.message,
    });
    return kind;
  }

  /** The rows of the last `windowMs` (at most an hour), most recipients first; and the recipients by kind of reply. */
  top(q: { windowMs?: number; outcome?: DigestOutcome; domain?: string; kind?: ReplyKind; limit?: number } = {}): ReplyDigestPage {
    const now = this.#now();
    const windowMs = Math.min(q.windowMs ?? this.#keepMs, this.#keepMs);
    this.#expire(now);
    const from = now - windowMs;
    const domain = q.domain?.toLowerCase();
    const merged = new Map<string, Entry>();
    let overflow = 0;
    for (const b of this.#buckets) {
      // A bucket counts when any of it lies in the window.
      if (b.start + this.#bucketMs <= from) continue;
      overflow += b.overflow;
      for (const [key, e] of b.entries) {
        if (q.outcome && e.outcome !== q.outcome) continue;
        if (domain && e.domain !== domain) continue;
        if (q.kind && e.kind !== q.kind) continue;
        const m = merged.get(key);
        if (!m) merged.set(key, { ...e });
        else {
          m.count += e.count;
          if (e.lastAt >= m.lastAt) Object.assign(m, { lastAt: e.lastAt, lastMailId: e.lastMailId, example: e.example });
        }
      }
    }
    const rows = [...merged.values()].sort((a, b) => b.count - a.count || b.lastAt - a.lastAt);
    const total = rows.reduce((n, r) => n + r.count, 0);
    const byKind: Partial<Record<ReplyKind, number>> = {};
    for (const r of rows) byKind[r.kind] = (byKind[r.kind] ?? 0) + r.count;
    return {
      rows: rows.slice(0, q.limit ?? 50).map((e): ReplyDigestRow => ({
        outcome: e.outcome, kind: e.kind, domain: e.domain, reply: { code: e.code, ...(e.enhanced ? { enhanced: e.enhanced } : {}), message: e.message },
        count: e.count, lastAt: e.lastAt, lastMailId: e.lastMailId, example: e.example,
      })),
      total,
      // In the order of REPLY_KINDS, for a stable display.
      byKind: Object.fromEntries(REPLY_KINDS.filter((k) => byKind[k]).map((k) => [k, byKind[k]!])),
      ...(overflow ? { notItemised: overflow } : {}),
      windowSeconds: Math.round(windowMs / 1000),
    };
  }

  #bucketAt(at: number): Bucket {
    const start = at - (at % this.#bucketMs);
    const last = this.#buckets[this.#buckets.length - 1];
    if (last && last.start === start) return last;
    this.#expire(at);
    const bucket: Bucket = { start, entries: new Map(), overflow: 0 };
    this.#buckets.push(bucket);
    return bucket;
  }

  #expire(now: number): void {
    while (this.#buckets.length && this.#buckets[0]!.start + this.#bucketMs <= now - this.#keepMs) this.#buckets.shift();
  }
}
