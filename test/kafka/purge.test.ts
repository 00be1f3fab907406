/**
 * Retention on the Kafka backend: finished mail is purged (state and body tombstoned, then gone
 * from every view) once `retainFinishedMs` has passed, all of it, however many finished since the
 * last purge. One batch a run (1000) used to be all a run purged, so a node finishing more than
 * 1000 mails between two runs (a minute) kept the rest for ever and its memory grew (found by
 * bench/soak.ts on the Kafka backend). On a cluster each finished mail is purged by the node that
 * finished it; the others step in PURGE_GRACE_MS later, for a node that is gone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PURGE_GRACE_MS, type KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import type { QueuedMail } from '../../src/queue/types.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { mailRequest, openKafkaQueue, until } from './helpers.js';

const COUNT = 2300;

describe('kafka purge of finished mail', () => {
  let a: KafkaQueue;
  let b: KafkaQueue;
  const prefix = uniquePrefix('purge');

  beforeAll(async () => {
    // A retention of an hour: nothing is purged by the timer while the test runs; the test calls
    // purgeFinished itself with the cutoff it wants.
    a = await openKafkaQueue(kafkaBrokers(), prefix, { retainFinishedMs: 3_600_000 });
    b = await openKafkaQueue(kafkaBrokers(), prefix, { retainFinishedMs: 3_600_000 });
  }, 120_000);

  afterAll(async () => {
    await a?.close();
    await b?.close();
  });

  it('purges every finished mail past the cutoff in one run, and no live one', async () => {
    const ids: string[] = [];
    for (let i = 0; i < COUNT; i += 200) {
      const batch = await Promise.all(Array.from({ length: Math.min(200, COUNT - i) }, () => a.enqueue(mailRequest())));
      ids.push(...batch.map((m) => m.id));
    }
    const live = await a.enqueue(mailRequest());
    const held = await a.hold(live.id);
    expect(held.state).toBe('held');

    let finished = 0;
    while (finished < COUNT) {
      const got: QueuedMail[] = await a.reserveDue({ owner: 'test', limit: 500, leaseMs: 60_000 });
      expect(got.length).toBeGreaterThan(0);
      await Promise.all(got.map((m) => a.recordAttempt(m.id, m.lease!.token, {
        outcomes: m.recipients.map((r) => ({ address: r.address, outcome: 'delivered' as const, reply: { code: 250, enhanced: '2.0.0', message: 'ok' } })),
      })));
      finished += got.length;
    }
    expect((await a.get(ids[COUNT - 1]!))?.state).toBe('delivered');

    // Everything finished before now is past a zero retention.
    expect(await a.purgeFinished(0)).toBe(COUNT);
    for (const q of [a, b]) {
      await until('every finished mail gone from the view', async () => {
        const left = (await Promise.all(ids.map((id) => q.get(id)))).filter((m) => m !== undefined);
        return left.length === 0 || false;
      }, 30_000, 250);
    }
    // The held mail is not finished: it stays, and a second run has nothing left to purge.
    expect((await a.get(live.id))?.state).toBe('held');
    expect((await b.get(live.id))?.state).toBe('held');
    expect(await a.purgeFinished(0)).toBe(0);
  }, 180_000);

  it('leaves mail another node finished to that node, and purges it once that node is gone for PURGE_GRACE_MS', async () => {
    const mine = await Promise.all(Array.from({ length: 20 }, () => a.enqueue(mailRequest())));
    const got = await a.reserveDue({ owner: 'test', limit: 100, leaseMs: 60_000 });
    expect(got.map((m) => m.id).sort()).toEqual(mine.map((m) => m.id).sort());
    await Promise.all(got.map((m) => a.recordAttempt(m.id, m.lease!.token, {
      outcomes: m.recipients.map((r) => ({ address: r.address, outcome: 'delivered' as const })),
    })));
    for (const m of mine) await until('node B to see the mail finished', async () => (await b.get(m.id))?.state === 'delivered', 10_000, 50);
    // Past the retention for B too, but A finished them: B leaves them to A...
    expect(await b.purgeFinished(0)).toBe(0);
    // ...until A has been gone for the grace (B's cutoff moved on by it).
    expect(await b.purgeFinished(-PURGE_GRACE_MS - 1000)).toBe(20);
    for (const q of [a, b]) {
      await until('the mail gone from the view', async () => (await Promise.all(mine.map((m) => q.get(m.id)))).every((m) => m === undefined), 30_000, 250);
    }
    expect(await a.purgeFinished(0)).toBe(0);
  }, 60_000);
});
