/**
 * Answers kept `ttlMs` per key, at most `max` keys: when full, the expired entries go first and,
 * if that is not enough, all of them (a flood of new keys costs one sweep, not unbounded memory).
 * For the ingress's DNS answers (DNSBL, sender domains), which are kept as promises so that
 * concurrent askers share one lookup.
 */
export class TtlCache<T> {
  readonly #entries = new Map<string, { at: number; value: T }>();

  constructor(private readonly ttlMs: number, private readonly max: number, private readonly now: () => number = Date.now) {}

  get(key: string): T | undefined {
    const e = this.#entries.get(key);
    return e && this.now() - e.at < this.ttlMs ? e.value : undefined;
  }

  set(key: string, value: T): void {
    const now = this.now();
    if (this.#entries.size >= this.max) {
      for (const [k, e] of this.#entries) if (now - e.at >= this.ttlMs) this.#entries.delete(k);
      if (this.#entries.size >= this.max) this.#entries.clear();
    }
    this.#entries.set(key, { at: now, value });
  }
}
