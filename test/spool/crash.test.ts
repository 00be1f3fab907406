/**
 * kill -9 crash safety of the spool: a child process enqueues from 20 concurrent writers and is
 * killed mid-stream, several times over the same directory. After each crash, every mail the child
 * had acknowledged must be present with a whole body, every stored body must be intact (each
 * carries its own SHA-256), and no mail may stay leased by the dead process.
 *
 * The child runs the compiled spool (plain node, no TS loader); beforeAll compiles just the
 * spool's module closure into dist/ with tsc.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { silentLogger } from '../../src/logger.js';
import { newMailId } from '../../src/queue/model.js';
import { FRAME_HEADER_BYTES, SegmentStore } from '../../src/queue/spool/segments.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { QueuedMail } from '../../src/queue/types.js';
import { makeTmpDir, withTmpDir, type TmpDir } from '../helpers/tmp.js';
import { bodyOf } from '../helpers/body.js';

const root = resolve(import.meta.dirname, '../..');
const built = join(root, 'dist/src/queue/spool/spool-queue.js');
const child = join(root, 'test/spool/fixtures/enqueue-child.mjs');

async function buildSpool(): Promise<void> {
  await promisify(execFile)(join(root, 'node_modules/.bin/tsc'), [
    '--rootDir', root, '--outDir', join(root, 'dist'), '--module', 'nodenext', '--moduleResolution', 'nodenext',
    '--target', 'es2022', '--strict', '--skipLibCheck', '--esModuleInterop', '--types', 'node', '--sourceMap',
    join(root, 'src/queue/spool/spool-queue.ts'),
  ], { cwd: root });
}

/** Starts the child and collects its acknowledgements ("ACK <id> <size>") as they come. */
function startChild(dir: string, env: Record<string, string>) {
  const p = spawn(process.execPath, [child, dir, built], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const run = { p, acked: new Map<string, number>(), stderr: '', onAck: () => {} };
  p.stderr.on('data', (d: Buffer) => { run.stderr += d.toString(); });
  createInterface({ input: p.stdout }).on('line', (line) => {
    const [tag, id, size] = line.split(' ');
    if (tag !== 'ACK') return;
    run.acked.set(id!, Number(size));
    run.onAck();
  });
  const exited = new Promise<[number | null, string | null]>((res) => p.on('exit', (c, sig) => res([c, sig])));
  return { run, exited };
}

/** Runs the child until it has acknowledged `acks` mails, then kill -9. Returns what it acknowledged. */
async function runAndKill(dir: string, acks: number, env: Record<string, string> = {}): Promise<Map<string, number>> {
  const c = startChild(dir, env);
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`child too slow: ${c.run.acked.size} acks; ${c.run.stderr}`)), 60_000);
    c.run.onAck = () => { if (c.run.acked.size >= acks) { clearTimeout(timer); res(); } };
    void c.exited.then(([code]) => { clearTimeout(timer); rej(new Error(`child exited early (${code}): ${c.run.stderr}`)); });
  });
  c.run.p.kill('SIGKILL');
  // Keep reading: acks printed before the kill landed still count as acknowledged.
  await c.exited;
  await new Promise((r) => setImmediate(r));
  return c.run.acked;
}

/** Runs the child until it kills itself (KILL_AT_DURABLE). Returns what it acknowledged. */
async function runUntilItDies(dir: string, env: Record<string, string>): Promise<Map<string, number>> {
  const c = startChild(dir, env);
  const [code, signal] = await c.exited;
  expect(signal, `child should have killed itself; exit ${code}: ${c.run.stderr}`).toBe('SIGKILL');
  await new Promise((r) => setImmediate(r));
  return c.run.acked;
}


function intact(body: Buffer): boolean {
  const nl = body.indexOf('\r\n');
  const m = /^X-Check: ([0-9a-f]{64})$/.exec(body.subarray(0, nl).toString());
  return !!m && createHash('sha256').update(body.subarray(nl + 2)).digest('hex') === m[1];
}

async function everyMail(q: SpoolQueue): Promise<QueuedMail[]> {
  const out: QueuedMail[] = [];
  let cursor: string | undefined;
  do {
    const page = await q.browse({}, { limit: 1000, ...(cursor ? { cursor } : {}) });
    out.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

describe('spool crash safety (kill -9)', () => {
  let tmp: TmpDir;

  beforeAll(async () => {
    tmp = await makeTmpDir('spool-crash-');
    await buildSpool();
    expect(existsSync(built)).toBe(true);
  }, 120_000);

  afterAll(async () => {
    await tmp?.cleanup();
  });

  it('loses nothing acknowledged and tears nothing, across repeated crashes', async () => {
    const all = new Map<string, number>();
    for (const [round, acks] of [[1, 400], [2, 250], [3, 300]] as const) {
      const acked = await runAndKill(tmp.path, acks, round === 2 ? { RESERVE: '1' } : {});
      for (const [id, size] of acked) all.set(id, size);
      const q = new SpoolQueue({ dir: tmp.path, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
      await q.start();
      try {
        for (const [id, size] of all) {
          const m = await q.get(id);
          expect(m, `acknowledged mail ${id} (round ${round})`).toBeDefined();
          expect(m!.size).toBe(size);
        }
        const mails = await everyMail(q);
        for (const m of mails) {
          const body = await bodyOf(q, m.id);
          expect(body.length, m.id).toBe(m.size);
          expect(intact(body), `body of ${m.id}`).toBe(true);
          // The dead process's leases were given back at start.
          expect(m.state).toBe('queued');
        }
        const stats = await q.stats();
        expect(stats.byState.queued).toBe(mails.length);
        expect(mails.length).toBeGreaterThanOrEqual(all.size);
      } finally {
        await q.close();
      }
    }
  }, 240_000);

  it('acknowledging at onDurable (before the LMDB commit, as the ingress answers 250) loses nothing across repeated crashes', async () => {
    await withTmpDir(async (dir) => {
      const all = new Map<string, number>();
      for (const acks of [300, 500]) {
        for (const [id, size] of await runAndKill(dir, acks, { DURABLE: '1' })) all.set(id, size);
        const q = new SpoolQueue({ dir, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: silentLogger() });
        await q.start();
        try {
          for (const [id, size] of all) {
            const m = await q.get(id);
            expect(m, `acknowledged mail ${id}`).toBeDefined();
            expect(m!.size).toBe(size);
            expect(intact(await bodyOf(q, id)), `body of ${id}`).toBe(true);
          }
        } finally {
          await q.close();
        }
      }
    });
  }, 240_000);

  it('indexes from its segment frame a mail killed between onDurable and its commit, and stops at a torn or corrupt frame', async () => {
    await withTmpDir(async (dir) => {
      const acked = await runUntilItDies(dir, { KILL_AT_DURABLE: '60' });
      expect(acked.size).toBeGreaterThanOrEqual(60);
      // What a crash in the middle of a later group's write could leave: a frame whose CRC does
      // not hold (a mail record and a body, but a torn page), and behind it a frame cut short.
      const segDir = join(dir, 'segments');
      const last = readdirSync(segDir).sort().at(-1)!;
      const record = Buffer.from(JSON.stringify({ v: 1, at: Date.now(), req: { id: newMailId(), sender: 'torn@crash.example', recipients: [{ address: 'x@torn.example' }], priority: 0, notBefore: 0, client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } } } }));
      const body = Buffer.from('Subject: never acknowledged\r\n\r\nbody\r\n');
      const header = Buffer.alloc(FRAME_HEADER_BYTES);
      header.write('SPH1', 0, 'latin1');
      header[4] = 1;
      header.writeUInt32LE(record.length, 8);
      header.writeUInt32LE(body.length, 12);
      header.writeUInt32LE(0xdeadbeef, 16);
      const cut = Buffer.from(header);
      cut.writeUInt32LE(100_000, 12);
      // Where the last whole frame ends, not the file's end: a preallocated segment has zeros behind its data.
      const frames = await new SegmentStore(dir, 512 * 1024).readFrames(Number(last.slice(0, 8)), 0);
      const dataEnd = frames.length ? frames.at(-1)!.body.off + frames.at(-1)!.body.len : 0;
      const fd = openSync(join(segDir, last), 'r+');
      writeSync(fd, Buffer.concat([header, record, body, cut, record, body]), 0, undefined, dataEnd);
      closeSync(fd);

      const lines: string[] = [];
      let mailsAtFirstStart = -1;
      const q = new SpoolQueue({ dir, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }) });
      await q.start();
      try {
        const opened = JSON.parse(lines.find((l) => l.includes('"spool opened"'))!) as { replayedFromLog: number; mails: number };
        // The group the child died in had its frames synced and no transaction: at least the
        // mail whose onDurable killed it came back from the log.
        expect(opened.replayedFromLog).toBeGreaterThanOrEqual(1);
        for (const [id, size] of acked) {
          const m = await q.get(id);
          expect(m, `acknowledged mail ${id}`).toBeDefined();
          expect(m!.size).toBe(size);
          expect(m!.state).toBe('queued');
          expect(intact(await bodyOf(q, id)), `body of ${id}`).toBe(true);
        }
        const mails = await everyMail(q);
        expect(mails.some((m) => m.sender === 'torn@crash.example')).toBe(false);
        expect(mails.length).toBe(opened.mails);
        mailsAtFirstStart = mails.length;
      } finally {
        await q.close();
      }
      // Indexed once: a second start replays nothing.
      lines.length = 0;
      const again = new SpoolQueue({ dir, retainFinishedMs: 3_600_000, maxSize: 1024 ** 3, logger: pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }) });
      await again.start();
      try {
        expect(JSON.parse(lines.find((l) => l.includes('"spool opened"'))!)).toMatchObject({ replayedFromLog: 0 });
        expect((await everyMail(again)).length).toBe(mailsAtFirstStart);
      } finally {
        await again.close();
      }
    });
  }, 120_000);

  it('refuses to open a directory another running process owns', async () => {
    const p = spawn(process.execPath, [child, tmp.path, built], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((r) => p.on('exit', r));
    try {
      await new Promise<void>((res, rej) => {
        p.stdout.on('data', (d: Buffer) => { if (d.toString().includes('READY')) res(); });
        p.on('exit', (c) => rej(new Error(`child exited (${c})`)));
      });
      const q = new SpoolQueue({ dir: tmp.path, retainFinishedMs: 1000, maxSize: 1024 ** 3, logger: silentLogger() });
      await expect(q.start()).rejects.toThrow(/locked by running process/);
    } finally {
      p.kill('SIGKILL');
      await exited;
    }
  });

  it('refuses a second owner of the directory', async () => {
    const q = new SpoolQueue({ dir: tmp.path, retainFinishedMs: 1000, maxSize: 1024 ** 3, logger: silentLogger() });
    await q.start();
    try {
      const second = new SpoolQueue({ dir: tmp.path, retainFinishedMs: 1000, maxSize: 1024 ** 3, logger: silentLogger() });
      await expect(second.start()).rejects.toThrow(/already open|locked/);
    } finally {
      await q.close();
    }
  });
});
