/**
 * Per-destination traffic shaping: which limits apply to a destination, and a token bucket
 * for its message rate.
 *
 * - Limits are `delivery.limits.default` overlaid by `delivery.limits.domains[domain]`. Several
 *   domains can share one destination (same MX hosts, same smarthost); the destination then
 *   takes the override of the first of its domains that has one (in the order mail for them
 *   arrived), so one pool never gets two sets of limits.
 * - The rate ("10/s", "600/m", "3600/h") is a token bucket: one token per message, refilled
 *   continuously at the rate, holding at most one second's worth (at least one token), so a
 *   destination gets short bursts of up to `rate × 1s` and never more than the rate on average.
 * - Read from the Config of the moment on every use, so a reload applies to the next batch.
 */
import { parseRate, type Config } from '../config/schema.js';

export interface DestinationLimits {
  connections: number;
  /** Where the concurrency of a destination new to this node starts (at most `connections`). */
  initialConnections: number;
  messagesPerConnection: number;
  /** Messages per second, or undefined for no limit. */
  ratePerSecond: number | undefined;
}

/** Used when config leaves a field out. */
const FALLBACK = { connections: 20, initialConnections: 5, messagesPerConnection: 100 };

export function limitsFor(domains: Iterable<string>, config: Pick<Config, 'delivery'>): DestinationLimits {
  const { default: base, domains: overrides } = config.delivery.limits;
  let override: (typeof overrides)[string] | undefined;
  for (const d of domains) {
    override = overrides[d.toLowerCase()];
    if (override) break;
  }
  const merged = { ...base, ...(override ?? {}) };
  const connections = merged.connections ?? FALLBACK.connections;
  return {
    connections,
    initialConnections: Math.min(connections, merged.initialConnections ?? FALLBACK.initialConnections),
    messagesPerConnection: merged.messagesPerConnection ?? FALLBACK.messagesPerConnection,
    ratePerSecond: parseRate(merged.rate ?? null),
  };
}

export class TokenBucket {
  #tokens: number;
  #rate: number | undefined;
  #updatedAt: number;

  constructor(ratePerSecond: number | undefined, now: number) {
    this.#rate = ratePerSecond;
    this.#tokens = TokenBucket.capacityFor(ratePerSecond);
    this.#updatedAt = now;
  }

  static capacityFor(rate: number | undefined): number {
    return rate === undefined ? Infinity : Math.max(1, rate);
  }

  /** Applies a new rate (hot reload), keeping the tokens earned so far within the new capacity. */
  setRate(ratePerSecond: number | undefined, now: number): void {
    if (ratePerSecond === this.#rate) return;
    this.#refill(now);
    this.#rate = ratePerSecond;
    this.#tokens = Math.min(this.#tokens === Infinity ? TokenBucket.capacityFor(ratePerSecond) : this.#tokens, TokenBucket.capacityFor(ratePerSecond));
  }

  #refill(now: number): void {
    if (this.#rate === undefined) {
      this.#tokens = Infinity;
    } else {
      const earned = (Math.max(0, now - this.#updatedAt) / 1000) * this.#rate;
      this.#tokens = Math.min(TokenBucket.capacityFor(this.#rate), this.#tokens + earned);
    }
    this.#updatedAt = now;
  }

  /** Whole tokens available now. */
  available(now: number): number {
    this.#refill(now);
    return Math.floor(this.#tokens + 1e-9);
  }

  /** Takes up to `wanted` tokens; returns how many were taken. */
  take(wanted: number, now: number): number {
    const n = Math.min(wanted, this.available(now));
    this.#tokens -= n;
    return n;
  }

  /** Milliseconds until one whole token is available (0 when one is). */
  msUntilToken(now: number): number {
    this.#refill(now);
    if (this.#rate === undefined || this.#tokens >= 1 - 1e-9) return 0;
    return Math.ceil(((1 - this.#tokens) / this.#rate) * 1000);
  }
}
