/**
 * A long churn of the embedded spool, to see whether it slows down or grows over time (LMDB's free
 * list, segments pinned by long-lived mail). Each round enqueues `--per-round` mails of mixed sizes
 * (300 B to 64 KB, 20 concurrent writers, fsync on), then reserves all due mail and records it
 * delivered, except a third that is deferred and made due again ("retry now") two rounds later, so
 * freed pages are scattered among live ones; then it purges the finished mail and compacts
 * segments (as the purge timer would, later). Per
 * round: enqueue rate, CPU per mail (process, every thread) of the round, meta.mdb and segment bytes.
 * The summary compares the first and the last five rounds.
 *
 * This bench is why small bodies are not stored in LMDB (measured 2026-12-03 with a prototype that
 * did): on a fresh spool that saved 15 % CPU per 5 KB mail, but under this churn LMDB's free list
 * grew with the file and the CPU per mail rose round after round, to 455 µs against 314 µs for
 * bodies in segments with mixed sizes (and 310–365 against 293–298 µs with bodies of 16 KB or less).
 *
 * Usage: npx tsc -p . && node dist/bench/spool-churn.js [--rounds 40] [--per-round 4000] [--sizes 300,2000,5120,...]
 */
import { readdirSync, statSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { silentLogger } from '../src/logger.js';
import { newMailId } from '../src/queue/model.js';
import { SpoolQueue } from '../src/queue/spool/spool-queue.js';
import type { EnqueueRequest } from '../src/queue/types.js';
import { percentileOf } from './lib.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '40' },
    'per-round': { type: 'string', default: '4000' },
    sizes: { type: 'string', default: '300,2000,5120,5120,9000,17000,40000,65536' },
  },
});
const ROUNDS = Number(args.rounds);
const PER_ROUND = Number(args['per-round']);
const SIZES = args.sizes.split(',').map(Number);
const bodies = new Map(SIZES.map((s) => [s, Buffer.alloc(s, 'x')]));

const dir = mkdtempSync(join(tmpdir(), 'spool-churn-'));
const q = new SpoolQueue({
  dir, retainFinishedMs: 0, purgeIntervalMs: 3_600_000, maxSize: 2 ** 36, logger: silentLogger(),
});
await q.start();

function request(i: number): EnqueueRequest {
  return {
    id: newMailId(), sender: `s${i % 50}@example.org`, recipients: [{ address: `u${i}@d${i % 7}.example` }],
    body: bodies.get(SIZES[i % SIZES.length]!)!, priority: 0, notBefore: 0, client: { address: '127.0.0.1' },
    classification: { priority: { source: 'default' } },
  };
}

const bytesIn = (d: string) => readdirSync(d).reduce((n, f) => n + statSync(join(d, f)).size, 0);
const rows: { round: number; enqueuePerSec: number; cpuUsPerMail: number; metaMB: number; segmentsMB: number; live: number }[] = [];
let seq = 0;
const deferredIn: string[][] = [];
try {
  for (let round = 0; round < ROUNDS; round++) {
    const c0 = process.cpuUsage();
    await Promise.all((deferredIn[round - 2] ?? []).map((id) => q.retryNow(id)));
    const t0 = performance.now();
    let left = PER_ROUND;
    await Promise.all(Array.from({ length: 20 }, async () => {
      while (left > 0) {
        left--;
        await q.enqueue(request(seq++));
      }
    }));
    const enqueueMs = performance.now() - t0;
    // Everything due (the new mail and the deferred made due again), in batches as the scheduler takes them.
    const deferred: string[] = [];
    deferredIn[round] = deferred;
    for (;;) {
      const got = await q.reserveDue({ owner: 'bench', limit: 200, leaseMs: 600_000, lowPriorityShare: 0 });
      if (!got.length) break;
      await Promise.all(got.map((m, i) => {
        const defer = i % 3 === 0;
        if (defer) deferred.push(m.id);
        return q.recordAttempt(m.id, m.lease!.token, {
          outcomes: m.recipients.map((r) => (defer
            ? { address: r.address, outcome: 'deferred' as const, reply: { code: 451, message: 'later' } }
            : { address: r.address, outcome: 'delivered' as const, reply: { code: 250, message: 'ok' } })),
          ...(defer ? { retryAt: Date.now() + 86_400_000 } : {}),
        });
      }));
    }
    // What the purge timer does: finished mail out, then the mostly dead segments compacted.
    await q.purgeFinished();
    await q.compactSegments();
    const c = process.cpuUsage(c0);
    const stats = await q.stats();
    rows.push({
      round,
      enqueuePerSec: Math.round(PER_ROUND / enqueueMs * 1000),
      cpuUsPerMail: Math.round((c.user + c.system) / PER_ROUND),
      metaMB: +(statSync(join(dir, 'meta.mdb')).size / 2 ** 20).toFixed(1),
      segmentsMB: +(bytesIn(join(dir, 'segments')) / 2 ** 20).toFixed(1),
      live: stats.byState.queued + stats.byState.active,
    });
    console.error(JSON.stringify(rows[rows.length - 1]));
  }
  const med = (xs: number[]) => percentileOf(xs, 50);
  const summary = (rs: typeof rows) => ({ enqueuePerSec: med(rs.map((r) => r.enqueuePerSec)), cpuUsPerMail: med(rs.map((r) => r.cpuUsPerMail)), metaMB: rs[rs.length - 1]!.metaMB });
  console.log(JSON.stringify({
    bench: 'spool-churn', rounds: ROUNDS, perRound: PER_ROUND, mails: seq, sizes: SIZES,
    first5: summary(rows.slice(0, 5)), last5: summary(rows.slice(-5)),
  }));
} finally {
  await q.close();
  rmSync(dir, { recursive: true, force: true });
}
