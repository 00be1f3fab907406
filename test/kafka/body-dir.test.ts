/**
 * A node's body directory (`kafka-bodies` under its spool.dir) is kept across restarts with a
 * checkpoint of the content offsets it covers (src/queue/kafka/body-dir.ts): a node started again
 * reads the content topic from there instead of from its beginning. What it must never do is serve
 * a wrong or missing body: a body cut short, or a checkpoint from before the machine last started,
 * makes it read the content topic whole, as before. (kill -9 of a node: node-crash.test.ts.)
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { bodyOf, mailRequest, openKafkaQueue } from './helpers.js';

const MAILS = 30;
const FINISHED = 10;

describe('kafka backend: the body directory kept across restarts', () => {
  const cleanup: (() => void)[] = [];
  afterAll(() => {
    for (const c of cleanup) c();
  });

  /**
   * A node on its own directory enqueues MAILS mails of 1–24 KB (a 64 KiB memory cache: some stay in
   * memory, some are spilled, the largest go to a file at once), delivers FINISHED of them, closes.
   */
  async function filledDir() {
    const brokers = kafkaBrokers();
    const prefix = uniquePrefix('bodydir');
    const dataDir = mkdtempSync(join(tmpdir(), 'spoolhouse-kafka-bodydir-'));
    cleanup.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const bodies = new Map<string, Buffer>();
    const a = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir, bodyCacheBytes: 64 * 1024 });
    try {
      for (let i = 0; i < MAILS; i++) {
        const req = mailRequest({ body: Buffer.from(`Subject: m${i}\r\n\r\n${String(i % 10).repeat(1024 * (1 + (i * 7) % 24))}\r\n`) });
        await a.enqueue(req);
        bodies.set(req.id, req.body);
      }
      const reserved = await a.reserveDue({ owner: 'node-a', limit: FINISHED, leaseMs: 60_000 });
      expect(reserved).toHaveLength(FINISHED);
      for (const m of reserved) await a.recordAttempt(m.id, m.lease!.token, { outcomes: [{ address: m.recipients[0]!.address, outcome: 'delivered' }] });
      const finished = reserved.map((m) => m.id);
      return { brokers, prefix, dataDir, bodies, finished, live: [...bodies.keys()].filter((id) => !finished.includes(id)) };
    } finally {
      await a.close();
    }
  }

  async function expectBodies(q: KafkaQueue, bodies: Map<string, Buffer>, live: string[]) {
    for (const id of live) expect((await bodyOf(q, id)).equals(bodies.get(id)!), `body of ${id}`).toBe(true);
  }

  it('a node closed and started again reads no body again, and has every live one', async () => {
    const { brokers, prefix, dataDir, bodies, finished, live } = await filledDir();
    const dir = join(dataDir, 'kafka-bodies');
    // Closed: every live body is a file there (memory ones written out), none of finished mail.
    expect(readdirSync(dir).filter((f) => !f.startsWith('.')).sort()).toEqual([...live].sort());
    const again = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir });
    try {
      // At most the tombstones of the finished bodies, if they landed after the last checkpoint.
      expect(again.startInfo?.bodies).toBe('resumed');
      expect(again.startInfo!.contentRecords).toBeLessThanOrEqual(FINISHED);
      await expectBodies(again, bodies, live);
      for (const id of finished) expect((await again.get(id))?.state).toBe('delivered');
      expect(readdirSync(dir).filter((f) => !f.startsWith('.')).sort()).toEqual([...live].sort());
    } finally {
      await again.close();
    }
  }, 120_000);

  it('a body file cut short makes the node read the content topic whole, and serves the whole body', async () => {
    const { brokers, prefix, dataDir, bodies, live } = await filledDir();
    const victim = live[live.length - 1]!;
    truncateSync(join(dataDir, 'kafka-bodies', victim), 100);
    // And a leftover of a write a kill interrupted.
    writeFileSync(join(dataDir, 'kafka-bodies', `${live[0]}.1234abcd.tmp`), 'partial');
    const again = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir });
    try {
      expect(again.startInfo).toMatchObject({ bodies: 'reread', reason: '1 live mail without its body' });
      expect(again.startInfo!.contentRecords).toBeGreaterThanOrEqual(MAILS);
      await expectBodies(again, bodies, live);
      expect(existsSync(join(dataDir, 'kafka-bodies', `${live[0]}.1234abcd.tmp`))).toBe(false);
    } finally {
      await again.close();
    }
  }, 120_000);

  it('a checkpoint from before the machine last started is not used', async () => {
    const { brokers, prefix, dataDir, bodies, live } = await filledDir();
    const path = join(dataDir, 'kafka-bodies', '.checkpoint.json');
    const cp = JSON.parse(readFileSync(path, 'utf8')) as { bootId: string };
    writeFileSync(path, JSON.stringify({ ...cp, bootId: '00000000-0000-0000-0000-000000000000' }));
    const again = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir });
    try {
      expect(again.startInfo).toMatchObject({ bodies: 'fresh', reason: 'written before the machine last started' });
      expect(again.startInfo!.contentRecords).toBeGreaterThanOrEqual(MAILS);
      await expectBodies(again, bodies, live);
    } finally {
      await again.close();
    }
  }, 120_000);
});
