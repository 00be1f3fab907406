/**
 * Finished mail: its body goes at once (segment files are deleted when no live body is left in
 * them), its metadata stays retainFinishedMs and is then purged with a 'purged' event.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { MailNotFoundError } from '../../src/queue/errors.js';
import { newMailId } from '../../src/queue/model.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { EnqueueRequest, QueuedMail, QueueEvent } from '../../src/queue/types.js';
import { makeTmpDir, type TmpDir } from '../helpers/tmp.js';

function request(): EnqueueRequest {
  return {
    id: newMailId(), sender: 'a@ret.example', recipients: [{ address: 'b@dest.example' }], body: Buffer.alloc(50_000, 'r'),
    priority: 0, notBefore: 0, client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } },
  };
}

async function until(what: string, probe: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('spool retention of finished mail', () => {
  let tmp: TmpDir;
  let q: SpoolQueue;

  beforeEach(async () => {
    tmp = await makeTmpDir('spool-retention-');
    q = new SpoolQueue({
      dir: tmp.path, retainFinishedMs: 300, maxSize: 1024 ** 3, logger: silentLogger(), segmentBytes: 60_000, purgeIntervalMs: 50,
    });
    await q.start();
  });

  afterEach(async () => {
    await q.close();
    await tmp.cleanup();
  });

  it('drops the body at once, reclaims segments, purges metadata after retention', async () => {
    const events: QueueEvent[] = [];
    q.subscribe((e) => events.push(e));
    const mails: QueuedMail[] = [];
    for (let i = 0; i < 6; i++) mails.push(await q.enqueue(request()));
    const segs = join(tmp.path, 'segments');
    const before = readdirSync(segs).length;
    expect(before).toBeGreaterThanOrEqual(3);
    const leased = await q.reserveDue({ owner: 'w', limit: 10, leaseMs: 60_000 });
    for (const m of leased) {
      await q.recordAttempt(m.id, m.lease!.token, { outcomes: [{ address: 'b@dest.example', outcome: 'delivered' }] });
    }
    for (const m of mails) {
      expect((await q.get(m.id))?.state).toBe('delivered');
      await expect(q.readBody(m.id)).rejects.toBeInstanceOf(MailNotFoundError);
    }
    // Only the segment being written to is left.
    expect(readdirSync(segs).length).toBe(1);
    const stats = await q.stats();
    expect(stats.byState.delivered).toBe(6);
    // A change is visible to readers as soon as it commits; its events follow once the commit
    // has been reported back, so wait for the events, not for the records to be gone.
    const purged = () => events.filter((e) => e.type === 'purged').map((e) => e.id).sort();
    await until('purge events', async () => purged().length >= mails.length);
    expect(purged()).toEqual(mails.map((m) => m.id).sort());
    for (const m of mails) expect(await q.get(m.id)).toBeUndefined();
    expect((await q.stats()).byState.delivered).toBe(0);
    expect((await q.browse({ state: 'delivered' })).items).toEqual([]);
  });

  it('keeps live mail pinned in its segment', async () => {
    const keep = await q.enqueue(request());
    const gone = await q.enqueue(request());
    await q.enqueue(request());
    await q.remove(gone.id);
    const body = await q.readBody(keep.id);
    let n = 0;
    for await (const c of body) n += (c as Buffer).length;
    expect(n).toBe(50_000);
  });
});
