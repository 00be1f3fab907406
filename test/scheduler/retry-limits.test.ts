import { describe, expect, it } from 'vitest';
import { ConfigStore } from '../../src/config/store.js';
import { backoffDelay, isExpired, nextRetryAt } from '../../src/scheduler/retry.js';
import { limitsFor, TokenBucket } from '../../src/scheduler/limits.js';
import { loadConfig } from '../../src/config/load.js';

const postfix = { minMs: 300_000, maxMs: 4_000_000, lifetimeMs: 5 * 86_400_000 };

describe('backoff', () => {
  it('doubles from min, stays within [min, max], and jitters', () => {
    expect(backoffDelay(0, postfix, () => 0.5)).toBe(300_000);
    expect(backoffDelay(1, postfix, () => 0.5)).toBe(600_000);
    expect(backoffDelay(3, postfix, () => 0.5)).toBe(2_400_000);
    expect(backoffDelay(4, postfix, () => 0.5)).toBe(4_000_000);
    expect(backoffDelay(40, postfix, () => 0.5)).toBe(4_000_000);
    for (let n = 0; n < 30; n++) {
      for (const r of [0, 0.25, 0.999]) {
        const d = backoffDelay(n, postfix, () => r);
        expect(d).toBeGreaterThanOrEqual(postfix.minMs);
        expect(d).toBeLessThanOrEqual(postfix.maxMs);
      }
    }
    expect(backoffDelay(2, postfix, () => 0)).toBeLessThan(backoffDelay(2, postfix, () => 0.99));
  });

  it('moves the last retry to the expiry moment and expires at receivedAt + lifetime', () => {
    const policy = { minMs: 200, maxMs: 1000, lifetimeMs: 2000 };
    expect(nextRetryAt({ attempts: 5, receivedAt: 0 }, 1500, policy, () => 0.5)).toBe(2000);
    expect(nextRetryAt({ attempts: 0, receivedAt: 0 }, 100, policy, () => 0.5)).toBe(300);
    expect(isExpired(0, 1999, policy)).toBe(false);
    expect(isExpired(0, 2000, policy)).toBe(true);
  });
});

describe('destination limits', () => {
  const { config } = loadConfig();
  const withLimits = {
    ...config,
    delivery: { ...config.delivery, limits: { default: { connections: 5, messagesPerConnection: 10, rate: null }, domains: { 'slow.test': { connections: 1, rate: '2/s' } } } },
  };

  it('applies per-domain overrides over the default', () => {
    // initialConnections: the fallback 5, within connections.
    expect(limitsFor(['fast.test'], withLimits)).toEqual({ connections: 5, initialConnections: 5, messagesPerConnection: 10, ratePerSecond: undefined });
    expect(limitsFor(['other.test', 'SLOW.test'], withLimits)).toEqual({ connections: 1, initialConnections: 1, messagesPerConnection: 10, ratePerSecond: 2 });
    expect(limitsFor(['x.test'], { delivery: { ...config.delivery, limits: { default: { rate: '600/m' }, domains: {} } } }))
      .toEqual({ connections: 20, initialConnections: 5, messagesPerConnection: 100, ratePerSecond: 10 });
    // A domain's own initialConnections; never above its connections.
    const own = { delivery: { ...config.delivery, limits: { default: { connections: 4, initialConnections: 9 }, domains: { 'own.test': { initialConnections: 2 } } } } };
    expect(limitsFor(['own.test'], own)).toMatchObject({ connections: 4, initialConnections: 2 });
    expect(limitsFor(['x.test'], own)).toMatchObject({ connections: 4, initialConnections: 4 });
  });

  it('is read from the config of the moment (ConfigStore default)', () => {
    const store = new ConfigStore(undefined);
    expect(limitsFor(['example.org'], store.current).connections).toBe(20);
  });
});

describe('token bucket', () => {
  it('bursts one second worth, then refills at the rate', () => {
    const b = new TokenBucket(5, 0);
    expect(b.take(10, 0)).toBe(5);
    expect(b.take(1, 0)).toBe(0);
    expect(b.msUntilToken(0)).toBe(200);
    expect(b.take(10, 200)).toBe(1);
    expect(b.take(10, 1200)).toBe(5);
    expect(b.take(10, 100_000)).toBe(5); // capped at capacity
  });

  it('never exceeds burst + rate × elapsed over any run of takes', () => {
    const b = new TokenBucket(3, 0);
    let taken = 0;
    for (let t = 0; t <= 10_000; t += 37) taken += b.take(2, t);
    expect(taken).toBeLessThanOrEqual(3 + 3 * 10);
    expect(taken).toBeGreaterThanOrEqual(3 * 10 - 1);
  });

  it('slow rates keep a capacity of one and no rate means no limit', () => {
    const b = new TokenBucket(1 / 60, 0);
    expect(b.take(5, 0)).toBe(1);
    expect(b.msUntilToken(0)).toBe(60_000);
    const free = new TokenBucket(undefined, 0);
    expect(free.take(1000, 0)).toBe(1000);
    free.setRate(2, 10);
    expect(free.take(10, 10)).toBe(2);
  });
});
