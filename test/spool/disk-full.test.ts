/**
 * A full disk, for real: the spool on a 4 MiB tmpfs. Enqueue must reject with SpoolFullError (the
 * SMTP 452 4.3.1 error) instead of acknowledging, leave no half-written body behind, keep the
 * process running, and succeed again once space returns (a filler file deleted, or finished mail
 * whose segments are reclaimed).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { QueueError, SpoolFullError } from '../../src/queue/errors.js';
import { newMailId } from '../../src/queue/model.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import { FRAME_HEADER_BYTES } from '../../src/queue/spool/segments.js';
import type { EnqueueRequest } from '../../src/queue/types.js';
import { makeTmpDir, type TmpDir } from '../helpers/tmp.js';

function request(size: number): EnqueueRequest {
  return {
    id: newMailId(), sender: 'a@full.example', recipients: [{ address: 'b@dest.example' }], body: Buffer.alloc(size, 'm'),
    priority: 0, notBefore: 0, client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } },
  };
}

function segmentBytes(dir: string): number {
  const segs = join(dir, 'segments');
  return readdirSync(segs).reduce((n, f) => n + statSync(join(segs, f)).size, 0);
}

/** Bytes available on the file system mounted at `mnt`, as df reports them. */
function availableBytes(mnt: string): number {
  return Number(execFileSync('df', ['-B1', '--output=avail', mnt]).toString().split('\n')[1]);
}

/** Enqueues until the spool refuses; returns the acknowledged ids and the first error. */
async function fillUp(q: SpoolQueue, size: number): Promise<{ ids: string[]; error: unknown }> {
  const ids: string[] = [];
  for (let i = 0; i < 1000; i++) {
    try {
      ids.push((await q.enqueue(request(size))).id);
    } catch (error) {
      return { ids, error };
    }
  }
  throw new Error('the disk never filled up');
}

/** A mail with 60 recipients and a 200-byte body: it fills LMDB, not the segments. */
function metadataHeavy(i: number): EnqueueRequest {
  const req = request(200);
  req.recipients = Array.from({ length: 60 }, (_, j) => ({ address: `user${i}-${j}@domain${j}.example` }));
  return req;
}

/**
 * With the disk nearly full (`filler` leaves 256 KiB), enqueues metadata-heavy mail with onDurable
 * until one is durable in its frame but its LMDB commit fails. Returns it and the mail indexed before.
 */
async function untilDurableButUnindexed(q: SpoolQueue, mnt: string, filler: string): Promise<{ kept: string; acked: string[] }> {
  await writeFile(filler, Buffer.alloc(Math.max(0, availableBytes(mnt) - 256 * 1024)));
  const acked: string[] = [];
  for (let i = 0; i < 2000; i++) {
    const req = metadataHeavy(i);
    let durable = false;
    try {
      await q.enqueue(req, { onDurable: () => { durable = true; } });
      acked.push(req.id);
    } catch (err) {
      expect(err).toBeInstanceOf(QueueError);
      if (durable) return { kept: req.id, acked };
    }
  }
  throw new Error('no mail was durable with its commit failing');
}

describe('spool on a full disk (4 MiB tmpfs)', () => {
  let tmp: TmpDir;
  let mnt: string;
  let q: SpoolQueue | undefined;

  beforeEach(async () => {
    tmp = await makeTmpDir('spool-full-');
    mnt = join(tmp.path, 'mnt');
    execFileSync('mkdir', ['-p', mnt]);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
  });

  afterEach(async () => {
    await q?.close().catch(() => undefined);
    q = undefined;
    execFileSync('umount', [mnt]);
    await tmp.cleanup();
  });

  it('rejects with SpoolFullError, leaves nothing half-written, recovers when space returns', async () => {
    const spool = join(mnt, 'spool');
    q = new SpoolQueue({ dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    const filler = join(mnt, 'filler');
    await writeFile(filler, Buffer.alloc(1024 * 1024));
    const { ids, error } = await fillUp(q, 150_000);
    expect(ids.length).toBeGreaterThan(0);
    expect(error).toBeInstanceOf(SpoolFullError);
    expect((error as QueueError).smtpCode).toBe(452);
    // No partial body: the segments hold exactly the acknowledged bodies, each in its frame.
    expect(segmentBytes(spool)).toBe(ids.length * (150_000 + FRAME_HEADER_BYTES));
    // Concurrent enqueues on a full disk all fail cleanly too.
    const burst = await Promise.allSettled(Array.from({ length: 10 }, () => q!.enqueue(request(150_000))));
    expect(burst.every((r) => r.status === 'rejected' && r.reason instanceof QueueError)).toBe(true);
    // Reads and operator actions still work on a full disk (they need no new space or little).
    expect((await q.get(ids[0]!))?.state).toBe('queued');
    // Space returns.
    await rm(filler);
    const again = await q.enqueue(request(150_000));
    expect(again.state).toBe('queued');
    await q.close();
    q = new SpoolQueue({ dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    for (const id of [...ids, again.id]) expect((await q.get(id))?.size).toBe(150_000);
    expect((await q.stats()).byState.queued).toBe(ids.length + 1);
  });

  it('reclaims the segments of finished mail so enqueue succeeds again', async () => {
    const spool = join(mnt, 'spool');
    q = new SpoolQueue({ dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger(), segmentBytes: 256 * 1024 });
    await q.start();
    const { ids, error } = await fillUp(q, 100_000);
    expect(error).toBeInstanceOf(QueueError);
    for (const id of ids) await q.remove(id, 'make room');
    const ok = await q.enqueue(request(100_000));
    expect(ok.state).toBe('queued');
    expect(segmentBytes(spool)).toBeLessThan(1024 * 1024);
  });

  it('survives the metadata store (LMDB) hitting the full disk', async () => {
    const spool = join(mnt, 'spool');
    q = new SpoolQueue({ dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    // Leave little room, then add metadata-heavy mail (many recipients, tiny bodies).
    const filler = join(mnt, 'filler');
    const free = availableBytes(mnt);
    await writeFile(filler, Buffer.alloc(Math.max(0, free - 256 * 1024)));
    const ids: string[] = [];
    let error: unknown;
    for (let i = 0; i < 2000 && !error; i++) {
      try {
        ids.push((await q.enqueue(metadataHeavy(i))).id);
      } catch (err) {
        error = err;
      }
    }
    // LMDB reports the short write as EIO; on a disk with no room that is a SpoolFullError.
    expect(error).toBeInstanceOf(SpoolFullError);
    expect(ids.length).toBeGreaterThan(0);
    await rm(filler);
    expect((await q.enqueue(request(200))).state).toBe('queued');
    await q.close();
    q = new SpoolQueue({ dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    for (const id of ids) expect((await q.get(id))?.recipients).toHaveLength(60);
  });

  it('a mail durable in its frame whose LMDB commit fails (onDurable, then ENOSPC) is kept: a later commit does not move the checkpoint past it, the next start indexes it', async () => {
    const spool = join(mnt, 'spool');
    // No retry during the test (a slow machine could otherwise index it before the restart).
    const open = () => new SpoolQueue({ dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, unindexedRetryMs: 600_000, logger: pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }) });
    const lines: string[] = [];
    q = open();
    await q.start();
    const filler = join(mnt, 'filler');
    // Metadata-heavy mail with tiny bodies: LMDB runs out of room while the segment still takes frames.
    const { kept, acked } = await untilDurableButUnindexed(q, mnt, filler);
    // The body cache holds only bodies of stored mail: the failed commit took its entry back.
    expect(q.bodyCache.has(kept)).toBe(false);
    expect(await q.get(kept)).toBeUndefined();
    // Room again; a new mail commits (and writes a checkpoint) before the kept one is tried again.
    await rm(filler);
    const later = await q.enqueue(request(200), { onDurable: () => undefined });
    expect(later.state).toBe('queued');
    expect(await q.get(kept), 'not tried again yet').toBeUndefined();
    await q.close();
    lines.length = 0;
    q = open();
    await q.start();
    expect(JSON.parse(lines.find((l) => l.includes('"spool opened"'))!)).toMatchObject({ replayedFromLog: 1 });
    for (const id of [...acked, kept, later.id]) expect((await q.get(id))?.state, id).toBe('queued');
    expect((await q.get(kept))?.recipients).toHaveLength(60);
  });

  it('a segment holding a frame whose commit failed is not reclaimed when its indexed bodies are all gone', async () => {
    const spool = join(mnt, 'spool');
    const lines: string[] = [];
    // No retry during the test: the mail stays durable-but-unindexed until the restart.
    const open = () => new SpoolQueue({ dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, segmentBytes: 64 * 1024, unindexedRetryMs: 600_000, logger: pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }) });
    q = open();
    await q.start();
    const filler = join(mnt, 'filler');
    const { kept, acked } = await untilDurableButUnindexed(q, mnt, filler);
    await rm(filler);
    const segDir = join(spool, 'segments');
    const keptSegment = readdirSync(segDir).sort().at(-1)!;
    // Seal that segment (a 64 KiB body fills it, the next append rolls), then finish every
    // indexed mail: its live-body count drops to 0, which reclaims a sealed segment.
    const big = await q.enqueue(request(64 * 1024));
    await q.enqueue(request(200));
    expect(readdirSync(segDir).sort().at(-1)).not.toBe(keptSegment);
    for (const id of [...acked, big.id]) await q.remove(id, 'make the segment dead');
    await q.compactSegments();
    expect(readdirSync(segDir)).toContain(keptSegment);
    await q.close();
    lines.length = 0;
    q = open();
    await q.start();
    expect(JSON.parse(lines.find((l) => l.includes('"spool opened"'))!)).toMatchObject({ replayedFromLog: 1 });
    const mail = await q.get(kept);
    expect(mail?.recipients).toHaveLength(60);
    const chunks: Buffer[] = [];
    for await (const c of await q.readBody(kept)) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks)).toEqual(Buffer.alloc(200, 'm'));
  });

  it('a mail durable in its frame whose LMDB commit failed is indexed by a later try once there is room, without a restart', async () => {
    const spool = join(mnt, 'spool');
    q = new SpoolQueue({ dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    const filler = join(mnt, 'filler');
    const { kept } = await untilDurableButUnindexed(q, mnt, filler);
    await rm(filler);
    const until = Date.now() + 5000;
    while (!(await q.get(kept)) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    expect((await q.get(kept))?.state).toBe('queued');
    expect((await q.stats()).byState.queued).toBe((await q.browse({}, { limit: 1000 })).items.length);
  });

  it('refuses new mail at the free-space floor (minFreeBytes), keeps that room for delivery and removals, accepts again once they free space', async () => {
    const spool = join(mnt, 'spool');
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });
    const opts = { dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger, segmentBytes: 256 * 1024, minFreeBytes: 1024 * 1024 };
    q = new SpoolQueue(opts);
    await q.start();
    const { ids, error } = await fillUp(q, 50_000);
    expect(ids.length).toBeGreaterThan(20);
    expect(error).toBeInstanceOf(SpoolFullError);
    expect((error as Error).message).toMatch(/Insufficient system storage/);
    await expect(q.enqueue(request(50_000))).rejects.toBeInstanceOf(SpoolFullError);
    // The operator hears of it once, not once per refused mail.
    const below = () => lines.filter((l) => l.includes('below spool.minFree'));
    expect(below()).toHaveLength(1);
    expect(JSON.parse(below()[0]!)).toMatchObject({ level: 40, minFreeBytes: 1024 * 1024 });
    // The floor was kept: the disk is not full, so every other transition can still commit.
    const free = availableBytes(mnt);
    expect(free).toBeGreaterThan(900 * 1024);
    const held = await q.hold(ids[0]!, 'operator');
    expect(held.state).toBe('held');
    const reserved = await q.reserveDue({ owner: 'test', limit: 5, leaseMs: 60_000 });
    expect(reserved.length).toBe(5);
    for (const m of reserved) {
      await q.recordAttempt(m.id, m.lease!.token, { outcomes: m.recipients.map((r) => ({ address: r.address, outcome: 'delivered' as const })) });
    }
    // Finished and removed mail gives its segments back; after the next measurement new mail is taken again.
    const done = new Set(reserved.map((m) => m.id));
    const rest = ids.filter((id) => !done.has(id));
    for (const id of rest.splice(0, rest.length - 3)) await q.remove(id, 'make room');
    await new Promise((r) => setTimeout(r, 300));
    const again = await q.enqueue(request(50_000));
    expect(lines.filter((l) => l.includes('above spool.minFree again'))).toHaveLength(1);
    await q.close();
    q = new SpoolQueue(opts);
    await q.start();
    for (const id of [...rest, again.id]) expect((await q.get(id))?.size).toBe(50_000);
  });

  it('a commit that fails after storing a new record shape leaves every later record readable after a restart', async () => {
    // Records share their structures (msgpackr, see SpoolQueue.start): the first record of a new
    // shape stores that shape inside its own transaction. Here that transaction fails (disk full).
    const spool = join(mnt, 'spool');
    const opts = { dir: spool, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() };
    q = new SpoolQueue(opts);
    await q.start();
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) ids.push((await q.enqueue(request(200))).id);
    const filler = join(mnt, 'filler');
    const free = availableBytes(mnt);
    await writeFile(filler, Buffer.alloc(free)).catch(() => undefined);
    // Held mail has a shape no record had before (holdReason). The group of 40 holds needs new pages.
    const reason = 'r'.repeat(400);
    const failed = await Promise.allSettled(ids.map((id) => q!.hold(id, reason)));
    expect(failed.every((r) => r.status === 'rejected' && r.reason instanceof QueueError)).toBe(true);
    await rm(filler);
    for (const id of ids) expect((await q.hold(id, reason)).state).toBe('held');
    await q.close();
    q = new SpoolQueue(opts);
    await q.start();
    for (const id of ids) expect(await q.get(id)).toMatchObject({ id, state: 'held', holdReason: reason, size: 200 });
  });

  it('enforces maxSize on live body bytes', async () => {
    q = new SpoolQueue({ dir: join(mnt, 'spool'), retainFinishedMs: 3_600_000, maxSize: 1024 * 1024, logger: silentLogger() });
    await q.start();
    await q.enqueue(request(600_000));
    await expect(q.enqueue(request(600_000))).rejects.toBeInstanceOf(SpoolFullError);
  });
});
