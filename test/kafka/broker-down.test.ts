/**
 * Kafka stopped for a while: enqueue fails fast with QueueUnavailableError (ingress answers
 * 451 4.3.0), nothing accepted before is lost, and the same KafkaQueue instance works again once
 * the broker is back on the same data. Uses a broker of its own, since it stops it.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QueueUnavailableError } from '../../src/queue/errors.js';
import type { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import type { QueuedMail } from '../../src/queue/types.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { bodyOf, mailRequest, openKafkaQueue, privateBroker, until, type PrivateBroker } from './helpers.js';

describe('kafka backend with the broker down', () => {
  let broker: PrivateBroker;
  let q: KafkaQueue;
  // The queue's own log lines (kafkajs included), printed when the recovery does not come in time.
  const logLines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line.trimEnd()) });

  beforeAll(async () => {
    kafkaBrokers(); // this file needs Kafka like the others: fail rather than skip without it
    broker = await privateBroker();
    q = await openKafkaQueue(broker.brokers, uniquePrefix('down'), { requestDeadlineMs: 5_000, logger });
  }, 120_000);

  afterAll(async () => {
    await q?.close();
    await broker?.destroy();
  });

  it('rejects enqueue with QueueUnavailableError while down, and keeps everything accepted', async () => {
    const before: QueuedMail[] = [];
    const bodies = new Map<string, Buffer>();
    for (let i = 0; i < 20; i++) {
      const req = mailRequest({ priority: i % 2, notBefore: i < 10 ? 0 : Date.now() + 3_600_000 });
      bodies.set(req.id, req.body);
      before.push(await q.enqueue(req));
    }
    const held = await q.hold(before[0]!.id, 'kept for the test');

    await broker.stop();
    const started = Date.now();
    const refused: string[] = [];
    const tryEnqueue = async (): Promise<QueuedMail | undefined> => {
      const req = mailRequest();
      try {
        return await q.enqueue(req);
      } catch (e) {
        refused.push(req.id);
        throw e;
      }
    };
    const err = await tryEnqueue().then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(QueueUnavailableError);
    expect((err as QueueUnavailableError).smtpCode).toBe(451);
    expect((err as QueueUnavailableError).enhancedCode).toBe('4.3.0');
    const rejectMs = Date.now() - started;
    // The operator actions fail the same way instead of hanging.
    await expect(q.release(held.id)).rejects.toBeInstanceOf(QueueUnavailableError);

    await broker.restart();
    const restarted = Date.now();
    // The same instance resumes: producer and view consumer reconnect by themselves.
    const after = await until('enqueue accepted again', () => tryEnqueue().catch(() => undefined), 60_000, 500).catch((err: unknown) => {
      console.log(`no enqueue accepted ${Date.now() - restarted} ms after the broker restarted; the queue's log:\n${logLines.slice(-150).join('\n')}`);
      throw err;
    });
    console.log(`enqueue accepted again ${Date.now() - restarted} ms after the broker restarted`);
    expect(after.state).toBe('queued');
    // A refused enqueue whose write landed late anyway is removed, never left to be delivered.
    for (const id of refused) {
      await until(`refused mail ${id} absent or removed`, async () => {
        const m = await q.get(id);
        return !m || m.state === 'removed';
      }, 30_000);
    }
    for (const m of before) {
      const got = await q.get(m.id);
      expect(got?.id).toBe(m.id);
      expect(await bodyOf(q, m.id)).toEqual(bodies.get(m.id));
    }
    expect((await q.get(held.id))?.state).toBe('held');
    const released = await q.release(held.id);
    expect(released.state).toBe('queued');
    const due = await q.reserveDue({ owner: 'after-outage', limit: 100, leaseMs: 60_000 });
    expect(due.map((m) => m.id).sort()).toEqual([...before.slice(0, 10).map((m) => m.id), after.id].sort());
    // A fresh node on the same topics sees the same queue (nothing was only in memory).
    const other = await openKafkaQueue(broker.brokers, q.stateTopic.replace(/\.state$/, ''));
    try {
      const page = await other.browse({}, { limit: 1000 });
      const live = page.items.filter((m) => m.state !== 'removed');
      expect(live).toHaveLength(21);
      expect(page.items.filter((m) => m.state === 'active')).toHaveLength(11);
    } finally {
      await other.close();
    }
    console.log(`broker down: enqueue rejected after ${rejectMs} ms; ${refused.length} enqueues refused during the outage`);
  }, 180_000);
});
