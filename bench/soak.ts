/**
 * Soak: the server process under a steady, mixed load for a long time, watched for growth (memory,
 * file descriptors, disk, event-loop lag) and checked at the end for lost or doubled mail. Not a
 * speed figure: the load is a fixed rate well below what the machine can take.
 *
 *   npx tsc -p . && node dist/bench/soak.js [--minutes 30] [--rate 150] [--sessions 8] [--retain 5m] [--backend spool|kafka]
 *                                           [--crash-every SECONDS] [--state-segment-ms MS]
 *
 * - The server: dist/src/main.js on a temp spool, fsync and all, at log level warn, delivering
 *   through `delivery.routes` to a receiving server in a worker thread (npm `smtp-server`). Its
 *   finished mail is purged after `--retain` (default 5 minutes, so the soak reaches the steady
 *   state a server with the default one day reaches after a day). `--backend kafka`: the Kafka
 *   backend on topics of its own, on KAFKA_BROKERS or else the test broker started here (no
 *   `meta.mdb` nor segments then: only the process's figures).
 * - The mail: `--rate` mails a second over `--sessions` kept SMTP sessions (PIPELINING), each mail
 *   to 1–3 recipients and of a mixed size (70 % 2–10 KB, 25 % 10–100 KB, 5 % 100 KB–1 MB).
 *   Recipients `ok-…` are taken at once; `flaky-…` (12 %) get `451 4.2.0` at their first two
 *   attempts (so they are deferred twice and retried, `delivery.retry.min` 2 s); `gone-…` (8 %)
 *   get `550 5.1.1`, so the sender gets a DSN (RFC 3464), which the same receiver takes.
 * - An operator at the same time, every 2 s through the admin API: the stats, a browse of the
 *   deferred mail, a retry-now, a hold and its release 10 s later, a change of priority; a SIGHUP
 *   (configuration reload) every minute.
 * - Sampled every 10 s from `GET /metrics`: RSS, the JS heap used, open file descriptors, the
 *   event loop's lag p99; from the spool directory: the bytes of `meta.mdb` and of the segments.
 * - At the end the load stops and the queue must drain. Then every recipient of every mail that
 *   got `250` must have been delivered (ok, flaky) or bounced to its sender (gone): `lost` counts
 *   those that were neither, `duplicates` deliveries of a recipient more than once.
 *
 * - `--crash-every N`: the server is killed with SIGKILL at random times, N seconds apart on average
 *   (0.5 N to 1.5 N), and started again on the same spool (or Kafka topics, with the same node id)
 *   and ports, whatever it is doing: taking mail, delivering, committing a hold. Sessions reconnect;
 *   a mail whose final reply was lost is not counted as accepted (it may still arrive: it was stored
 *   before the kill and the reply was not sent). Leases last 30 s (`delivery.leaseTime`), so the
 *   mail whose final "." was in flight at a kill (which a restarted node does not give back) is due
 *   again soon. A hold whose reply was lost is released by a
 *   sweep of the held mail before the drain. Deliveries of the same recipient twice are then
 *   expected (a kill between a remote's `250` and the attempt's record: delivery is at least once)
 *   and counted; a lost recipient still fails the soak.
 * - `--state-segment-ms MS` (Kafka): the state topic is created before the server starts, as the
 *   backend would create it but with segments that roll after MS instead of an hour and a cleaner
 *   that starts at 10 % dirty, so log compaction runs within the soak (a minute after a record, the
 *   backend's `min.compaction.lag.ms`) and every restart of `--crash-every` reads a compacted topic.
 *
 * Prints one JSON line on stdout (the server's log, at warn, goes to stderr with the samples);
 * exits 1 when mail was lost, a recipient arrived twice without a kill of the server between the
 * two arrivals, or the queue did not drain.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { Kafka, logLevel } from 'kafkajs';
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import { benchBroker, type BenchBroker } from './kafka-broker.js';
import { freePort, percentileOf, ReplyReader, sleep, waitForPort } from './lib.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TOKEN = 'soak-operator-token-0123456789';

// ---------------------------------------------------------------- receiver (worker thread)

/** What the receiver saw: recipients taken per mail ("seq rcpt"), and recipients a DSN reported failed. */
interface Seen { delivered: string[]; bounced: string[]; refused: number; deferred: number }

function runReceiver(): void {
  const attempts = new Map<string, number>();
  let seen: Seen = { delivered: [], bounced: [], refused: 0, deferred: 0 };
  const server = new SMTPServer({
    banner: 'soak receiver',
    disabledCommands: ['AUTH', 'STARTTLS'],
    authOptional: true,
    logger: false,
    size: 64 * 1024 * 1024,
    onRcptTo(address, _session, callback) {
      const local = address.address.split('@')[0]!;
      if (local.startsWith('flaky-')) {
        const n = (attempts.get(address.address) ?? 0) + 1;
        attempts.set(address.address, n);
        if (n <= 2) {
          seen.deferred++;
          return callback(Object.assign(new Error('4.2.0 Mailbox busy, try again later'), { responseCode: 451 }));
        }
        attempts.delete(address.address);
      }
      if (local.startsWith('gone-')) {
        seen.refused++;
        return callback(Object.assign(new Error('5.1.1 No such user here'), { responseCode: 550 }));
      }
      callback();
    },
    onData(stream: SMTPServerDataStream, session: SMTPServerSession, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const text = Buffer.concat(chunks).toString('latin1');
        const seq = /^X-Soak-Seq: (\d+)/m.exec(text)?.[1];
        const from = session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address;
        if (from === '' && session.envelope.rcptTo.some((r) => r.address === 'soak@sender.test')) {
          // A DSN: its failed recipients, and the X-Soak-Seq of the returned headers.
          const failed = [...text.matchAll(/^Final-Recipient: rfc822; ?(\S+)\r?\nAction: failed/gim)].map((m) => m[1]!.toLowerCase());
          if (seq) for (const r of failed) seen.bounced.push(`${seq} ${r}`);
        } else if (seq) {
          for (const r of session.envelope.rcptTo) seen.delivered.push(`${seq} ${r.address.toLowerCase()}`);
        }
        callback(null, 'Ok: queued');
      });
    },
  });
  // A sender that goes away mid-session (the server killed by --crash-every) is the receiver's to
  // shrug off: smtp-server reports it as an 'error' event, which unhandled would end the worker.
  server.on('error', () => undefined);
  server.listen(0, '127.0.0.1', () => parentPort!.postMessage({ port: (server.server.address() as net.AddressInfo).port }));
  setInterval(() => {
    parentPort!.postMessage({ seen });
    seen = { delivered: [], bounced: [], refused: 0, deferred: 0 };
  }, 250);
}

// ---------------------------------------------------------------- sender

/** A seeded xorshift, so two soaks send the same mail. */
function rng(seed: number): () => number {
  let x = seed || 1;
  return () => {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

function sizeOf(r: number, u: number): number {
  if (r < 0.7) return 2048 + Math.floor(u * 8 * 1024);
  if (r < 0.95) return 10 * 1024 + Math.floor(u * 90 * 1024);
  return 100 * 1024 + Math.floor(u * 924 * 1024);
}

function makeBody(seq: number, to: string[], size: number): string {
  const head = `From: soak@sender.test\r\nTo: ${to.join(', ')}\r\nSubject: soak ${seq}\r\nMessage-ID: <soak-${seq}@sender.test>\r\n`
    + `Date: ${new Date().toUTCString()}\r\nX-Soak-Seq: ${seq}\r\n\r\n`;
  const line = `${seq} Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n`;
  return head + line.repeat(Math.max(1, Math.ceil((size - head.length) / line.length)));
}

interface Load {
  /** Mails that got 250: seq → recipients. */
  accepted: Map<number, string[]>;
  /** Replies other than the expected ones, by code. */
  refusals: Map<number, number>;
  /** Sessions lost after the greeting (the server killed), each with its mail in progress, if any, not accepted. */
  lostConnections: number;
}

/**
 * One kept SMTP session taking mail from `take` until it says no more. `reconnect`: a connection
 * that is refused or lost (the server was killed) is opened again, and the mail in progress is
 * counted in `lostConnections`, not accepted; otherwise a lost connection is an error.
 */
async function senderSession(port: number, take: () => Promise<number | undefined>, random: () => number, load: Load, reconnect: boolean): Promise<void> {
  const refused = (code: number) => load.refusals.set(code, (load.refusals.get(code) ?? 0) + 1);
  for (;;) {
    const done = await senderConnection(port, take, random, load, refused);
    if (done) return;
    if (!reconnect) throw new Error('the server closed a session');
    await sleep(200);
  }
}

/** One connection of senderSession: true when `take` has no more mail, false when the connection was lost. */
async function senderConnection(port: number, take: () => Promise<number | undefined>, random: () => number, load: Load, refused: (code: number) => void): Promise<boolean> {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  socket.on('error', () => undefined);
  const reader = new ReplyReader(socket);
  const lost = () => {
    load.lostConnections++;
    socket.destroy();
    return false;
  };
  const greeting = (await reader.next()).code;
  if (greeting === 0) {
    socket.destroy(); // refused: the server is not listening again yet
    return false;
  }
  if (greeting !== 220) throw new Error(`greeting ${greeting}`);
  socket.write('EHLO soak.client.test\r\n');
  const ehlo = (await reader.next()).code;
  if (ehlo === 0) return lost();
  if (ehlo !== 250) throw new Error(`EHLO answered ${ehlo}`);
  for (let seq = await take(); seq !== undefined; seq = await take()) {
    const n = 1 + Math.floor(random() * 3);
    const to: string[] = [];
    for (let i = 0; i < n; i++) {
      const r = random();
      to.push(`${r < 0.8 ? 'ok' : r < 0.92 ? 'flaky' : 'gone'}-${seq}-${i}@dest.test`);
    }
    const body = makeBody(seq, to, sizeOf(random(), random()));
    socket.write(`MAIL FROM:<soak@sender.test> RET=HDRS\r\n${to.map((t) => `RCPT TO:<${t}>\r\n`).join('')}DATA\r\n`);
    const replies = [await reader.next()];
    for (const _ of to) replies.push(await reader.next());
    const data = await reader.next();
    if (data.code === 0) return lost();
    if (replies.some((r) => r.code !== 250) || data.code !== 354) {
      for (const r of [...replies, data]) if (r.code !== 250 && r.code !== 354) refused(r.code);
      if (data.code === 354) {
        socket.write('.\r\n');
        await reader.next();
      }
      socket.write('RSET\r\n');
      await reader.next();
      continue;
    }
    socket.write(body + '.\r\n');
    const end = await reader.next();
    if (end.code === 0) return lost();
    if (end.code === 250) load.accepted.set(seq, to);
    else refused(end.code);
  }
  socket.write('QUIT\r\n');
  socket.end();
  return true;
}

// ---------------------------------------------------------------- operator

async function api(port: number, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, json: text.startsWith('{') ? JSON.parse(text) : text };
}

/** One operator round: stats, a browse, retry one deferred mail, hold one (released 10 s later), reprioritise one. */
async function operatorRound(port: number, random: () => number, held: { id: string; at: number }[], statuses: Map<string, number>): Promise<void> {
  const tally = (k: string) => statuses.set(k, (statuses.get(k) ?? 0) + 1);
  const count = (what: string, status: number) => tally(`${what} ${status}`);
  /** A refusal's reason, ids left out so that equal reasons add up. */
  const reason = (what: string, r: { status: number; json?: { message?: unknown } }) => {
    if (r.status >= 400) tally(`${what} ${r.status}: ${String(r.json?.message).replace(/mail \S+/, 'mail ID')}`);
  };
  count('stats', (await api(port, 'GET', '/api/stats')).status);
  const deferred = await api(port, 'GET', '/api/messages?state=queued&reply=4.2.0&limit=50');
  count('browse', deferred.status);
  const items: { id: string }[] = deferred.json?.items ?? [];
  if (items.length) count('retry', (await api(port, 'POST', `/api/messages/${items[Math.floor(random() * items.length)]!.id}/retry`)).status);
  const queued = await api(port, 'GET', '/api/messages?state=queued&limit=20&sort=received&order=desc');
  count('browse', queued.status);
  const recent: { id: string }[] = queued.json?.items ?? [];
  if (recent.length) {
    const id = recent[Math.floor(random() * recent.length)]!.id;
    const r = await api(port, 'POST', `/api/messages/${id}/hold`, { reason: 'soak' });
    count('hold', r.status);
    reason('hold', r);
    if (r.status === 200) held.push({ id, at: Date.now() });
    const other = recent[Math.floor(random() * recent.length)]!.id;
    const p = await api(port, 'PATCH', `/api/messages/${other}`, { priority: random() < 0.5 ? 'high' : 'bulk' });
    count('priority', p.status);
    reason('priority', p);
  }
  while (held.length && held[0]!.at < Date.now() - 10_000) {
    // Taken off the list once answered: a request that fails (the server killed) is made again.
    const r = await api(port, 'POST', `/api/messages/${held[0]!.id}/release`);
    held.shift();
    count('release', r.status);
    reason('release', r);
  }
}

// ---------------------------------------------------------------- samples

interface Sample { t: number; rssMB: number; heapMB: number; externalMB: number; fds: number; lagP99Ms: number; metaMB: number; segmentsMB: number; queued: number }

function metric(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

function dirMB(dir: string): number {
  let bytes = 0;
  try {
    for (const f of readdirSync(dir)) bytes += statSync(join(dir, f)).size;
  } catch { /* not there yet */ }
  return bytes / 1048576;
}

async function sample(port: number, spool: string, t0: number): Promise<Sample> {
  const text = (await api(port, 'GET', '/metrics')).json as string;
  const stats = (await api(port, 'GET', '/api/stats')).json as { byState?: Record<string, number> };
  const s = stats.byState ?? {};
  let metaMB = NaN;
  try { metaMB = statSync(join(spool, 'meta.mdb')).size / 1048576; } catch { /* not there yet */ }
  return {
    t: Math.round((Date.now() - t0) / 1000),
    rssMB: Math.round(metric(text, 'spoolhouse_process_process_resident_memory_bytes') / 1048576),
    heapMB: Math.round(metric(text, 'spoolhouse_process_nodejs_heap_size_used_bytes') / 104857.6) / 10,
    // Buffers and other memory outside the V8 heap (kafkajs's and the body caches' Buffers).
    externalMB: Math.round(metric(text, 'spoolhouse_process_nodejs_external_memory_bytes') / 104857.6) / 10,
    fds: metric(text, 'spoolhouse_process_process_open_fds'),
    lagP99Ms: Math.round(metric(text, 'spoolhouse_process_nodejs_eventloop_lag_p99_seconds') * 10000) / 10,
    metaMB: Math.round(metaMB),
    segmentsMB: Math.round(dirMB(join(spool, 'segments'))),
    queued: (s.queued ?? 0) + (s.active ?? 0) + (s.held ?? 0),
  };
}

/** Least-squares slope of y over t (seconds), per hour. */
function slopePerHour(points: { t: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) return NaN;
  const mt = points.reduce((a, p) => a + p.t, 0) / n;
  const my = points.reduce((a, p) => a + p.y, 0) / n;
  const num = points.reduce((a, p) => a + (p.t - mt) * (p.y - my), 0);
  const den = points.reduce((a, p) => a + (p.t - mt) ** 2, 0);
  return den ? Math.round((num / den) * 3600 * 10) / 10 : NaN;
}

/** The median of each figure over some samples. */
function medians(samples: Sample[]) {
  const of = (pick: (s: Sample) => number) => percentileOf(samples.map(pick), 50);
  return { rssMB: of((s) => s.rssMB), heapMB: of((s) => s.heapMB), externalMB: of((s) => s.externalMB), fds: of((s) => s.fds), lagP99Ms: of((s) => s.lagP99Ms), metaMB: of((s) => s.metaMB), segmentsMB: of((s) => s.segmentsMB) };
}

// ---------------------------------------------------------------- main

/** The state topic as the backend creates it (kafka-queue.ts), but compacted within the soak. */
async function createStateTopic(brokers: string[], topic: string, segmentMs: number): Promise<void> {
  const admin = new Kafka({ clientId: 'soak', brokers, logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    await admin.createTopics({
      waitForLeaders: true,
      topics: [{
        topic, numPartitions: 6, replicationFactor: 1,
        configEntries: [
          { name: 'cleanup.policy', value: 'compact' },
          { name: 'min.compaction.lag.ms', value: '60000' },
          { name: 'delete.retention.ms', value: String(24 * 3_600_000) },
          { name: 'segment.ms', value: String(segmentMs) },
          { name: 'min.cleanable.dirty.ratio', value: '0.1' },
        ],
      }],
    });
  } finally {
    await admin.disconnect();
  }
}

async function main(): Promise<void> {
  const { values: args } = parseArgs({
    options: {
      minutes: { type: 'string', default: '30' },
      rate: { type: 'string', default: '150' },
      sessions: { type: 'string', default: '8' },
      retain: { type: 'string', default: '5m' },
      seed: { type: 'string', default: '1' },
      backend: { type: 'string', default: 'spool' },
      'crash-every': { type: 'string', default: '0' },
      'state-segment-ms': { type: 'string', default: '0' },
    },
  });
  const crashEvery = Number(args['crash-every']);
  if (!(crashEvery >= 0)) throw new Error(`--crash-every must be a number of seconds, not ${args['crash-every']}`);
  if (args.backend !== 'spool' && args.backend !== 'kafka') throw new Error(`--backend must be spool or kafka, not ${args.backend}`);
  const broker: BenchBroker | undefined = args.backend === 'kafka' ? await benchBroker() : undefined;
  const minutes = Number(args.minutes);
  const rate = Number(args.rate);
  const random = rng(Number(args.seed));
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-soak-'));
  const spool = join(dir, 'spool');

  const receiver = new Worker(fileURLToPath(import.meta.url), { workerData: { role: 'receiver' } });
  const delivered = new Map<string, number>();
  /** When each recipient first arrived, and each arrival after the first (as the receiver reported them, every 250 ms). */
  const firstArrival = new Map<string, number>();
  const repeats: { k: string; first: number; again: number }[] = [];
  const bounced = new Set<string>();
  let receiverDeferred = 0;
  let receiverRefused = 0;
  const receiverPort = await new Promise<number>((resolve) => {
    receiver.on('message', (m: { port?: number; seen?: Seen }) => {
      if (m.port) resolve(m.port);
      if (!m.seen) return;
      for (const k of m.seen.delivered) {
        const n = (delivered.get(k) ?? 0) + 1;
        delivered.set(k, n);
        if (n === 1) firstArrival.set(k, Date.now());
        else repeats.push({ k, first: firstArrival.get(k)!, again: Date.now() });
      }
      for (const k of m.seen.bounced) bounced.add(k);
      receiverDeferred += m.seen.deferred;
      receiverRefused += m.seen.refused;
    });
  });

  const topicPrefix = `soak-${Date.now().toString(36)}`;
  const stateSegmentMs = Number(args['state-segment-ms']);
  if (!(stateSegmentMs >= 0)) throw new Error(`--state-segment-ms must be a number of milliseconds, not ${args['state-segment-ms']}`);
  if (stateSegmentMs && broker) await createStateTopic(broker.brokers, `${topicPrefix}.state`, stateSegmentMs);

  const smtpPort = await freePort();
  const adminPort = await freePort();
  const file = join(dir, 'soak-config.json');
  writeFileSync(file, JSON.stringify({
    smtp: { listen: [`127.0.0.1:${smtpPort}`], hostname: 'soak.spoolhouse.test', earlyTalkerDelay: '0ms' },
    spool: { dir: spool, retainFinished: args.retain },
    ...(broker ? {
      queue: { backend: 'kafka' },
      kafka: { brokers: broker.brokers, clientId: 'soak', topicPrefix, partitions: 6, replicationFactor: 1, nodeId: 'soak' },
    } : {}),
    admin: { listen: `127.0.0.1:${adminPort}`, token: TOKEN },
    delivery: {
      routes: { 'dest.test': `127.0.0.1:${receiverPort}`, 'sender.test': `127.0.0.1:${receiverPort}` },
      tls: { opportunistic: false, verify: false },
      retry: { min: '2s', max: '10s', lifetime: '1h', bounceLifetime: null },
      ...(crashEvery ? { leaseTime: '30s' } : {}),
    },
    log: { level: 'warn', pretty: false },
  }));
  /** How the server ended, when it was not by our SIGKILL: the soak stops. */
  let exited: number | string | null | undefined;
  let server!: ChildProcess;
  /** False while the server is being killed and started again (no SIGHUP then: before its handler is set, it would end the process). */
  let up = false;
  const start = async () => {
    const child = spawn(process.execPath, [join(ROOT, 'dist/src/main.js'), '--config', file], { cwd: dir, stdio: ['ignore', 2, 2] });
    server = child;
    child.once('exit', (code, signal) => { if (signal !== 'SIGKILL' || child.killed === false) exited = code ?? signal; });
    await waitForPort(smtpPort, 60_000);
    await waitForPort(adminPort, 60_000);
    up = true;
  };
  await start();
  const crashes: { at: number; killedAt: number; restartMs: number }[] = [];
  const crashRandom = rng(Number(args.seed) + 1);

  const load: Load = { accepted: new Map(), refusals: new Map(), lostConnections: 0 };
  const statuses = new Map<string, number>();
  const samples: Sample[] = [];
  const t0 = Date.now();
  const end = t0 + minutes * 60_000;
  // A shared pacer: mail n is sent no earlier than t0 + n / rate.
  let next = 0;
  let stopping = false;
  const take = async (): Promise<number | undefined> => {
    if (stopping || Date.now() >= end || exited !== undefined) return undefined;
    const seq = next++;
    const due = t0 + (seq * 1000) / rate;
    if (due > Date.now()) await sleep(due - Date.now());
    return seq;
  };
  const held: { id: string; at: number }[] = [];
  let lastHup = Date.now();
  const operator = (async () => {
    let lastSample = 0;
    while (Date.now() < end && exited === undefined) {
      await operatorRound(adminPort, random, held, statuses).catch((err: unknown) => statuses.set(`error ${(err as Error).message}`, 1));
      if (Date.now() - lastSample >= 10_000 && up) {
        lastSample = Date.now();
        // Not while the server is killed and started again: a sample then is of a process just started.
        const s = await sample(adminPort, spool, t0).catch(() => undefined);
        if (s) {
          samples.push(s);
          process.stderr.write(`soak ${s.t}s: rss ${s.rssMB} MB, heap ${s.heapMB} MB, external ${s.externalMB} MB, fds ${s.fds}, lag p99 ${s.lagP99Ms} ms, meta.mdb ${s.metaMB} MB, segments ${s.segmentsMB} MB, in queue ${s.queued}, accepted ${load.accepted.size}, crashes ${crashes.length}\n`);
        }
      }
      if (Date.now() - lastHup >= 60_000 && up) {
        lastHup = Date.now();
        server.kill('SIGHUP');
      }
      await sleep(2000);
    }
    for (const h of held.splice(0)) await api(adminPort, 'POST', `/api/messages/${h.id}/release`).catch(() => undefined);
  })();
  // Kills the server at random times and starts it again, until the load ends.
  const crasher = (async () => {
    if (!crashEvery) return;
    for (;;) {
      await sleep(crashEvery * 1000 * (0.5 + crashRandom()));
      if (Date.now() >= end || exited !== undefined) return;
      up = false;
      const gone = new Promise((r) => server.once('exit', r));
      server.kill('SIGKILL');
      await gone;
      const t = Date.now();
      await start();
      crashes.push({ at: Math.round((t - t0) / 1000), killedAt: t, restartMs: Date.now() - t });
      process.stderr.write(`soak: killed the server (SIGKILL) at ${crashes.at(-1)!.at} s, listening again in ${crashes.at(-1)!.restartMs} ms\n`);
    }
  })();
  const sessions = Array.from({ length: Number(args.sessions) }, () => senderSession(smtpPort, take, random, load, crashEvery > 0));
  await Promise.all([...sessions, operator, crasher]).finally(() => { stopping = true; });
  const loadEnd = Date.now();
  // A hold whose reply a kill took away is not on the operator's list: release every held mail.
  let heldSwept = 0;
  if (crashEvery) {
    for (;;) {
      const page = await api(adminPort, 'GET', '/api/messages?state=held&limit=200');
      const items: { id: string }[] = page.json?.items ?? [];
      if (!items.length) break;
      for (const m of items) if ((await api(adminPort, 'POST', `/api/messages/${m.id}/release`)).status === 200) heldSwept++;
    }
  }

  // Drain: every mail finished (delivered, bounced) and every DSN delivered.
  let drained = false;
  const expected = () => {
    let want = 0;
    for (const to of load.accepted.values()) want += to.length;
    return want;
  };
  /** Whether a recipient got what it should: delivered (ok-, flaky-), or bounced to the sender (gone-). */
  const arrived = (k: string) => (k.includes(' gone-') ? bounced : delivered).has(k);
  const missing = () => {
    let n = 0;
    for (const [seq, to] of load.accepted) for (const rcpt of to) if (!arrived(`${seq} ${rcpt}`)) n++;
    return n;
  };
  while (Date.now() - loadEnd < 300_000 + (crashEvery ? 30_000 : 0) && exited === undefined) {
    const s = await sample(adminPort, spool, t0);
    if (s.queued === 0 && missing() === 0) {
      samples.push(s);
      drained = true;
      break;
    }
    await sleep(2000);
  }
  await sleep(1000);

  let lost = 0;
  let duplicates = 0;
  const lostExamples: string[] = [];
  const duplicateExamples: string[] = [];
  for (const [seq, to] of load.accepted) {
    for (const rcpt of to) {
      const k = `${seq} ${rcpt}`;
      if (!arrived(k)) {
        lost++;
        if (lostExamples.length < 10) lostExamples.push(k);
      }
      if ((delivered.get(k) ?? 0) > 1) {
        duplicates++;
        if (duplicateExamples.length < 10) duplicateExamples.push(k);
      }
    }
  }
  // A recipient may arrive twice only when the server was killed between the two arrivals (the
  // remote's 250 came, the attempt's record did not): delivery is at least once, never twice else.
  // 1 s of slack for the receiver's 250 ms reports.
  const unexplained = repeats.filter((r) => !crashes.some((c) => c.killedAt >= r.first - 1000 && c.killedAt <= r.again));
  // Recipients of mail that got no 250 (its reply lost with a killed server) that arrived all the same.
  let unacknowledgedArrived = 0;
  for (const k of [...delivered.keys(), ...bounced]) if (!load.accepted.has(Number(k.split(' ')[0]))) unacknowledgedArrived++;
  const during = samples.filter((s) => s.t * 1000 <= loadEnd - t0);
  const quarter = Math.max(1, Math.floor(during.length / 4));
  const first = during.slice(0, quarter);
  const last = during.slice(-quarter);
  const secondHalf = during.slice(Math.floor(during.length / 2));
  // The heap's floor per minute (after its collections), so the slope follows what stays, not garbage.
  const floors = new Map<number, number>();
  for (const s of secondHalf) floors.set(Math.floor(s.t / 60), Math.min(floors.get(Math.floor(s.t / 60)) ?? Infinity, s.heapMB));
  const result = {
    bench: 'soak',
    backend: broker ? `kafka (${broker.description})` : 'spool',
    minutes, rate, sessions: Number(args.sessions), retainFinished: args.retain,
    ...(stateSegmentMs && broker ? { stateSegmentMs } : {}),
    accepted: load.accepted.size,
    recipients: expected(),
    acceptedPerSecond: Math.round(load.accepted.size / ((loadEnd - t0) / 1000)),
    refusedAtIngest: Object.fromEntries(load.refusals),
    receiver: { deferred: receiverDeferred, refused: receiverRefused, deliveredRecipients: delivered.size, bouncedRecipients: bounced.size },
    drained,
    drainSeconds: Math.round((Date.now() - loadEnd) / 1000),
    lost, lostExamples, duplicates,
    duplicatesWithoutAKill: unexplained.length, duplicatesWithoutAKillExamples: unexplained.slice(0, 10).map((r) => r.k),
    ...(crashEvery ? {
      crashEvery, crashes: crashes.length, restartMs: { median: percentileOf(crashes.map((c) => c.restartMs), 50), max: Math.max(...crashes.map((c) => c.restartMs)) },
      lostConnections: load.lostConnections, unacknowledgedArrived, duplicateExamples, heldSweptAtEnd: heldSwept,
    } : {}),
    operator: Object.fromEntries(statuses),
    firstQuarter: medians(first),
    lastQuarter: medians(last),
    secondHalfSlopePerHour: {
      rssMB: slopePerHour(secondHalf.map((s) => ({ t: s.t, y: s.rssMB }))),
      externalMB: slopePerHour(secondHalf.map((s) => ({ t: s.t, y: s.externalMB }))),
      heapFloorMB: slopePerHour([...floors].map(([m, y]) => ({ t: m * 60, y }))),
      fds: slopePerHour(secondHalf.map((s) => ({ t: s.t, y: s.fds }))),
    },
    afterDrain: samples[samples.length - 1],
    maxLagP99Ms: Math.max(...samples.map((s) => s.lagP99Ms)),
    serverExited: exited ?? null,
    loadAverage: Number(loadavg()[0]!.toFixed(2)),
  };
  process.stdout.write(JSON.stringify(result) + '\n');
  server.kill('SIGTERM');
  await new Promise((r) => (exited !== undefined ? r(undefined) : server.once('exit', r)));
  await receiver.terminate();
  await broker?.stop();
  rmSync(dir, { recursive: true, force: true });
  if (lost || unexplained.length || !drained || result.serverExited !== 0 && result.serverExited !== null) process.exit(1);
}

if (isMainThread) {
  main().catch((err) => {
    process.stderr.write(`bench soak failed: ${(err as Error).stack}\n`);
    process.exit(1);
  });
} else if ((workerData as { role?: string })?.role === 'receiver') {
  runReceiver();
}
