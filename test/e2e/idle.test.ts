/**
 * An idle server sleeps: no timer wakes it many times a second (the built server as a child
 * process, default log batching). Counted from /proc: the voluntary context switches of each of
 * its threads, i.e. how often each one went to sleep after having been woken.
 * Before: the log's flush interval (every 20 ms, each handing an empty write to libuv's pool) and
 * prom-client's event-loop lag sampling (every 10 ms) woke it about 160 times a second, and the
 * pool's threads 80 more.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerProcess } from '../helpers/server-process.js';

let dir: string;
let server: ServerProcess;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spoolhouse-idle-'));
  server = await startServer({
    config: {
      dir,
      overlay: {
        smtp: { listen: ['127.0.0.1:0'] },
        spool: { dir: join(dir, 'spool') },
        admin: { listen: '127.0.0.1:0' },
        log: { level: 'info', pretty: false },
      },
    },
  });
});
afterAll(async () => {
  await server?.kill9();
  rmSync(dir, { recursive: true, force: true });
});

/** Voluntary context switches per thread id. */
function switches(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const m = /^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
      if (m) out.set(tid, Number(m[1]));
    } catch {
      // a thread that ended meanwhile
    }
  }
  return out;
}

describe('an idle server', () => {
  it('wakes its main thread fewer than 30 times a second and its other threads hardly at all', async () => {
    const pid = server.child.pid!;
    await new Promise((r) => setTimeout(r, 1500)); // start-up's own work settles
    const before = switches(pid);
    const seconds = 3;
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const after = switches(pid);
    const rate = (tid: string) => ((after.get(tid) ?? 0) - (before.get(tid) ?? 0)) / seconds;
    const main = rate(String(pid));
    const others = [...after.keys()].filter((t) => t !== String(pid)).reduce((sum, t) => sum + rate(t), 0);
    expect(main).toBeLessThan(30);
    expect(others).toBeLessThan(10);
  });
});
