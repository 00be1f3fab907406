/**
 * Message rate limits at MAIL FROM, per client address and per authenticated user
 * (smtp.rateLimits; Postfix's anvil does the first as smtpd_client_message_rate_limit, the second
 * takes a policy server there). A stolen password or a compromised host then sends a bounded
 * number of mails before the operator notices, instead of as many as the queue takes.
 *
 * A token bucket per key: a limit of "100/m" lets a key start 100 transactions at once and then
 * one every 0.6 s (the bucket refills continuously), so a client that stays under the rate is
 * never refused and one above it is slowed to the rate. Buckets live in memory, per node (as
 * Postfix's anvil is per host); a full bucket is the same as none, so memory is bounded by the
 * keys active within one refill time, and by `maxKeys` at worst (the least recently used go).
 */
export interface Rate {
  count: number;
  perMs: number;
}

/** "100/m" → 100 per 60,000 ms; null stays null (no limit). The schema has checked the form. */
export function parseLimit(text: string | null): Rate | null {
  if (!text) return null;
  const [n, unit] = text.split('/');
  return { count: Number(n), perMs: { s: 1_000, m: 60_000, h: 3_600_000 }[unit as 's' | 'm' | 'h'] };
}

export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(private readonly maxKeys = 100_000) {}

  /** Takes one transaction for `key` under `rate` at `now`; false when the key is over its rate. */
  take(key: string, rate: Rate, now: number): boolean {
    const capacity = Math.max(1, rate.count);
    const bucket = this.#buckets.get(key);
    let tokens = capacity;
    if (bucket) {
      tokens = Math.min(capacity, bucket.tokens + ((now - bucket.at) * rate.count) / rate.perMs);
      this.#buckets.delete(key); // re-inserted below: the Map's order is then least recently used first
    }
    if (tokens < 1) {
      this.#buckets.set(key, { tokens, at: now });
      return false;
    }
    this.#buckets.set(key, { tokens: tokens - 1, at: now });
    if (this.#buckets.size > this.maxKeys) this.#evict(now, rate);
    return true;
  }

  /** Whether `key` has a transaction left under `rate` at `now`; takes nothing. */
  has(key: string, rate: Rate, now: number): boolean {
    const bucket = this.#buckets.get(key);
    if (!bucket) return true;
    return Math.min(Math.max(1, rate.count), bucket.tokens + ((now - bucket.at) * rate.count) / rate.perMs) >= 1;
  }

  get size(): number {
    return this.#buckets.size;
  }

  /**
   * Drops the buckets that have refilled (they are as good as absent), then the least recently
   * used, down to 90 % of `maxKeys` so that a flood of new keys costs one sweep per tenth.
   */
  #evict(now: number, rate: Rate): void {
    for (const [key, b] of this.#buckets) {
      if (b.tokens + ((now - b.at) * rate.count) / rate.perMs >= rate.count) this.#buckets.delete(key);
    }
    const target = Math.floor(this.maxKeys * 0.9);
    for (const key of this.#buckets.keys()) {
      if (this.#buckets.size <= target) break;
      this.#buckets.delete(key);
    }
  }
}
