/**
 * smtp.rateLimits: the token bucket, and the real ingress over loopback refusing MAIL FROM with
 * 450 4.7.1 once a client (outside relay.networks) or an authenticated user is over its rate.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { clientKey } from '../../src/ingress/policy.js';
import { RateLimiter, parseLimit } from '../../src/ingress/rate-limit.js';
import type { SmtpClient } from '../helpers/smtp-client.js';
import { counter, greetedClient, startIngress, writeUsersFile, type Harness } from './harness.js';

describe('the rate limiter', () => {
  it('lets a key start its count at once, then one per unit/count', () => {
    const rate = parseLimit('3/s')!;
    expect(rate).toEqual({ count: 3, perMs: 1000 });
    const r = new RateLimiter();
    expect([r.take('a', rate, 0), r.take('a', rate, 0), r.take('a', rate, 0), r.take('a', rate, 0)]).toEqual([true, true, true, false]);
    expect(r.take('b', rate, 0)).toBe(true);
    expect(r.take('a', rate, 300)).toBe(false);
    expect(r.take('a', rate, 340)).toBe(true);
    expect(r.take('a', rate, 350)).toBe(false);
    // A long pause refills the bucket up to the count, not beyond.
    expect([1, 2, 3, 4].map(() => r.take('a', rate, 60_000))).toEqual([true, true, true, false]);
    // has() looks without taking.
    expect([r.has('a', rate, 60_000), r.has('a', rate, 60_340), r.has('a', rate, 60_340), r.has('never', rate, 0)]).toEqual([false, true, true, true]);
    expect(r.take('a', rate, 60_340)).toBe(true);
  });

  it('keeps at most maxKeys buckets', () => {
    const rate = parseLimit('5/h')!;
    const r = new RateLimiter(100);
    for (let i = 0; i < 1000; i++) r.take(`k${i}`, rate, i);
    expect(r.size).toBeLessThanOrEqual(100);
    // The most recent keys kept their buckets.
    for (let i = 0; i < 4; i++) r.take('k999', rate, 1000);
    expect(r.take('k999', rate, 1000)).toBe(false);
  });
});

describe('clientKey (smtp.clientPrefixLength)', () => {
  it('is the address at full length, else the network of the first bits', () => {
    const full = { ipv4: 32, ipv6: 128 };
    expect(clientKey('192.0.2.9', full)).toBe('192.0.2.9');
    expect(clientKey('::ffff:192.0.2.9', full)).toBe('192.0.2.9');
    expect(clientKey('2001:DB8::1', full)).toBe('2001:db8::1');
    const nets = { ipv4: 24, ipv6: 64 };
    expect(clientKey('::ffff:192.0.2.9', nets)).toBe('192.0.2.0/24');
    expect(clientKey('2001:db8:0:7:a:b:c:d', nets)).toBe('2001:db8:0:7::/64');
    expect(clientKey('2001:DB8:0:7::1', { ipv4: 32, ipv6: 48 })).toBe('2001:db8::/48');
    expect(clientKey('not-an-address', nets)).toBe('not-an-address');
  });
});

describe('ingress with smtp.rateLimits', () => {
  let h: Harness;
  let dir: string;
  const clients: SmtpClient[] = [];
  const session = (user?: string) => greetedClient(h.port, { track: clients, ...(user ? { auth: { user, pass: `pw-${user}` } } : {}) });
  async function mailFrom(c: SmtpClient): Promise<{ code: number; enhanced?: string; text: string }> {
    const r = await c.command('MAIL FROM:<someone@example.org>');
    if (r.code === 250) expect((await c.command('RSET')).code).toBe(250);
    return r;
  }
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-rate-'));
    const users = writeUsersFile(dir, { alice: 'pw-alice', bob: 'pw-bob' });
    h = await startIngress({
      smtp: { rateLimits: { perClient: '3/h', perUser: '2/h' } },
      relay: { networks: ['10.0.0.0/8'], domains: ['local.example'] },
      auth: { users, allowInsecure: true },
    });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a client over its rate with 450 4.7.1, across its sessions, and counts it', async () => {
    const before = await counter(h.metrics, 'rejectedTotal', { reason: 'rate' });
    const a = await session();
    expect((await mailFrom(a)).code).toBe(250);
    expect((await mailFrom(a)).code).toBe(250);
    const b = await session();
    expect((await mailFrom(b)).code).toBe(250);
    const over = await mailFrom(b);
    expect([over.code, over.enhanced]).toEqual([450, '4.7.1']);
    expect(over.text).toContain('too much mail from [127.0.0.1]');
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'rate' })).toBe(before + 1);
  });

  it('exempts relay.networks from the per-client limit, never an authenticated user from its own', async () => {
    h.update({ relay: { networks: ['127.0.0.0/8'] } });
    try {
      const trusted = await session();
      for (let i = 0; i < 5; i++) expect((await mailFrom(trusted)).code).toBe(250);
      const alice = await session('alice');
      expect((await mailFrom(alice)).code).toBe(250);
      expect((await mailFrom(alice)).code).toBe(250);
      const over = await mailFrom(alice);
      expect([over.code, over.enhanced]).toEqual([450, '4.7.1']);
      expect(over.text).toContain('too much mail from user alice');
      const bob = await session('bob');
      expect((await mailFrom(bob)).code).toBe(250);
    } finally {
      h.update({ relay: { networks: ['10.0.0.0/8'] } });
    }
  });
});
