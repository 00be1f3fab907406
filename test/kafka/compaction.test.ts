/**
 * Log compaction of the state topic. Compaction keeps only a key's latest record, so a node that
 * reads the topic after the cleaner ran sees a mail's latest state record without the ones before
 * it: its `prev` is not 0, and the view has no generation to compare it with. Such a record must
 * become the mail's state (the history before it was compacted away), not be taken for a lost race:
 * a view that rejected it lost every mail with more than one record, and its repair sweep then
 * tombstoned them for every node.
 *
 * The same for a node started from its view snapshot (view-snapshot.ts): of the records written
 * while it was down, the cleaner may leave only the latest, written from a generation the snapshot
 * never had.
 *
 * The state topic is created here before the node starts, with segments that roll after 100 ms and
 * no compaction lag, and the test broker runs its cleaner every second, so compaction happens
 * within seconds instead of the hour the backend's own segment.ms gives. The test waits until the
 * topic holds one record per mail before it starts a fresh node on it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import type { QueuedMail } from '../../src/queue/types.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { mailRequest, openKafkaQueue, until } from './helpers.js';

/** Every record of a topic, from its beginning to its end offsets as asked now. */
async function readTopic(brokers: string[], topic: string): Promise<{ key: string; offset: number; value: Buffer | null }[]> {
  const kafka = new Kafka({ clientId: 'compaction-test', brokers, logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const ends = new Map((await admin.fetchTopicOffsets(topic)).map((p) => [p.partition, Number(p.high)]));
  await admin.disconnect();
  const out: { key: string; offset: number; value: Buffer | null }[] = [];
  const left = new Set([...ends].filter(([, end]) => end > 0).map(([p]) => p));
  if (!left.size) return out;
  const consumer = kafka.consumer({ groupId: `compaction-test-${Math.random()}`, maxWaitTimeInMs: 100 });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  let done!: () => void;
  const finished = new Promise<void>((resolve) => { done = resolve; });
  await consumer.run({
    eachBatch: async ({ batch }) => {
      for (const m of batch.messages) {
        if (Number(m.offset) >= ends.get(batch.partition)!) continue;
        out.push({ key: m.key?.toString('utf8') ?? '', offset: Number(m.offset), value: m.value });
      }
      // The last record is in the active segment, which the cleaner never touches.
      if (batch.messages.some((m) => Number(m.offset) >= ends.get(batch.partition)! - 1)) left.delete(batch.partition);
      if (!left.size) done();
    },
  });
  await Promise.race([finished, new Promise((r) => setTimeout(r, 20_000))]);
  await consumer.disconnect();
  if (left.size) throw new Error(`could not read ${topic} to its end (partitions ${[...left].join(', ')})`);
  return out;
}

describe('kafka state topic after log compaction', () => {
  const prefix = uniquePrefix('compaction');
  const brokers = kafkaBrokers();
  let a: KafkaQueue;
  let b: KafkaQueue | undefined;

  beforeAll(async () => {
    const kafka = new Kafka({ clientId: 'compaction-test', brokers, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({
      waitForLeaders: true,
      topics: [{
        topic: `${prefix}.state`, numPartitions: 3, replicationFactor: 1,
        configEntries: [
          { name: 'cleanup.policy', value: 'compact' },
          { name: 'segment.ms', value: '100' },
          { name: 'min.compaction.lag.ms', value: '0' },
          { name: 'min.cleanable.dirty.ratio', value: '0.01' },
          { name: 'delete.retention.ms', value: String(24 * 3_600_000) },
        ],
      }],
    });
    await admin.disconnect();
    a = await openKafkaQueue(brokers, prefix, { retainFinishedMs: 3_600_000 });
  }, 120_000);

  afterAll(async () => {
    await b?.close();
    await a?.close();
  });

  it('a node started on the compacted topic sees every mail as it is, and the cluster keeps them', async () => {
    // Twelve mails, each with several state records: enqueued, reserved, then deferred (queued
    // again with an attempt), delivered, held, or given a new priority.
    const mails = await Promise.all(Array.from({ length: 12 }, (_, i) => a.enqueue(mailRequest({ recipients: [{ address: `r${i}@dest.example` }] }))));
    const got: QueuedMail[] = await a.reserveDue({ owner: 'test', limit: 100, leaseMs: 60_000 });
    expect(got.length).toBe(12);
    const now = Date.now();
    await Promise.all(got.map((m, i) => a.recordAttempt(m.id, m.lease!.token, {
      outcomes: m.recipients.map((r) => ({ address: r.address, outcome: i % 3 === 0 ? 'delivered' as const : 'deferred' as const })),
      ...(i % 3 === 0 ? {} : { retryAt: now + 3_600_000 }),
    })));
    const deferred = got.filter((_, i) => i % 3 !== 0);
    await a.hold(deferred[0]!.id);
    await a.setPriority(deferred[1]!.id, 3);
    const ids = new Set(mails.map((m) => m.id));

    // Segments roll on the next append after 100 ms: more mail, on every partition, a few times,
    // until the cleaner has left one record per mail of the twelve.
    await until('the cleaner to leave one state record per mail', async () => {
      await Promise.all(Array.from({ length: 6 }, () => a.enqueue(mailRequest())));
      const records = (await readTopic(brokers, `${prefix}.state`)).filter((r) => ids.has(r.key));
      const perKey = new Map<string, number>();
      for (const r of records) perKey.set(r.key, (perKey.get(r.key) ?? 0) + 1);
      return perKey.size === 12 && [...perKey.values()].every((n) => n === 1) || false;
    }, 90_000, 1_000);
    // The records left are not the first of their mail: their writer's generation was not 0.
    for (const r of (await readTopic(brokers, `${prefix}.state`)).filter((x) => ids.has(x.key))) {
      expect((JSON.parse(r.value!.toString('utf8')) as { prev: number }).prev).toBeGreaterThan(0);
    }

    const expected = new Map<string, QueuedMail>();
    for (const id of ids) expected.set(id, (await a.get(id))!);
    b = await openKafkaQueue(brokers, prefix, { retainFinishedMs: 3_600_000 });
    for (const [id, want] of expected) {
      const seen = await b.get(id);
      expect(seen, `mail ${id} (${want.state}) on the node started after compaction`).toBeDefined();
      expect({ state: seen!.state, generation: seen!.generation, priority: seen!.priority, attempts: seen!.attempts, notBefore: seen!.notBefore })
        .toEqual({ state: want.state, generation: want.generation, priority: want.priority, attempts: want.attempts, notBefore: want.notBefore });
    }
    const queued = await b.browse({ state: 'queued' });
    expect(queued.items.filter((m) => ids.has(m.id)).length).toBe(7);
    expect((await b.browse({ state: 'held' })).items.map((m) => m.id)).toEqual([deferred[0]!.id]);
    expect((await b.stats()).byState.delivered).toBe(4);

    // Three repair sweeps later (every 2 s) every mail is still there, on both nodes, unchanged:
    // the new node wrote nothing over them.
    await new Promise((r) => setTimeout(r, 6_500));
    for (const q of [a, b]) {
      for (const [id, want] of expected) expect((await q.get(id))?.generation, id).toBe(want.generation);
    }
    // And the new node can go on with them: the held mail released, the queued ones retried.
    const released = await b.release(deferred[0]!.id);
    expect(released.state).toBe('queued');
    await until('node A to see the release', async () => (await a.get(deferred[0]!.id))?.state === 'queued', 10_000, 50);
  }, 150_000);

  it('a node started from its view snapshot takes what the cleaner left of the records written while it was down', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'spoolhouse-kafka-compaction-'));
    try {
      let s = await openKafkaQueue(brokers, prefix, { nodeId: 'node-s', dataDir, retainFinishedMs: 3_600_000 });
      const mails = await Promise.all(Array.from({ length: 6 }, () => s.enqueue(mailRequest())));
      await s.close();
      // Two records per mail while node S is down (a hold, then a new priority), then compacted:
      // only the second is left, written from a generation the snapshot never had.
      for (const m of mails) {
        await a.hold(m.id);
        await a.setPriority(m.id, 0);
      }
      const ids = new Set(mails.map((m) => m.id));
      await until('the cleaner to leave one state record per mail', async () => {
        await Promise.all(Array.from({ length: 6 }, () => a.enqueue(mailRequest())));
        const perKey = new Map<string, number>();
        for (const r of (await readTopic(brokers, `${prefix}.state`)).filter((x) => ids.has(x.key))) perKey.set(r.key, (perKey.get(r.key) ?? 0) + 1);
        return perKey.size === 6 && [...perKey.values()].every((n) => n === 1) || false;
      }, 90_000, 1_000);
      s = await openKafkaQueue(brokers, prefix, { nodeId: 'node-s', dataDir, retainFinishedMs: 3_600_000 });
      try {
        expect(s.startInfo?.view).toBe('snapshot');
        for (const m of mails) {
          const want = (await a.get(m.id))!;
          expect(want).toMatchObject({ state: 'held', priority: 0, generation: 3 });
          const seen = await s.get(m.id);
          expect(seen && { state: seen.state, priority: seen.priority, generation: seen.generation }, m.id).toEqual({ state: 'held', priority: 0, generation: 3 });
        }
      } finally {
        await s.close();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 150_000);
});
