/**
 * Connection reuse: a connection that has sent what it had waits a moment for more mail to the
 * same destination (Postfix's connection cache), so a stream of arrivals goes over few
 * connections, never over more than the destination's limits allow, and is QUIT once idle.
 * Real parts: the SpoolQueue, the Deliverer and a receiving smtp-server on loopback.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { startScheduler, waitFor, type SchedulerHarness } from './harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setUp(limits: Record<string, unknown>, delivery: Record<string, unknown> = {}): Promise<{ rx: Receiver; h: SchedulerHarness }> {
  const rx = await startReceiver();
  cleanups.push(() => rx.close());
  const h = await startScheduler({ delivery: { routes: { 'dest.test': rx.address }, limits: { domains: { 'dest.test': limits } }, ...delivery } });
  cleanups.push(() => h.close());
  return { rx, h };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('connection reuse', () => {
  it('carries mail arriving one by one over one connection, up to messagesPerConnection, then QUITs when idle', async () => {
    // Postfix's 2 s: each next arrival fits in it even on a loaded machine (the default 250 ms
    // is shorter than an enqueue's synced commit can take there).
    const { rx, h } = await setUp({ connections: 1, messagesPerConnection: 4 }, { connectionReuseWait: '2s' });
    const count = 8;
    for (let i = 0; i < count; i++) {
      await h.enqueue({ to: [`u${i}@dest.test`] });
      await rx.waitForCompleted(i + 1, 10_000); // each one is delivered before the next arrives
      await sleep(20);
    }
    // Without reuse every mail would have had its own connection (8); with it, 4 per connection.
    expect(rx.connections.every((c) => c.transactions.length <= 4)).toBe(true);
    expect(rx.acceptedConnections).toBeLessThanOrEqual(4);
    expect(rx.connections.filter((c) => c.transactions.length > 1).length).toBeGreaterThanOrEqual(1);
    expect(rx.maxConcurrency).toBe(1);
    // Idle: the connection is closed with QUIT shortly after the wait, not held open.
    await waitFor('every connection closed', () => rx.connections.every((c) => c.closedAt !== undefined), 5_000);
    expect(rx.connections.at(-1)!.commands.at(-1)).toBe('QUIT');
    await waitFor('all delivered', async () => (await h.mails()).every((m) => m.state === 'delivered'));
  });

  it('a waiting connection takes new mail instead of a second connection being opened', async () => {
    // A wait (5 s) that each next arrival fits in even on a loaded machine, where an enqueue's
    // synced commit alone has taken longer than the default 250 ms.
    const { rx, h } = await setUp({ connections: 3, messagesPerConnection: 100 }, { connectionReuseWait: '5s' });
    for (let i = 0; i < 6; i++) {
      await h.enqueue({ to: [`u${i}@dest.test`] });
      await rx.waitForCompleted(i + 1, 10_000);
    }
    expect(rx.acceptedConnections).toBe(1);
    expect(rx.connections[0]!.transactions.length).toBe(6);
  });
});
