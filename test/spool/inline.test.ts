/**
 * Small bodies stored in LMDB with their mail (spool.inlineMaxBody / spool.inlineMaxTotal): which
 * bodies go there and which to segment files, that they read back byte for byte (also after a
 * reopen, with no body cache), that the live total is capped and finished mail gives its room
 * back, and that a long churn of enqueues and removals does not make meta.mdb grow without bound.
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { MailNotFoundError } from '../../src/queue/errors.js';
import { newMailId } from '../../src/queue/model.js';
import { SpoolQueue, type SpoolQueueOptions } from '../../src/queue/spool/spool-queue.js';
import type { EnqueueRequest, Queue } from '../../src/queue/types.js';
import { makeTmpDir, type TmpDir } from '../helpers/tmp.js';

let seq = 0;
function request(size: number): EnqueueRequest {
  // Content that differs per mail, so a body read from the wrong place cannot pass.
  const head = Buffer.from(`Subject: mail ${++seq}\r\n\r\n`);
  const body = Buffer.alloc(size, `${seq} `);
  head.copy(body);
  return {
    id: newMailId(), sender: 'a@inline.example', recipients: [{ address: `u${seq}@dest.example` }], body,
    priority: 0, notBefore: 0, client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } },
  };
}

async function bodyOf(q: Queue, id: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await q.readBody(id)) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks);
}

describe('spool: small bodies in LMDB', () => {
  let tmp: TmpDir;
  let q: SpoolQueue | undefined;
  const segmentBytes = () => {
    const dir = join(tmp.path, 'segments');
    return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
  };
  const open = async (o: Partial<SpoolQueueOptions>) => {
    // No body cache: every read comes from LMDB or a segment.
    q = new SpoolQueue({ dir: tmp.path, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger(), bodyCacheBytes: 0, ...o });
    await q.start();
    return q;
  };

  beforeEach(async () => {
    tmp = await makeTmpDir('spool-inline-');
  });
  afterEach(async () => {
    await q?.close();
    q = undefined;
    await tmp.cleanup();
  });

  it('keeps bodies up to inlineMaxBody in LMDB and larger ones in segments, byte for byte across a reopen', async () => {
    const opts = { inlineMaxBody: 8192 };
    let queue = await open(opts);
    const small = [request(200), request(5120), request(8192)];
    const large = [request(8193), request(100_000)];
    await Promise.all([...small, ...large].map((r) => queue.enqueue(r)));
    expect(segmentBytes()).toBe(8193 + 100_000);
    for (const r of [...small, ...large]) expect((await bodyOf(queue, r.id)).equals(r.body)).toBe(true);
    await queue.close();
    queue = await open(opts);
    for (const r of [...small, ...large]) {
      expect((await queue.get(r.id))?.size).toBe(r.body.length);
      expect((await bodyOf(queue, r.id)).equals(r.body)).toBe(true);
    }
    // Finished: the body is gone with the transition, from LMDB like from a segment.
    await queue.remove(small[1]!.id, 'test');
    await expect(queue.readBody(small[1]!.id)).rejects.toBeInstanceOf(MailNotFoundError);
  });

  it('sends bodies to segments once the live inline total reaches inlineMaxTotal, and takes them inline again when mail finishes', async () => {
    const queue = await open({ inlineMaxBody: 65_536, inlineMaxTotal: 20_000 });
    const first = [];
    // One at a time: each group sees the total the previous one left.
    for (let i = 0; i < 4; i++) first.push(await queue.enqueue(request(5000)));
    expect(segmentBytes()).toBe(0);
    const over = await queue.enqueue(request(5000));
    expect(segmentBytes()).toBe(5000);
    await queue.remove(first[0]!.id);
    await queue.remove(first[1]!.id);
    const again = request(5000);
    await queue.enqueue(again);
    expect(segmentBytes()).toBe(5000);
    expect((await bodyOf(queue, again.id)).equals(again.body)).toBe(true);
    expect((await bodyOf(queue, over.id)).length).toBe(5000);
  });

  it('stores every body in segments with inlineMaxBody 0', async () => {
    const queue = await open({ inlineMaxBody: 0 });
    await queue.enqueue(request(300));
    expect(segmentBytes()).toBe(300);
  });

  it('reuses LMDB pages through a long churn of mixed sizes: meta.mdb stays bounded', async () => {
    const cap = 2 * 1024 * 1024;
    // Finished mail is purged every round, so what stays in the file is the live mail only.
    const queue = await open({ inlineMaxBody: 65_536, inlineMaxTotal: cap, retainFinishedMs: 0, purgeIntervalMs: 3_600_000 });
    const sizes = [300, 2_000, 5_120, 9_000, 17_000, 40_000, 65_536];
    const metaBytes = () => statSync(join(tmp.path, 'meta.mdb')).size;
    let through = 0;
    let afterWarmup = 0;
    // Each round fills the cap, then removes a random two thirds (the rest live on into the next
    // rounds), so freed pages are scattered runs of every length.
    let live: string[] = [];
    for (let round = 0; round < 80; round++) {
      const reqs: EnqueueRequest[] = [];
      for (let bytes = 0; bytes < cap;) {
        const r = request(sizes[(round * 7 + reqs.length * 3) % sizes.length]!);
        bytes += r.body.length;
        reqs.push(r);
      }
      await Promise.all(reqs.map((r) => queue.enqueue(r)));
      through += reqs.reduce((n, r) => n + r.body.length, 0);
      live.push(...reqs.map((r) => r.id));
      const keep: string[] = [];
      await Promise.all(live.map((id, i) => ((i * 7919 + round) % 3 === 0 ? keep.push(id) : queue.remove(id))));
      live = keep;
      await queue.purgeFinished();
      if (round === 4) afterWarmup = metaBytes();
    }
    const end = metaBytes();
    // 160 MB of bodies went through (measured: the file stops at 3.3 MB by round 30 and stays
    // there); it holds about the cap's worth of pages plus the metadata.
    expect(through).toBeGreaterThan(80 * cap);
    expect(end).toBeLessThan(2.5 * cap);
    expect(end).toBeLessThan(afterWarmup * 1.2);
    for (const id of live.slice(0, 50)) expect((await bodyOf(queue, id)).length).toBe((await queue.get(id))!.size);
  }, 60_000);
});
