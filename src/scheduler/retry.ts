/**
 * Retry timing: exponential backoff with jitter, and the queue lifetime.
 *
 * - The n-th retry (n = attempts already made, 0 for the first failure) waits
 *   min * 2^n, capped at max, then spread by ±20% jitter so mails deferred together do not
 *   come back together, and clamped to [min, max] (Postfix: minimal_backoff_time 300s,
 *   maximal_backoff_time 4000s).
 * - A mail expires at receivedAt + lifetime (Postfix: maximal_queue_lifetime, 5d). A retry that
 *   would fall after that moment is moved to it, so the last try (and the expiry DSN) happens
 *   on time rather than up to `max` late.
 * `random` is injectable for tests.
 */

export interface RetryPolicy {
  minMs: number;
  maxMs: number;
  lifetimeMs: number;
}

const JITTER = 0.2;

/** Delay before the next try after `attempts` earlier attempts (this one not counted). */
export function backoffDelay(attempts: number, policy: Pick<RetryPolicy, 'minMs' | 'maxMs'>, random: () => number = Math.random): number {
  const min = Math.max(0, policy.minMs);
  const max = Math.max(min, policy.maxMs);
  const exponent = Math.min(Math.max(0, attempts), 52);
  const base = Math.min(max, min * 2 ** exponent);
  const jittered = base * (1 - JITTER + 2 * JITTER * random());
  return Math.round(Math.min(max, Math.max(min, jittered)));
}

export function expiresAt(receivedAt: number, policy: Pick<RetryPolicy, 'lifetimeMs'>): number {
  return receivedAt + policy.lifetimeMs;
}

/** True when a recipient still deferred at `now` has run out of queue lifetime. */
export function isExpired(receivedAt: number, now: number, policy: Pick<RetryPolicy, 'lifetimeMs'>): boolean {
  return now >= expiresAt(receivedAt, policy);
}

/** When to try again: backoff from now, but never later than the expiry moment (if still ahead). */
export function nextRetryAt(
  mail: { attempts: number; receivedAt: number }, now: number, policy: RetryPolicy, random: () => number = Math.random,
): number {
  const at = now + backoffDelay(mail.attempts, policy, random);
  const expiry = expiresAt(mail.receivedAt, policy);
  return expiry > now ? Math.min(at, expiry) : at;
}
