/**
 * kill -9 of a node with leases in flight: the mail it had reserved but not finished is taken by
 * another node once the leases run out (not before), or at once by the same node started again on
 * its directory; what it had finished stays finished, and no mail is lost. The dead node is a real
 * child process (test/kafka/node-child.mjs, on dist/).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { bodyOf, openKafkaQueue, until } from './helpers.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const MAILS = 40;
const LEASE_MS = 5_000;

describe('kafka backend: a node killed with kill -9', () => {
  let b: KafkaQueue | undefined;
  const cleanup: (() => void)[] = [];
  afterAll(async () => {
    await b?.close();
    for (const c of cleanup) c();
  });

  /** Each mail's body is the one node-child.mjs enqueued for its recipient. */
  async function expectBodies(q: KafkaQueue, ids: string[]) {
    for (const id of ids) {
      const i = /^r(\d+)@/.exec((await q.get(id))!.recipients[0]!.address)![1];
      expect((await bodyOf(q, id)).toString()).toBe(`Subject: m${i}\r\n\r\nbody ${i}\r\n`);
    }
  }

  /**
   * Node A (node-child.mjs) enqueues MAILS, leases them all for `leaseMs`, delivers every other one,
   * sends the final "." of one more (`sending`), and is killed.
   */
  async function killedNodeA(leaseMs: number, o: { memoryBodies?: boolean } = {}) {
    const brokers = kafkaBrokers();
    expect(existsSync(join(here, '..', '..', 'dist', 'src', 'queue', 'kafka', 'kafka-queue.js')), 'run `npx tsc -p .` first').toBe(true);
    const prefix = uniquePrefix('crash');
    // The killed child cannot remove its body cache: it lives in a dir this test removes.
    const dataDir = mkdtempSync(join(tmpdir(), 'spoolhouse-kafka-child-'));
    cleanup.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const child = spawn(process.execPath, [join(here, 'node-child.mjs')], {
      env: { ...process.env, KAFKA_BROKERS: brokers.join(','), TOPIC_PREFIX: prefix, MAILS: String(MAILS), LEASE_MS: String(leaseMs), DATA_DIR: dataDir, ...(o.memoryBodies ? { MEMORY_BODIES: '1' } : {}) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise((r) => child.once('exit', r));
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`child exited early (${code})`)));
    });
    const { reserved, delivered, sending, leaseUntil } = JSON.parse(line) as { reserved: string[]; delivered: string[]; sending: string; leaseUntil: number };
    const killedAt = Date.now();
    child.kill('SIGKILL');
    await exited;
    expect(reserved).toHaveLength(MAILS);
    return { brokers, prefix, dataDir, delivered, sending, leaseUntil, killedAt, inFlight: reserved.filter((id) => !delivered.includes(id)) };
  }

  it('hands its unfinished leases to another node after they expire, and loses nothing', async () => {
    const { brokers, prefix, dataDir, delivered, leaseUntil, killedAt, inFlight } = await killedNodeA(LEASE_MS);

    // Node B starts on the dead node's directory: it takes over the lock of the dead pid, the
    // body directory node A kept, from its checkpoint (past every content record: nothing to read),
    // and the view's snapshot (written after A's last state record: nothing to read either).
    expect(readdirSync(dataDir)).toContain('LOCK');
    b = await openKafkaQueue(brokers, prefix, { nodeId: 'node-b', dataDir });
    expect(b.startInfo).toEqual({ bodies: 'resumed', contentRecords: 0, view: 'snapshot', stateRecords: 0 });
    const taken = new Map<string, number>();
    // Leases still live: node B must not take them yet.
    const early = await b.reserveDue({ owner: 'node-b', limit: MAILS, leaseMs: 60_000 });
    if (Date.now() < leaseUntil) expect(early).toEqual([]);
    for (const m of early) taken.set(m.id, Date.now());

    await until('all in-flight mail re-reserved by node B', async () => {
      for (const m of await b!.reserveDue({ owner: 'node-b', limit: MAILS, leaseMs: 60_000 })) {
        taken.set(m.id, Date.now());
        expect(m.lease?.owner).toBe('node-b');
      }
      return taken.size >= inFlight.length;
    }, 60_000, 200);
    expect([...taken.keys()].sort()).toEqual([...inFlight].sort());
    // Taken over only once node A's leases had run out (same clock: same machine).
    for (const at of taken.values()) expect(at).toBeGreaterThanOrEqual(leaseUntil);
    for (const id of delivered) expect((await b.get(id))?.state).toBe('delivered');
    await expectBodies(b, inFlight);
    const page = await b.browse({}, { limit: 1000 });
    expect(page.total.count).toBe(MAILS);
    console.log(`kill -9: ${inFlight.length} leases taken over ${Math.min(...taken.values()) - killedAt} ms after the kill (lease ${LEASE_MS} ms)`);
  }, 120_000);

  it('restarted with the same node id on its directory, gives its old leases back at start, long before they run out', async () => {
    // Node A's own bodies in memory only when killed: its checkpoint stays below them.
    const { brokers, prefix, dataDir, delivered, sending, leaseUntil, inFlight } = await killedNodeA(10 * 60_000, { memoryBodies: true });
    const again = await openKafkaQueue(brokers, prefix, { nodeId: 'node-a', dataDir });
    try {
      // At once, not after the ten-minute leases: every unfinished mail is due again, but the one
      // whose final "." was in flight (it may have been delivered): its lease runs out as before.
      const due = await again.reserveDue({ owner: 'node-a', limit: MAILS, leaseMs: 60_000 });
      expect(Date.now()).toBeLessThan(leaseUntil);
      expect(due.map((m) => m.id).sort()).toEqual(inFlight.filter((id) => id !== sending).sort());
      expect((await again.get(sending))?.state).toBe('active');
      for (const id of delivered) expect((await again.get(id))?.state).toBe('delivered');
      // Its body directory again, from the checkpoint, which its bodies lost with the kill held back.
      expect(again.startInfo?.bodies).toBe('resumed');
      expect(again.startInfo!.contentRecords).toBeGreaterThan(0);
      expect(again.startInfo).toMatchObject({ view: 'snapshot', stateRecords: 0 });
      await expectBodies(again, inFlight);
      expect((await again.browse({}, { limit: 1000 })).total.count).toBe(MAILS);
    } finally {
      await again.close();
    }
  }, 120_000);
});
