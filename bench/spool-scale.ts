/**
 * Scale benchmark of the embedded spool.
 *
 *   npx tsc -p . && node dist/bench/spool-scale.js --count 1000000 --dir /tmp/spool-bench
 *
 * 1. Fills `count` mails (20 recipient domains, 5000 senders, 4 priorities, ~5% held, ~20% deferred
 *    into the future, received over the last 3 days, small bodies) through the public enqueue API,
 *    `--in-flight` at a time (default: `smtp.maxConnections` of config/default.json, 500, the most
 *    that SMTP can have in flight at once; 20 is what 20 SMTP sessions give the spool; 2000, the
 *    default before 2026-12-05, is a bulk load that SMTP cannot make).
 * 2. Closes, then measures reopen (recovery) time and RSS.
 * 3. Lets a fresh process open the full spool, browse, read stats and reserve, and reports its RSS
 *    (what a restarted server holds). Then lets a child process open the spool, lease 1000 mails
 *    and get killed with SIGKILL, and measures recovery after that crash (leases given back).
 * 4. Measures filtered browse pages (p50/p99 per filter and sort, first page and a cursor page),
 *    stats(), and reserveDue.
 * 5. Measures durable enqueue throughput with 1 and 20 concurrent writers, 5 KB and 100 KB bodies.
 * Prints one JSON summary on stdout (progress on stderr). --keep keeps the directory.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { loadConfig } from '../src/config/load.js';
import { silentLogger } from '../src/logger.js';
import { newMailId } from '../src/queue/model.js';
import { SpoolQueue } from '../src/queue/spool/spool-queue.js';
import type { BrowseFilter, BrowseOptions, EnqueueRequest } from '../src/queue/types.js';
import { percentileOf, runBench } from './lib.js';

interface Args { count: number; dir?: string; keep: boolean; seconds: number; inFlight: number }

function parseArgs(argv: string[]): Args {
  const a: Args = { count: 100_000, keep: false, seconds: 3, inFlight: loadConfig(undefined, undefined, {}).config.smtp.maxConnections };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (argv[i] === '--count') { a.count = Number(v); i++; }
    else if (argv[i] === '--dir') { a.dir = v; i++; }
    else if (argv[i] === '--seconds') { a.seconds = Number(v); i++; }
    else if (argv[i] === '--in-flight') { a.inFlight = Number(v); i++; }
    else if (argv[i] === '--keep') a.keep = true;
  }
  return a;
}

const DOMAINS = Array.from({ length: 20 }, (_, i) => `dest${i}.example`);
const HOUR = 3_600_000;
let rssPeak = 0;

function rssMb(): number {
  const r = process.memoryUsage().rss / 2 ** 20;
  rssPeak = Math.max(rssPeak, r);
  return Math.round(r);
}

/** RSS split into anonymous (heap, buffers) and file-backed (LMDB's read-only map, page cache) parts. */
function rssDetail(): { rssMb: number; anonMb: number; fileMb: number; heapUsedMb: number } {
  let anon = 0;
  let file = 0;
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    anon = Number(/RssAnon:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
    file = Number(/RssFile:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
  } catch {
    // Not Linux: only the totals.
  }
  return { rssMb: rssMb(), anonMb: Math.round(anon), fileMb: Math.round(file), heapUsedMb: Math.round(process.memoryUsage().heapUsed / 2 ** 20) };
}

/** The biggest resident mappings (from /proc/self/smaps), to tell the LMDB map from the heap. */
function largestMappings(n: number): string[] {
  try {
    const rows: [number, string][] = [];
    let cur = '';
    for (const l of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
      if (/^[0-9a-f]+-[0-9a-f]+ /.test(l)) cur = l.replace(/\s+/g, ' ');
      else if (l.startsWith('Rss:')) rows.push([Number(l.split(/\s+/)[1]), cur]);
    }
    return rows.sort((a, b) => b[0] - a[0]).slice(0, n).map(([kb, m]) => `${Math.round(kb / 1024)} MB ${m}`);
  } catch {
    return [];
  }
}

function log(msg: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** A deterministic-looking but varied mail: domain skew (a few big destinations), senders, priorities. */
function fillRequest(i: number, now: number): EnqueueRequest {
  const r = (i * 2654435761) >>> 0;
  const domain = DOMAINS[Math.min(19, Math.floor(Math.abs(Math.log(1 - (r % 1000) / 1000.5)) * 5))]!;
  const deferred = r % 5 === 0;
  const recipients = [{ address: `user${r % 50_000}@${domain}` }];
  if (r % 17 === 0) recipients.push({ address: `other${r % 977}@${DOMAINS[r % 20]}` });
  return {
    id: newMailId(now - HOUR * 72 + Math.floor((i / 1_000_000) * HOUR * 72)),
    sender: `sender${r % 5000}@source${r % 7}.example`,
    recipients,
    body: Buffer.from(`Subject: bench ${i}\r\nMessage-ID: <b${i}@bench>\r\n\r\n${'x'.repeat(200 + (r % 300))}\r\n`),
    priority: r % 10 === 0 ? 3 : r % 4 === 0 ? 2 : r % 3 === 0 ? 0 : 1,
    notBefore: deferred ? now + (r % 48) * HOUR : now - 72 * HOUR + (i % 1000) * 1000,
    ...(r % 20 === 7 ? { hold: { reason: 'bench hold' } } : {}),
    client: { address: '192.0.2.1', helo: 'bench' },
    classification: { priority: { source: 'default' } },
    subject: `bench ${i}`,
    messageId: `<b${i}@bench>`,
    receivedAt: now - HOUR * 72 + Math.floor((i / 1_000_000) * HOUR * 72),
  };
}

async function open(dir: string, verbose = false): Promise<{ q: SpoolQueue; ms: number }> {
  // Verbose: the spool's own "spool opened" line (with its phase timings) goes to stderr.
  const logger = verbose ? pino({ level: 'info' }, pino.destination(2)) : silentLogger();
  const q = new SpoolQueue({ dir, retainFinishedMs: 7 * 24 * HOUR, maxSize: 64 * 2 ** 30, logger });
  const t0 = performance.now();
  await q.start();
  return { q, ms: Math.round(performance.now() - t0) };
}

async function fill(q: SpoolQueue, count: number, inFlight: number): Promise<{ seconds: number; perSecond: number }> {
  const now = Date.now();
  const t0 = performance.now();
  let next = 0;
  async function worker(): Promise<void> {
    while (next < count) {
      const i = next++;
      // As the ingress enqueues: with onDurable, so each frame carries its record (the write-ahead log).
      await q.enqueue(fillRequest(i, now), { onDurable: () => undefined });
      if (i % 100_000 === 0 && i) log(`filled ${i} (rss ${JSON.stringify(rssDetail())})`);
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker));
  log(`filled ${count} (rss ${JSON.stringify(rssDetail())})`);
  const seconds = (performance.now() - t0) / 1000;
  return { seconds: Math.round(seconds * 10) / 10, perSecond: Math.round(count / seconds) };
}


async function timeIt(fn: () => Promise<unknown>, runs: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    out.push(performance.now() - t0);
  }
  return out;
}

async function browseBench(q: SpoolQueue): Promise<Record<string, unknown>> {
  const cases: [string, BrowseFilter, BrowseOptions][] = [
    ['all by received desc', {}, { sort: 'received', order: 'desc' }],
    ['queued by received', { state: 'queued' }, { sort: 'received' }],
    ['held by received desc', { state: 'held' }, { sort: 'received', order: 'desc' }],
    ['queued by priority desc', { state: 'queued' }, { sort: 'priority', order: 'desc' }],
    ['queued by nextAttempt', { state: 'queued' }, { sort: 'nextAttempt' }],
    ['domain (big) by received', { domain: 'dest0.example' }, { sort: 'received' }],
    ['domain (small) + queued', { domain: 'dest15.example', state: 'queued' }, { sort: 'received', order: 'desc' }],
    ['domain by nextAttempt', { domain: 'dest3.example' }, { sort: 'nextAttempt' }],
    ['sender', { sender: 'sender42@source0.example' }, { sort: 'received' }],
    ['sender by priority', { sender: 'sender42@source0.example' }, { sort: 'priority', order: 'desc' }],
    ['recipient', { recipient: 'user0@dest0.example' }, {}],
    ['priority 3', { priority: 3 }, { sort: 'received', order: 'desc' }],
    ['priority 0 queued by nextAttempt', { priority: 0, state: 'queued' }, { sort: 'nextAttempt' }],
    ['since/until window', { since: Date.now() - 30 * HOUR, until: Date.now() - 29 * HOUR }, {}],
    ['q subject (post-filter)', { q: 'bench 99999' }, {}],
  ];
  const results: Record<string, unknown> = {};
  const all: number[] = [];
  for (const [name, filter, opts] of cases) {
    const first = await q.browse(filter, { ...opts, limit: 50 });
    const firstTimes = await timeIt(() => q.browse(filter, { ...opts, limit: 50 }), 15);
    const cursorTimes = first.nextCursor ? await timeIt(() => q.browse(filter, { ...opts, limit: 50, cursor: first.nextCursor! }), 15) : [];
    all.push(...firstTimes, ...cursorTimes);
    results[name] = {
      items: first.items.length, total: first.total,
      p50: percentileOf(firstTimes, 50), p99: percentileOf(firstTimes, 99),
      ...(cursorTimes.length ? { cursorP50: percentileOf(cursorTimes, 50), cursorP99: percentileOf(cursorTimes, 99) } : {}),
    };
  }
  return { overall: { p50: percentileOf(all, 50), p99: percentileOf(all, 99), max: percentileOf(all, 100) }, cases: results };
}

async function throughput(q: SpoolQueue, writers: number, size: number, seconds: number): Promise<number> {
  const body = Buffer.alloc(size, 'b');
  const deadline = performance.now() + seconds * 1000;
  let done = 0;
  const ids: string[] = [];
  async function writer(n: number): Promise<void> {
    while (performance.now() < deadline) {
      const m = await q.enqueue({
        id: newMailId(), sender: `tp${n}@bench.example`, recipients: [{ address: `r${n}@tp.example` }], body,
        priority: 1, notBefore: Date.now() + 1000 * HOUR, client: { address: '192.0.2.2' }, classification: { priority: { source: 'default' } },
      });
      ids.push(m.id);
      done++;
    }
  }
  const t0 = performance.now();
  await Promise.all(Array.from({ length: writers }, (_, n) => writer(n)));
  const rate = Math.round(done / ((performance.now() - t0) / 1000));
  // Remove them again so the spool stays at `count` and bodies are reclaimed.
  for (const id of ids) await q.remove(id, 'bench cleanup');
  return rate;
}

/**
 * A child process that opens the spool in `dir` (as `q`, started; `openMs` is how long that took)
 * and then runs `body`, an ES module body with `newMailId` and `readFileSync` at hand.
 */
function spoolChild(dir: string, body: string): ChildProcessByStdio<null, Readable, null> {
  const here = dirname(fileURLToPath(import.meta.url));
  const code = `
    const { SpoolQueue } = await import(${JSON.stringify(resolve(here, '../src/queue/spool/spool-queue.js'))});
    const { newMailId } = await import(${JSON.stringify(resolve(here, '../src/queue/model.js'))});
    const { pino } = await import('pino');
    const { readFileSync } = await import('node:fs');
    const t0 = performance.now();
    const q = new SpoolQueue({ dir: ${JSON.stringify(dir)}, retainFinishedMs: 1e9, maxSize: 64 * 2 ** 30, logger: pino({ level: 'silent' }) });
    await q.start();
    const openMs = performance.now() - t0;
    ${body}`;
  return spawn(process.execPath, ['--input-type=module', '-e', code], { cwd: resolve(here, '../..'), stdio: ['ignore', 'pipe', 'inherit'] });
}

/**
 * What a server restarted on the full spool holds in memory: a fresh process opens it, reads the
 * stats, browses a few pages and reserves (and hands back) 5 × 50 due mails, then reports its RSS,
 * split as rssDetail() does (this process's own RSS carries everything the fill left behind).
 */
async function freshProcessMemory(dir: string): Promise<Record<string, number>> {
  const child = spoolChild(dir, `
    await q.stats();
    for (const [f, o] of [[{}, { sort: 'received', order: 'desc' }], [{ state: 'queued' }, { sort: 'priority', order: 'desc' }],
      [{ domain: 'dest0.example' }, { sort: 'received' }], [{ sender: 'sender42@source0.example' }, {}]]) await q.browse(f, { ...o, limit: 50 });
    for (let i = 0; i < 5; i++) {
      const got = await q.reserveDue({ owner: 'fresh', limit: 50, leaseMs: 60000 });
      await Promise.all(got.map((m) => q.releaseLease(m.id, m.lease.token)));
    }
    const status = readFileSync('/proc/self/status', 'utf8');
    const kb = (k) => parseInt(status.split(String.fromCharCode(10)).find((l) => l.startsWith(k + ':'))?.slice(k.length + 1) ?? '0', 10);
    process.stdout.write(JSON.stringify({ openMs: Math.round(openMs), rssMb: Math.round(kb('VmRSS') / 1024), anonMb: Math.round(kb('RssAnon') / 1024),
      fileMb: Math.round(kb('RssFile') / 1024), peakMb: Math.round(kb('VmHWM') / 1024), heapUsedMb: Math.round(process.memoryUsage().heapUsed / 2 ** 20) }));
    await q.close();`);
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const exitCode = await new Promise<number | null>((r) => child.on('exit', r));
  if (exitCode !== 0) throw new Error(`fresh-process child exited with ${exitCode}`);
  return JSON.parse(out) as Record<string, number>;
}

/** A child opens the spool, leases 1000 mails and is killed with SIGKILL mid-write. */
async function crashChild(dir: string): Promise<void> {
  const child = spoolChild(dir, `
    await q.reserveDue({ owner: 'doomed', limit: 1000, leaseMs: 3600000 });
    process.stdout.write('LEASED\\n');
    for (let i = 0; ; i++) {
      await Promise.all(Array.from({ length: 20 }, () => q.enqueue({ id: newMailId(), sender: 'c@x', recipients: [{ address: 'd@dest1.example' }],
        body: Buffer.alloc(5000, 'c'), priority: 1, notBefore: 0, client: { address: '1' }, classification: { priority: { source: 'default' } } })));
      if (i === 5) process.stdout.write('WRITING\\n');
    }`);
  await new Promise<void>((res, rej) => {
    child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('WRITING')) res(); });
    child.on('exit', (c) => rej(new Error(`crash child exited early (${c})`)));
  });
  const exited = new Promise((r) => child.on('exit', r));
  child.kill('SIGKILL');
  await exited;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const dir = args.dir ?? (await mkdtemp(join(tmpdir(), 'spool-bench-')));
  await rm(dir, { recursive: true, force: true });
  const summary: Record<string, unknown> = { count: args.count, inFlight: args.inFlight, dir, node: process.version };

  log(`filling ${args.count} mails into ${dir}, ${args.inFlight} enqueues in flight`);
  let { q } = await open(dir);
  summary.fill = await fill(q, args.count, args.inFlight);
  summary.statsAfterFill = (await q.stats()).byState;
  await q.close();
  log('fill done; reopening');

  ({ q, ms: summary.reopenMs } = await open(dir, true) as unknown as { q: SpoolQueue; ms: number });
  summary.memoryAfterReopen = rssDetail();
  await q.close();
  summary.freshProcess = await freshProcessMemory(dir);
  log(`fresh process on the full spool: ${JSON.stringify(summary.freshProcess)}`);

  log('crash test: child leases 1000 mails and is killed -9');
  await crashChild(dir);
  const crashed = await open(dir, true);
  q = crashed.q;
  summary.recoveryAfterKill9Ms = crashed.ms;
  summary.activeAfterRecovery = (await q.stats()).byState.active;
  summary.memoryAfterRecovery = rssDetail();

  log('browse');
  summary.browse = await browseBench(q);

  const statsTimes = await timeIt(() => q.stats(), 10);
  summary.statsMs = { p50: percentileOf(statsTimes, 50), max: percentileOf(statsTimes, 100) };
  summary.memoryAfterBrowseAndStats = rssDetail();
  const reserveTimes: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    const got = await q.reserveDue({ owner: 'bench', limit: 50, leaseMs: 60_000 });
    reserveTimes.push(performance.now() - t0);
    await Promise.all(got.map((m) => q.releaseLease(m.id, m.lease!.token)));
  }
  summary.reserveDue50Ms = { p50: percentileOf(reserveTimes, 50), max: percentileOf(reserveTimes, 100) };

  summary.largestMappingsBeforeThroughput = largestMappings(3);
  log('enqueue throughput');
  const tp: Record<string, number> = {};
  for (const [writers, size] of [[1, 5_000], [20, 5_000], [1, 100_000], [20, 100_000]] as const) {
    tp[`${writers} writer(s), ${size / 1000} KB`] = await throughput(q, writers, size, args.seconds);
    log(`throughput ${writers}x${size}: ${tp[`${writers} writer(s), ${size / 1000} KB`]}/s, rss ${JSON.stringify(rssDetail())}`);
  }
  summary.enqueuePerSecond = tp;
  summary.memoryAtEnd = rssDetail();
  summary.largestMappings = largestMappings(3);
  summary.rssPeakMb = Math.round(rssPeak);
  await q.close();
  if (!args.keep) await rm(dir, { recursive: true, force: true });
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
}

runBench(main);
