/**
 * delivery.paused (Postfix's defer_transports, by recipient domain): mail for a paused domain is
 * deferred at every attempt with 4.3.2 and nobody connects to its destination; other domains, in
 * the same mail too, are delivered; lifting the pause (a config change at run time) and a retry
 * now deliver it. Real parts: the SpoolQueue, the Deliverer and a receiving smtp-server.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startReceiver } from '../helpers/receiver.js';
import { startScheduler, waitFor } from './harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('a paused domain', () => {
  it('is deferred without a connection while its neighbours are delivered, and goes once the pause is lifted', async () => {
    const paused = await startReceiver();
    const open = await startReceiver();
    cleanups.push(() => paused.close(), () => open.close());
    const h = await startScheduler({
      delivery: {
        routes: { 'paused.test': paused.address, 'open.test': open.address },
        retry: { min: '1h', max: '1h', lifetime: '5d' },
        paused: ['paused.test'],
      },
    });
    cleanups.push(() => h.close());

    const both = await h.enqueue({ to: ['a@paused.test', 'b@open.test'] });
    const only = await h.enqueue({ to: ['c@paused.test'] });
    await open.until(() => open.completed().length >= 1);
    const [m1, m2] = await waitFor('both deferred', async () => {
      const ms = await Promise.all([h.queue.get(both.id), h.queue.get(only.id)]);
      return ms.every((m) => m?.state === 'queued' && m.attempts === 1) ? ms : undefined;
    });
    expect(paused.acceptedConnections).toBe(0);
    expect(open.completed()[0]!.rcptTo.map((p) => p.address)).toEqual(['b@open.test']);
    const r1 = m1!.recipients.find((r) => r.address === 'a@paused.test')!;
    expect(r1.status).toBe('deferred');
    expect([r1.lastReply?.code, r1.lastReply?.enhanced]).toEqual([451, '4.3.2']);
    expect(r1.lastReply?.message).toBe('delivery to paused.test is paused by the operator (delivery.paused)');
    expect(m1!.recipients.find((r) => r.address === 'b@open.test')!.status).toBe('delivered');
    expect(m2!.notBefore).toBeGreaterThan(Date.now() + 30 * 60_000);
    expect(await h.metrics.registry.getSingleMetricAsString('spoolhouse_deferred_total')).toMatch(/reason="paused"\} 2/);

    // Lifted at run time (what PUT /api/config does), then an operator's retry now: delivered.
    h.store.update({ delivery: { paused: [] } });
    await h.queue.retryNow(both.id);
    await h.queue.retryNow(only.id);
    await waitFor('all delivered', async () => ((await h.mails()).every((m) => m.state === 'delivered') ? true : undefined));
    expect(paused.completed().flatMap((t) => t.rcptTo.map((p) => p.address)).sort()).toEqual(['a@paused.test', 'c@paused.test']);
  });

  it('"*" pauses every domain', async () => {
    const rx = await startReceiver();
    cleanups.push(() => rx.close());
    const h = await startScheduler({ delivery: { routes: { 'any.test': rx.address }, retry: { min: '1h', max: '1h', lifetime: '5d' }, paused: ['*'] } });
    cleanups.push(() => h.close());
    const m = await h.enqueue({ to: ['x@any.test'] });
    const after = await waitFor('deferred', async () => {
      const x = await h.queue.get(m.id);
      return x?.attempts === 1 ? x : undefined;
    });
    expect(after.recipients[0]!.lastReply?.enhanced).toBe('4.3.2');
    expect(rx.acceptedConnections).toBe(0);
  });
});

describe('a route changed at run time', () => {
  it('applies at the next attempt, not when the cached lookup runs out', async () => {
    const old = await startReceiver({ script: { rcpt: { 'x@moved.test': '451 4.3.0 Going away' } } });
    const next = await startReceiver();
    cleanups.push(() => old.close(), () => next.close());
    const h = await startScheduler({ delivery: { routes: { 'moved.test': old.address }, retry: { min: '1h', max: '1h', lifetime: '5d' } } });
    cleanups.push(() => h.close());
    const m = await h.enqueue({ to: ['x@moved.test'] });
    await waitFor('deferred by the old route', async () => ((await h.queue.get(m.id))?.attempts === 1 ? true : undefined));
    expect(old.acceptedConnections).toBe(1);

    h.store.update({ delivery: { routes: { 'moved.test': next.address } } }, { replace: [['delivery', 'routes']] });
    await h.queue.retryNow(m.id);
    const [tx] = await next.waitForCompleted(1);
    expect(tx!.rcptTo.map((r) => r.address)).toEqual(['x@moved.test']);
    expect(old.acceptedConnections).toBe(1);
    await waitFor('delivered', async () => ((await h.queue.get(m.id))?.state === 'delivered' ? true : undefined));
  });
});
