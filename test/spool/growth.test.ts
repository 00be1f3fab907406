/**
 * Browse must not pin LMDB read snapshots: a page stops reading its index ranges early, and an
 * unclosed range would keep LMDB from reusing freed pages, so the metadata file (and the mapped
 * RSS) would grow with every write afterwards.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { newMailId } from '../../src/queue/model.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { EnqueueRequest } from '../../src/queue/types.js';
import { makeTmpDir, type TmpDir } from '../helpers/tmp.js';

function request(i: number): EnqueueRequest {
  return {
    id: newMailId(), sender: `s${i % 5}@grow.example`, recipients: [{ address: `r${i}@d${i % 3}.example` }], body: Buffer.from(`mail ${i}`),
    priority: i % 3, notBefore: 0, client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } },
  };
}

describe('spool metadata file stays bounded under churn', () => {
  let tmp: TmpDir;
  let q: SpoolQueue;

  beforeEach(async () => {
    tmp = await makeTmpDir('spool-growth-');
    q = new SpoolQueue({ dir: tmp.path, retainFinishedMs: 0, maxSize: 1024 ** 3, logger: silentLogger(), purgeIntervalMs: 3_600_000 });
    await q.start();
  });

  afterEach(async () => {
    await q.close();
    await tmp.cleanup();
  });

  it('reuses freed pages after paged browses', async () => {
    for (let i = 0; i < 300; i++) await q.enqueue(request(i));
    // Short pages over several merged ranges: every one stops early.
    for (const sort of ['received', 'priority', 'nextAttempt'] as const) {
      await q.browse({}, { sort, limit: 5 });
      await q.browse({ domain: 'd1.example' }, { sort, limit: 5 });
    }
    const file = join(tmp.path, 'meta.mdb');
    const before = statSync(file).size;
    for (let i = 0; i < 400; i++) {
      const m = await q.enqueue(request(i));
      await q.setPriority(m.id, 5);
      await q.remove(m.id);
    }
    await q.purgeFinished();
    // 1200 small commits: with pinned snapshots this grows by megabytes; with page reuse, barely.
    expect(statSync(file).size - before).toBeLessThan(4 * 1024 * 1024);
  });
});
