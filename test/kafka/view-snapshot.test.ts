/**
 * A Kafka node's view snapshot (`kafka-view.snapshot` in its spool.dir, src/queue/kafka/view-snapshot.ts):
 * a node started again loads it and reads the state topic only from the offsets it covers, and
 * ends with the view a read of the whole topic gives. One it cannot trust (cut short, too old, for
 * another topic, offsets past the topic's end) is not used: the node reads the topic whole, as
 * before. (kill -9 of a node with a snapshot: node-crash.test.ts; compaction: compaction.test.ts.)
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import type { QueuedMail } from '../../src/queue/types.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { mailRequest, openKafkaQueue, until } from './helpers.js';

/** What two views must agree on for every mail. */
function summary(m: QueuedMail) {
  return { id: m.id, state: m.state, generation: m.generation, priority: m.priority, notBefore: m.notBefore, attempts: m.attempts };
}

async function everyMail(q: KafkaQueue) {
  const page = await q.browse({}, { limit: 1000 });
  return page.items.map(summary).sort((x, y) => (x.id < y.id ? -1 : 1));
}

describe('kafka backend: the view snapshot', () => {
  const brokers = kafkaBrokers();
  const prefix = uniquePrefix('snapshot');
  const dataDir = mkdtempSync(join(tmpdir(), 'spoolhouse-kafka-snapshot-'));
  const file = join(dataDir, 'kafka-view.snapshot');
  let other: KafkaQueue;

  beforeAll(async () => {
    other = await openKafkaQueue(brokers, prefix, { nodeId: 'node-b' });
  }, 60_000);

  afterAll(async () => {
    await other?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('a node closed and started again reads only what was written after its snapshot', async () => {
    const a = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir });
    const mails = await Promise.all(Array.from({ length: 40 }, (_, i) => a.enqueue(mailRequest({ recipients: [{ address: `r${i}@dest.example` }] }))));
    const got = await a.reserveDue({ owner: 'node-a', limit: 20, leaseMs: 60_000 });
    expect(got).toHaveLength(20);
    const retryAt = Date.now() + 3_600_000;
    await Promise.all(got.map((m, i) => a.recordAttempt(m.id, m.lease!.token, {
      outcomes: m.recipients.map((r) => ({ address: r.address, outcome: i % 2 ? 'delivered' as const : 'deferred' as const })),
      ...(i % 2 ? {} : { retryAt }),
    })));
    const untouched = mails.filter((m) => !got.some((g) => g.id === m.id));
    for (const m of untouched.slice(0, 5)) await a.hold(m.id);
    await a.close();
    const header = JSON.parse(readFileSync(file, 'utf8').split('\n', 1)[0]!) as { mails: number; stateTopic: string };
    expect(header).toMatchObject({ mails: 40, stateTopic: `${prefix}.state` });

    // While node A is down, node B writes six state records: two holds, a removal, three new mails.
    await other.hold(untouched[5]!.id);
    await other.hold(untouched[6]!.id);
    await other.remove(untouched[7]!.id, 'test');
    await Promise.all(Array.from({ length: 3 }, () => other.enqueue(mailRequest())));

    const again = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir });
    const fresh = await openKafkaQueue(brokers, prefix, { nodeId: 'node-c' });
    try {
      expect(again.startInfo).toMatchObject({ view: 'snapshot', stateRecords: 6 });
      expect(fresh.startInfo).toMatchObject({ view: 'full' });
      expect(fresh.startInfo!.stateRecords).toBeGreaterThanOrEqual(40 + 20 + 20 + 5 + 6);
      const want = await everyMail(fresh);
      expect(want).toHaveLength(43);
      expect(await everyMail(again)).toEqual(want);
      expect(await everyMail(other)).toEqual(want);
      expect((await again.stats()).byState).toMatchObject({ held: 7, removed: 1, delivered: 10 });
      // It goes on from there: a release, seen by the other nodes.
      expect((await again.release(untouched[5]!.id)).state).toBe('queued');
      await until('node C to see the release', async () => (await fresh.get(untouched[5]!.id))?.state === 'queued', 10_000, 50);
    } finally {
      await fresh.close();
      await again.close();
    }
  }, 120_000);

  it('a snapshot it cannot trust is not used: the node reads the state topic whole', async () => {
    const want = await everyMail(other);
    const cases: [string, (lines: string[]) => string[], RegExp][] = [
      ['cut short', (l) => l.slice(0, -2), /^snapshot holds \d+ mails, its header says \d+$/],
      ['too old', (l) => header(l, (h) => ({ ...h, writtenAt: Date.now() - 13 * 3_600_000 })), /older than 12 h/],
      ['another topic', (l) => header(l, (h) => ({ ...h, stateTopic: 'elsewhere.state' })), /^written for state topic elsewhere\.state$/],
      ['past the end', (l) => header(l, (h) => ({ ...h, offsets: { ...(h.offsets as object), 0: 1_000_000 } })), /^snapshot offset 1000000 is past the end/],
      ['not JSON', (l) => ['{"v":1,', ...l.slice(1)], /^unreadable snapshot$/],
    ];
    for (const [what, edit, reason] of cases) {
      // Each close writes a good snapshot again; spoil it before the next start.
      const lines = readFileSync(file, 'utf8').split('\n').filter((x) => x !== '');
      writeFileSync(file, edit(lines).join('\n') + '\n');
      const q = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir });
      try {
        expect(q.startInfo?.view, what).toBe('full');
        expect(q.startInfo?.viewReason, what).toMatch(reason);
        expect(await everyMail(q), what).toEqual(want);
      } finally {
        await q.close();
      }
    }
    // And the good one written at the last close is used again.
    const q = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir });
    try {
      expect(q.startInfo).toMatchObject({ view: 'snapshot', stateRecords: 0 });
      expect(await everyMail(q)).toEqual(want);
    } finally {
      await q.close();
    }
  }, 120_000);
});

function header(lines: string[], edit: (h: Record<string, unknown>) => Record<string, unknown>): string[] {
  return [JSON.stringify(edit(JSON.parse(lines[0]!) as Record<string, unknown>)), ...lines.slice(1)];
}
