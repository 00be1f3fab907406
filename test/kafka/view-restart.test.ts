/**
 * The view consumer stopped for good: kafkajs leaves a consumer disconnected after an error it
 * does not retry (its CRASH event says restart: false). Without a view a node cannot finish a
 * single write (every write waits for its own record to come back), so the queue starts a new
 * consumer in the same group: writes work again, and what other nodes wrote meanwhile is seen.
 */
import type { Consumer } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { bodyOf, mailRequest, openKafkaQueue, until } from './helpers.js';

describe('kafka view consumer stopped by an error kafkajs does not retry', () => {
  let a: KafkaQueue;
  let b: KafkaQueue;
  const prefix = uniquePrefix('view-restart');

  beforeAll(async () => {
    a = await openKafkaQueue(kafkaBrokers(), prefix, { requestDeadlineMs: 3_000 });
    b = await openKafkaQueue(kafkaBrokers(), prefix);
  }, 120_000);

  afterAll(async () => {
    await a?.close();
    await b?.close();
  });

  it('gets a new consumer, and writes and reads work again', async () => {
    const first = await a.enqueue(mailRequest());
    // What kafkajs does on such a crash: the consumer is disconnected, and CRASH says it stays so.
    const stopped = (a as unknown as { consumer: Consumer }).consumer;
    await stopped.disconnect();
    const meanwhile = await b.enqueue(mailRequest());
    await expect(a.enqueue(mailRequest())).rejects.toThrow(/did not answer|unavailable/i);
    a.onViewConsumerCrash({ error: new Error('simulated: not retriable'), restart: false });

    const again = await until('an enqueue on node A accepted again', () => a.enqueue(mailRequest()).catch(() => undefined), 45_000, 500);
    expect(again.state).toBe('queued');
    expect((a as unknown as { consumer: Consumer }).consumer).not.toBe(stopped);
    // The new consumer reads what the other node wrote while there was none, and A's own mail is intact.
    expect((await a.get(meanwhile.id))?.id).toBe(meanwhile.id);
    expect((await a.hold(first.id)).state).toBe('held');
    expect((await bodyOf(a, first.id)).length).toBeGreaterThan(0);
    await until('node B sees the hold made on A', async () => (await b.get(first.id))?.state === 'held', 15_000);
  });
});
