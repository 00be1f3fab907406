/**
 * Segment compaction: a few long-lived mails must not pin whole segment files. The live bodies of
 * a mostly dead sealed segment are copied into the current one (synced before the metadata points
 * at them) and the old file goes; bodies stay byte for byte, across a reopen too, and a segment
 * that is still mostly live is left alone.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { newMailId } from '../../src/queue/model.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { EnqueueRequest } from '../../src/queue/types.js';
import { makeTmpDir, type TmpDir } from '../helpers/tmp.js';
import { bodyOf } from '../helpers/body.js';

const SEGMENT_BYTES = 64 * 1024;

function request(seq: number): EnqueueRequest {
  // 4 KB of content that differs per mail, so a body read from the wrong place cannot pass.
  const body = Buffer.from(`Subject: mail ${seq}\r\n\r\n${`line ${seq} `.repeat(400).slice(0, 4000)}\r\n`);
  return {
    id: newMailId(), sender: 'a@compact.example', recipients: [{ address: `u${seq}@dest.example` }], body,
    priority: 0, notBefore: 0, client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } },
  };
}


describe('spool segment compaction', () => {
  let tmp: TmpDir;
  let q: SpoolQueue;
  const open = async () => {
    // No body cache (every read comes from a segment) and no timer: the test runs compaction.
    q = new SpoolQueue({
      dir: tmp.path, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger(),
      segmentBytes: SEGMENT_BYTES, purgeIntervalMs: 3_600_000, bodyCacheBytes: 0,
    });
    await q.start();
  };
  const segmentFiles = () => readdirSync(join(tmp.path, 'segments')).filter((f) => f.endsWith('.seg')).sort();

  beforeEach(async () => {
    tmp = await makeTmpDir('spool-compaction-');
    await open();
  });
  afterEach(async () => {
    await q.close();
    await tmp.cleanup();
  });

  it('moves the few live bodies out of mostly dead segments, deletes those files, keeps every body intact', async () => {
    // One enqueue at a time: each group is one body, so segments fill in order (about 15 per segment).
    const mails: { id: string; body: Buffer }[] = [];
    for (let i = 0; i < 100; i++) {
      const req = request(i);
      await q.enqueue(req);
      mails.push({ id: req.id, body: req.body });
    }
    const before = segmentFiles();
    expect(before.length).toBeGreaterThanOrEqual(4);
    // Every 10th mail stays (a long-deferred mail, say); the rest is delivered or removed.
    const kept = mails.filter((_, i) => i % 10 === 0);
    for (const [i, m] of mails.entries()) if (i % 10 !== 0) await q.remove(m.id, 'test');

    const emptied = await q.compactSegments();
    const after = segmentFiles();
    expect(emptied).toBeGreaterThanOrEqual(3);
    // The sealed segments are gone; what is left is the current one (holding the copies).
    expect(after.length).toBeLessThan(before.length);
    expect(after.filter((f) => before.includes(f) && f !== before.at(-1))).toEqual([]);
    for (const m of kept) expect((await bodyOf(q, m.id)).equals(m.body)).toBe(true);

    // The moved bodies are where the metadata says, durably: a reopen reads them back whole.
    await q.close();
    await open();
    for (const m of kept) expect((await bodyOf(q, m.id)).equals(m.body)).toBe(true);
    expect((await q.stats()).byState.queued).toBe(kept.length);
    // Nothing left to do a second time.
    expect(await q.compactSegments()).toBe(0);
  });

  it('leaves a segment alone while more than a quarter of its bytes are live', async () => {
    const mails: string[] = [];
    for (let i = 0; i < 40; i++) {
      const req = request(i);
      await q.enqueue(req);
      mails.push(req.id);
    }
    // Half of everything stays live.
    for (const [i, id] of mails.entries()) if (i % 2 === 1) await q.remove(id, 'test');
    const before = segmentFiles();
    expect(await q.compactSegments()).toBe(0);
    expect(segmentFiles()).toEqual(before);
  });
});
