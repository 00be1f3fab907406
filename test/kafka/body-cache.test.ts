/**
 * Bodies on the node that enqueued them (real broker): kept in memory, spilled to the local body
 * directory when pushed out of the cache, written there at once when too big for it, and every
 * one read back byte for byte; a finished mail leaves no file behind.
 */
import { readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { bodyOf, mailRequest, openKafkaQueue, until } from './helpers.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('kafka backend: local copies of bodies', () => {
  it('spills what the memory cache pushes out, reads every body back whole, and leaves no file for finished mail', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'spoolhouse-kafka-bodies-'));
    cleanups.push(() => rm(parent, { recursive: true, force: true }));
    // No checkpoint round during the test: it would write out the bodies held in memory.
    const q: KafkaQueue = await openKafkaQueue(kafkaBrokers(), uniquePrefix('bodies'), { dataDir: parent, bodyCacheBytes: 64 * 1024, checkpointIntervalMs: 600_000 });
    cleanups.push(() => q.close());
    const files = () => readdirSync(join(parent, 'kafka-bodies')).filter((f) => !f.endsWith('.tmp') && !f.startsWith('.'));

    // 30 × 8 KB against a 64 KiB cache: most are pushed out and spilled; 1 MB is over cache/8 and goes to disk at once.
    const small = Array.from({ length: 30 }, (_, i) => mailRequest({ body: Buffer.from(`Subject: ${i}\r\n\r\n${String(i).repeat(8000)}\r\n`) }));
    const big = mailRequest({ body: Buffer.alloc(1024 * 1024, 'b') });
    for (const req of [...small, big]) await q.enqueue(req);
    await until('spills written', async () => files().length >= small.length - 8 + 1 || undefined, 10_000);
    expect(files().length).toBeLessThan(small.length + 1); // the newest ones stay in memory only
    for (const req of [...small, big]) expect((await bodyOf(q, req.id)).equals(req.body)).toBe(true);

    // Finished (removed): their files go, as soon as this node's view sees it.
    for (const req of [...small, big]) await q.remove(req.id, 'test');
    await until('local copies dropped', async () => files().length === 0 || undefined, 10_000);
  });

  it('is one process\'s directory: a second instance on it is refused until the first closes', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'spoolhouse-kafka-bodies-'));
    cleanups.push(() => rm(parent, { recursive: true, force: true }));
    const prefix = uniquePrefix('lock');
    const first: KafkaQueue = await openKafkaQueue(kafkaBrokers(), prefix, { dataDir: parent });
    await expect(openKafkaQueue(kafkaBrokers(), prefix, { dataDir: parent })).rejects.toThrow(/spool\.dir.*already open/);
    const req = mailRequest();
    await first.enqueue(req);
    // The refused instance left the first one's files alone.
    expect((await bodyOf(first, req.id)).equals(req.body)).toBe(true);
    await first.close();
    // The lock is gone, the body directory is kept (with the body written out) for the next start,
    // and the view's snapshot.
    expect(readdirSync(parent).sort()).toEqual(['kafka-bodies', 'kafka-view.snapshot']);
    expect(readdirSync(join(parent, 'kafka-bodies')).sort()).toEqual(['.checkpoint.json', req.id]);
    const second: KafkaQueue = await openKafkaQueue(kafkaBrokers(), prefix, { dataDir: parent });
    cleanups.push(() => second.close());
    expect(second.startInfo).toEqual({ bodies: 'resumed', contentRecords: 0, view: 'snapshot', stateRecords: 0 });
    expect((await bodyOf(second, req.id)).equals(req.body)).toBe(true);
  });
});
