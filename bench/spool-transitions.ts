/**
 * CPU per mail of the spool's own transitions, without SMTP: enqueue (20 concurrent writers),
 * reserveDue (batches of 200, as the scheduler asks) and recordAttempt (delivered), on a fresh spool
 * in a temp dir, fsync on. Process CPU (user + system, every thread: LMDB's writer, libuv's pool)
 * per mail for each phase, and its wall time. CPU per mail is what limits a 2-core machine that the
 * load generator and the sink share (see compare.ts), and it is steadier than throughput here.
 *
 * Usage: npx tsc -p . && node dist/bench/spool-transitions.js [--mails 20000] [--size 5000]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { silentLogger } from '../src/logger.js';
import { newMailId } from '../src/queue/model.js';
import { SpoolQueue } from '../src/queue/spool/spool-queue.js';
import type { QueuedMail } from '../src/queue/types.js';

const { values: args } = parseArgs({ options: { mails: { type: 'string', default: '20000' }, size: { type: 'string', default: '5000' } } });
const N = Number(args.mails);
const body = Buffer.alloc(Number(args.size), 'x');

async function phase<T>(run: () => Promise<T>): Promise<{ result: T; cpuUsPerMail: number; wallMs: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await run();
  const c = process.cpuUsage(c0);
  return { result, cpuUsPerMail: Math.round((c.user + c.system) / N), wallMs: Math.round(performance.now() - t0) };
}

const dir = mkdtempSync(join(tmpdir(), 'spool-transitions-'));
const q = new SpoolQueue({ dir, retainFinishedMs: 3_600_000, maxSize: 2 ** 33, logger: silentLogger() });
await q.start();
try {
  const enqueue = await phase(async () => {
    let next = 0;
    const writer = async () => {
      while (next < N) {
        const i = next++;
        await q.enqueue({
          id: newMailId(), sender: `s${i % 50}@example.org`, recipients: [{ address: `u${i}@d${i % 7}.example` }], body,
          priority: 0, notBefore: 0, receivedAt: Date.now(),
        } as Parameters<SpoolQueue['enqueue']>[0]);
      }
    };
    await Promise.all(Array.from({ length: 20 }, writer));
  });
  const reserve = await phase(async () => {
    const out: QueuedMail[] = [];
    for (;;) {
      const got = await q.reserveDue({ owner: 'bench', limit: 200, leaseMs: 600_000, lowPriorityShare: 0 });
      if (!got.length) return out;
      out.push(...got);
    }
  });
  const attempt = await phase(() => Promise.all(reserve.result.map((m) => q.recordAttempt(m.id, m.lease!.token, {
    outcomes: m.recipients.map((r) => ({ address: r.address, outcome: 'delivered' as const, reply: { code: 250, message: 'ok' } })),
  }))));
  if (reserve.result.length !== N || attempt.result.length !== N) throw new Error(`reserved ${reserve.result.length}, recorded ${attempt.result.length} of ${N}`);
  const row = (p: { cpuUsPerMail: number; wallMs: number }) => ({ cpuUsPerMail: p.cpuUsPerMail, wallMs: p.wallMs });
  console.log(JSON.stringify({ bench: 'spool-transitions', mails: N, sizeBytes: body.length, enqueue: row(enqueue), reserve: row(reserve), attempt: row(attempt) }));
} finally {
  await q.close();
  rmSync(dir, { recursive: true, force: true });
}
