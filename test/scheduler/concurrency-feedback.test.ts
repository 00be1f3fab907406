/**
 * Postfix's destination concurrency feedback: a destination starts at its limits'
 * `initialConnections` and gains a connection for about every n mails carried through at n
 * connections, up to `connections`; a remote that refuses connections beyond its own limit (as
 * providers do, with a 421 greeting) brings it down, and is not taken for a dead destination.
 * Real parts: the SpoolQueue, the Deliverer and receiving smtp-servers on loopback.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startReceiver, type ReceiverScript } from '../helpers/receiver.js';
import { startScheduler, waitFor } from './harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setUp(domain: string, limits: Record<string, number>, script: ReceiverScript) {
  const rx = await startReceiver({ script });
  cleanups.push(() => rx.close());
  const logLines: string[] = [];
  const h = await startScheduler({
    delivery: {
      routes: { [domain]: rx.address },
      retry: { min: '300ms', max: '300ms', lifetime: '1h' },
      limits: { domains: { [domain]: limits } },
    },
  }, { logLines });
  cleanups.push(() => h.close());
  const lowered = () => logLines.map((l) => JSON.parse(l) as { msg: string; connections?: number }).filter((l) => l.msg === 'destination concurrency lowered after a failed connection');
  return { rx, h, lowered };
}

describe('destination concurrency feedback', () => {
  it('starts a destination at initialConnections and opens more as mail is delivered, up to its limit', async () => {
    // Each transaction takes 150 ms, and each connection carries one mail: the connections open
    // at once show the concurrency the scheduler allows.
    const { rx, h } = await setUp('ramp.test', { connections: 6, initialConnections: 2, messagesPerConnection: 1 }, { dataEndDelayMs: 150 });
    for (let i = 0; i < 40; i++) await h.enqueue({ to: [`u${i}@ramp.test`] });
    // While it runs, the node lists it as being delivered: connections open, mail waiting.
    const busy = await waitFor('being delivered', () => h.scheduler.deliveringNow().find((d) => d.open >= 2 && d.waiting > 0), 10_000);
    expect(busy).toMatchObject({ domains: ['ramp.test'], limit: 6 });
    expect(busy.open).toBeLessThanOrEqual(busy.allowed);
    await waitFor('all 40 delivered', async () => (await h.mails()).every((m) => m.state === 'delivered') || undefined, 30_000);
    expect(rx.completed()).toHaveLength(40);

    // Before the first transaction ended, no more than two connections were opened.
    const firstReply = Math.min(...rx.transactions.map((t) => t.repliedAt ?? Infinity));
    expect(rx.connections.filter((c) => c.openedAt < firstReply)).toHaveLength(2);
    // Then more, up to the limit and never beyond it: 2 + 3 + 4 + 5 deliveries take it to 6.
    expect(rx.maxConcurrency).toBe(6);
    expect(h.scheduler.destinationConnections('RAMP.test')).toEqual({
      destination: expect.any(String), domains: ['ramp.test'], open: 0, allowed: 6, limit: 6, waiting: 0,
    });
    expect(h.scheduler.destinationConnections('other.test')).toBeUndefined();
    expect(h.scheduler.deliveringNow()).toEqual([]);
  });

  it('a remote refusing connections beyond its own limit brings the concurrency down; the destination is busy, not dead', async () => {
    // A provider that takes two connections from a client and greets any more with 421.
    const tooMany = '421 4.7.0 [TSS04] Too many concurrent connections from your IP';
    const { rx, h, lowered } = await setUp('busy.test', { connections: 6, initialConnections: 6, messagesPerConnection: 1 }, {
      greeting: (open) => (open >= 2 ? tooMany : undefined),
      dataEndDelayMs: 100,
    });
    for (let i = 0; i < 30; i++) await h.enqueue({ to: [`u${i}@busy.test`] });
    const suspendedSeen: unknown[] = [];
    const watch = setInterval(() => suspendedSeen.push(...h.scheduler.suspendedDestinations()), 10);
    cleanups.push(async () => clearInterval(watch));
    const mails = await waitFor('all 30 delivered', async () => {
      const all = await h.mails();
      return all.every((m) => m.state === 'delivered') && all;
    }, 30_000);
    clearInterval(watch);
    expect(rx.completed()).toHaveLength(30);

    // Refused connections happened, and lowered what the destination may have open (the mails
    // delivered since may have raised it again).
    const refused = rx.connections.filter((c) => c.transactions.length === 0).length;
    expect(refused).toBeGreaterThan(0);
    expect(lowered().length).toBeGreaterThan(0);
    expect(lowered()[0]!.connections).toBe(5);
    expect(h.scheduler.destinationConnections('busy.test')!.limit).toBe(6);
    // Never suspended: no mail was deferred "temporarily suspended" without a connection.
    expect(suspendedSeen).toEqual([]);
    for (const m of mails) {
      for (const a of m.history) expect(a.reply?.message ?? '').not.toMatch(/^delivery temporarily suspended/);
    }
    // The refused ones were deferred with the remote's own reply and delivered on a later try.
    const retried = mails.filter((m) => m.attempts > 1);
    expect(retried.length).toBeGreaterThan(0);
    for (const m of retried) expect(m.history[0]!.reply?.message).toMatch(/TSS04/);
  });

  it('a connection refused slowly, after another carried its mail through, does not suspend the destination', async () => {
    // The first connection is taken at once (its mail takes 100 ms); the second waits 300 ms for
    // a 421; the third is taken again.
    let connection = 0;
    const { rx, h } = await setUp('slow.test', { connections: 2, initialConnections: 2, messagesPerConnection: 1 }, {
      greeting: () => (++connection === 2 ? { step: '421 4.7.0 Busy, try later', delayMs: 300 } : undefined),
      dataEndDelayMs: 100,
    });
    await h.enqueue({ to: ['a@slow.test'] });
    await h.enqueue({ to: ['b@slow.test'] });
    await waitFor('one delivered, one deferred', async () => {
      const all = await h.mails();
      return all.some((m) => m.state === 'delivered') && all.some((m) => m.attempts >= 1 && m.state === 'queued') && all;
    }, 10_000);
    expect(rx.completed()).toHaveLength(1);
    expect(h.scheduler.suspendedDestinations()).toEqual([]);
    await waitFor('both delivered', async () => (await h.mails()).every((m) => m.state === 'delivered') || undefined, 10_000);
    expect(rx.completed()).toHaveLength(2);
  });

  it('a destination that took mail here is not taken for dead by a burst of refusals smaller than a cohort (Postfix\'s failed pseudo-cohort)', async () => {
    const { rx, h } = await setUp('burst.test', { connections: 6, initialConnections: 6, messagesPerConnection: 1 }, {});
    await h.enqueue({ to: ['first@burst.test'] });
    await waitFor('the first delivered', async () => (await h.mails()).every((m) => m.state === 'delivered') || undefined, 10_000);
    // Then it refuses every connection for a while: three mails at once, three refusals (3 of 6).
    rx.script = { greeting: '421 4.7.0 Too many connections, slow down' };
    for (let i = 0; i < 3; i++) await h.enqueue({ to: [`u${i}@burst.test`] });
    await waitFor('the three deferred', async () => (await h.mails()).filter((m) => m.state === 'queued' && m.attempts >= 1).length === 3 || undefined, 10_000);
    expect(h.scheduler.suspendedDestinations()).toEqual([]);
    // It takes mail again: the three go at their retry, not after a suspension.
    rx.script = {};
    await waitFor('all delivered', async () => (await h.mails()).every((m) => m.state === 'delivered') || undefined, 10_000);
    const mails = await h.mails();
    for (const m of mails) for (const a of m.history) expect(a.reply?.message ?? '').not.toMatch(/^delivery temporarily suspended/);
    expect(rx.completed()).toHaveLength(4);
  });

  it('a destination that refuses every connection is still suspended as dead, after no more connections than it had open', async () => {
    // Refused after 50 ms: the first refusals come while the other connections are still open.
    const { rx, h } = await setUp('dead.test', { connections: 4, initialConnections: 4, messagesPerConnection: 1 }, {
      greeting: () => ({ step: '421 4.3.2 Closed', delayMs: 50 }),
    });
    for (let i = 0; i < 40; i++) await h.enqueue({ to: [`u${i}@dead.test`] });
    const suspended = await waitFor('suspended', () => h.scheduler.suspendedDestinations()[0], 10_000);
    const connectionsBefore = rx.acceptedConnections;
    expect(suspended).toMatchObject({ domains: ['dead.test'], reply: { code: 421 } });
    // No new connection while those in flight could still show it alive: at most the four.
    expect(connectionsBefore).toBeGreaterThanOrEqual(1);
    expect(connectionsBefore).toBeLessThanOrEqual(4);
    // The rest are deferred as suspended, without a connection.
    const mails = await waitFor('all 40 deferred', async () => {
      const all = await h.mails();
      return all.every((m) => m.attempts >= 1) && all;
    }, 10_000);
    expect(mails.filter((m) => /^delivery temporarily suspended/.test(m.history[0]!.reply?.message ?? '')).length).toBeGreaterThanOrEqual(36);
  });
});
