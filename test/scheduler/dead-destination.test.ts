/**
 * Dead destinations (Postfix's): when a delivery reaches no host of a destination, its mail is
 * deferred without connecting until `delivery.retry.min` has passed; then one connection probes
 * it; once a host answers, delivery goes on as before. Real parts: the SpoolQueue, the Deliverer
 * and a receiving smtp-server on loopback whose greeting is scripted.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { startScheduler, waitFor, type SchedulerHarness } from './harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Suspension and retry both `retry.min`: long enough to see, short enough for a test. */
const RETRY_MS = 2_500;

async function setUp(retryMs = RETRY_MS): Promise<{ rx: Receiver; h: SchedulerHarness }> {
  const rx = await startReceiver({ script: { greeting: '421 4.3.2 Service not available' } });
  cleanups.push(() => rx.close());
  const h = await startScheduler({
    delivery: {
      routes: { 'dead.test': rx.address },
      retry: { min: `${retryMs}ms`, max: `${retryMs}ms`, lifetime: '1h' },
      limits: { domains: { 'dead.test': { connections: 5, messagesPerConnection: 2 } } },
    },
  });
  cleanups.push(() => h.close());
  return { rx, h };
}

const deferredAfter = (h: SchedulerHarness, n: number, attempts = 1) => async () => {
  const mails = await h.mails();
  return mails.length >= n && mails.every((m) => m.state === 'queued' && m.attempts >= attempts) ? mails : undefined;
};

describe('a destination that cannot be reached', () => {
  it('is not connected to again before retry.min; its mail meanwhile is deferred as suspended; a probe, then delivery once it answers', async () => {
    const { rx, h } = await setUp();
    const first = await h.enqueue({ to: ['a@dead.test'] });
    await waitFor('the first mail deferred', deferredAfter(h, 1));
    expect(rx.acceptedConnections).toBe(1);
    const firstMail = (await h.queue.get(first.id))!;
    expect(firstMail.recipients[0]!.lastReply?.message).toMatch(/421|Service not available/);
    const firstRetry = firstMail.notBefore;

    // While suspended: 10 more mails (5 connections × 2 would be allowed) and none connects.
    for (let i = 0; i < 10; i++) await h.enqueue({ to: [`u${i}@dead.test`] });
    const deferred = await waitFor('all 11 deferred', deferredAfter(h, 11));
    expect(rx.acceptedConnections).toBe(1);
    for (const m of deferred.filter((x) => x.id !== first.id)) {
      expect(m.recipients[0]!.lastReply?.code).toBe(421);
      expect(m.recipients[0]!.lastReply?.message).toMatch(/^delivery temporarily suspended: /);
      expect(m.history.at(-1)?.reply?.message).toMatch(/^delivery temporarily suspended: /);
      // Not due before the suspension ends: no round of deferrals while it lasts.
      expect(m.notBefore).toBeGreaterThanOrEqual(firstRetry - 50);
    }
    const suspended = await h.metrics.registry.getSingleMetricAsString('spoolhouse_deferred_total');
    expect(suspended).toMatch(/reason="suspended"\} 10/);
    expect(await h.metrics.registry.getSingleMetricAsString('spoolhouse_destinations_suspended')).toMatch(/^spoolhouse_destinations_suspended 1$/m);
    expect(h.scheduler.suspendedDestinations()).toEqual([
      expect.objectContaining({ domains: ['dead.test'], reply: expect.objectContaining({ code: 421 }) }),
    ]);

    // The suspension ends as the mail comes due: one connection probes (not five), and fails.
    await waitFor('the probe', () => rx.acceptedConnections >= 2, RETRY_MS * 4);
    await waitFor('all deferred twice', deferredAfter(h, 11, 2), RETRY_MS * 4);
    expect(rx.acceptedConnections).toBe(2);
    expect(rx.maxConcurrency).toBe(1);

    // The destination answers again: the next probe reaches it and everything is delivered,
    // over more than one connection once it is known to be reachable.
    rx.script = {};
    await waitFor('all delivered', async () => (await h.mails()).every((m) => m.state === 'delivered') || undefined, RETRY_MS * 6);
    expect(rx.completed().length).toBe(11);
    expect(h.scheduler.suspendedDestinations()).toEqual([]);
    expect(await h.metrics.registry.getSingleMetricAsString('spoolhouse_destinations_suspended')).toMatch(/^spoolhouse_destinations_suspended 0$/m);
  });

  it('a destination that was reached is not suspended by a failed transaction (only by reaching no host)', async () => {
    const { rx, h } = await setUp();
    rx.script = { mailFrom: '451 4.3.0 Try later' };
    await h.enqueue({ to: ['a@dead.test'] });
    await waitFor('deferred', deferredAfter(h, 1));
    for (let i = 0; i < 4; i++) await h.enqueue({ to: [`u${i}@dead.test`] });
    await waitFor('all 5 deferred', deferredAfter(h, 5));
    // Each batch connected (greeting and EHLO fine): none was deferred as suspended.
    expect(rx.acceptedConnections).toBeGreaterThanOrEqual(2);
    for (const m of await h.mails()) expect(m.recipients[0]!.lastReply?.message).not.toMatch(/suspended/);
  });

  it('an operator\'s "retry now" lifts the suspension for one probe at once', async () => {
    const { rx, h } = await setUp(60_000);
    await h.enqueue({ to: ['a@dead.test'] });
    await waitFor('the first mail deferred', deferredAfter(h, 1));
    const second = await h.enqueue({ to: ['b@dead.test'] });
    await waitFor('the second deferred as suspended', async () => {
      const m = await h.queue.get(second.id);
      return m?.state === 'queued' && m.attempts === 1 && /suspended/.test(m.recipients[0]!.lastReply?.message ?? '');
    });
    expect(rx.acceptedConnections).toBe(1);
    // The remote is repaired; the operator retries one mail: it goes now, not in a minute.
    rx.script = {};
    const asked = Date.now();
    await h.queue.retryNow(second.id);
    await waitFor('the retried mail delivered', async () => (await h.queue.get(second.id))?.state === 'delivered', 10_000);
    expect(Date.now() - asked).toBeLessThan(10_000);
    expect(rx.completed().map((t) => t.rcptTo.map((r) => r.address)).flat()).toEqual(['b@dead.test']);
    // The other mail keeps its own retry time.
    expect((await h.mails()).find((m) => m.id !== second.id)?.state).toBe('queued');
  });
});
