/**
 * End-to-end delivery benchmark: messages per second from the ingress `250` to receipt at a local
 * sink, with latency percentiles, through the real server process (dist/src/main.js, spool
 * backend on a temp dir, fsync and all).
 *
 *   npx tsc -p . && node dist/bench/delivery.js [--messages 10000] [--sessions 20] [--size 5120] [--warmup 500]
 *
 * - Senders: `--sessions` SMTP sessions (raw sockets, PIPELINING for MAIL/RCPT/DATA), each sending
 *   mail after mail over its connection, `--size` bytes each, one recipient at sink.test.
 * - Sink: a minimal receiving SMTP server (PIPELINING, 8BITMIME) in a worker thread, answering
 *   250 to everything; it records when each message's final "." arrived. The server routes
 *   sink.test to it (`delivery.routes`).
 * - Throughput = measured messages / (last receipt − first send); latency = receipt − the 250
 *   the sender got. The first `--warmup` messages are sent and delivered but not measured.
 * Prints one JSON line with the figures (and a human summary on stderr).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { freePort, ReplyReader } from './lib.js';

const now = () => performance.timeOrigin + performance.now();

// ---------------------------------------------------------------- sink (worker thread)

function runSink(): void {
  const received: [number, number][] = [];
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    let buf = '';
    let inData = false;
    socket.write('220 sink ESMTP\r\n');
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      buf += chunk;
      let out = '';
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) break;
          const msg = buf.slice(0, end);
          buf = buf.slice(end + 5);
          inData = false;
          const m = /X-Bench-Seq: (\d+)/.exec(msg);
          if (m) received.push([Number(m[1]), now()]);
          out += '250 2.0.0 Ok: queued\r\n';
          continue;
        }
        const eol = buf.indexOf('\r\n');
        if (eol < 0) break;
        const line = buf.slice(0, eol);
        buf = buf.slice(eol + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') out += '250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES\r\n';
        else if (verb === 'DATA') {
          out += '354 End data with <CR><LF>.<CR><LF>\r\n';
          inData = true;
          buf = '\r\n' + buf; // so a message that is empty still ends at "\r\n.\r\n"
        } else if (verb === 'QUIT') {
          socket.end(out + '221 2.0.0 Bye\r\n');
          return;
        } else out += '250 2.0.0 Ok\r\n';
      }
      if (out) socket.write(out);
    });
    socket.on('error', () => socket.destroy());
  });
  server.listen(0, '127.0.0.1', () => parentPort!.postMessage({ port: (server.address() as net.AddressInfo).port }));
  setInterval(() => {
    if (received.length) parentPort!.postMessage({ received: received.splice(0) });
  }, 50);
}

// ---------------------------------------------------------------- sender

interface Args { messages: number; sessions: number; size: number; warmup: number }

function parseArgs(argv: string[]): Args {
  const get = (name: string, dflt: number) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? Number(argv[i + 1]) : dflt;
  };
  return { messages: get('messages', 10_000), sessions: get('sessions', 20), size: get('size', 5 * 1024), warmup: get('warmup', 500) };
}

function makeBody(seq: number, size: number): string {
  const head = `From: bench@client.test\r\nTo: user@sink.test\r\nSubject: bench ${seq}\r\nMessage-ID: <bench-${seq}@client.test>\r\n`
    + `Date: ${new Date().toUTCString()}\r\nX-Bench-Seq: ${seq}\r\n\r\n`;
  const line = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n';
  let body = head;
  while (body.length + line.length < size) body += line;
  return body;
}

async function expectCode(reader: ReplyReader, want: number, what: string): Promise<void> {
  const { code } = await reader.next();
  if (code !== want) throw new Error(`${what}: expected ${want}, got ${code}`);
}

async function senderSession(port: number, take: () => number | undefined, size: number, accepted: Map<number, number>): Promise<void> {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  const reader = new ReplyReader(socket);
  await expectCode(reader, 220, 'greeting');
  socket.write('EHLO bench.client.test\r\n');
  await expectCode(reader, 250, 'EHLO');
  for (let seq = take(); seq !== undefined; seq = take()) {
    socket.write('MAIL FROM:<bench@client.test>\r\nRCPT TO:<user@sink.test>\r\nDATA\r\n');
    await expectCode(reader, 250, 'MAIL');
    await expectCode(reader, 250, 'RCPT');
    await expectCode(reader, 354, 'DATA');
    socket.write(makeBody(seq, size) + '.\r\n');
    await expectCode(reader, 250, 'end of DATA');
    accepted.set(seq, now());
  }
  socket.write('QUIT\r\n');
  socket.end();
}

// ---------------------------------------------------------------- server process


async function startServer(root: string, config: Record<string, unknown>, dir: string): Promise<{ child: ChildProcess; smtpPort: number }> {
  const smtpPort = await freePort();
  const file = join(dir, 'bench-config.json');
  const smtp = { ...(config.smtp as object), listen: [`127.0.0.1:${smtpPort}`] };
  writeFileSync(file, JSON.stringify({ ...config, smtp }));
  const child = spawn(process.execPath, [...(process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(' ') : []), join(root, 'dist', 'src', 'main.js'), '--config', file], { cwd: dir, stdio: ['ignore', 'inherit', 'inherit'] });
  let exited = false;
  child.once('exit', () => { exited = true; });
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error('server exited before listening');
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: smtpPort }, () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return { child, smtpPort };
    if (Date.now() > deadline) throw new Error('server did not start listening in 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-bench-'));
  const total = args.messages + args.warmup;

  const sink = new Worker(fileURLToPath(import.meta.url), { workerData: { role: 'sink' } });
  const received = new Map<number, number>();
  let duplicates = 0;
  let onAllReceived: (() => void) | undefined;
  const sinkPort = await new Promise<number>((resolve) => {
    sink.on('message', (m: { port?: number; received?: [number, number][] }) => {
      if (m.port) resolve(m.port);
      for (const [seq, at] of m.received ?? []) {
        if (received.has(seq)) duplicates++;
        else received.set(seq, at);
      }
      if (received.size >= total) onAllReceived?.();
    });
  });

  const { child, smtpPort } = await startServer(root, {
    smtp: { listen: ['127.0.0.1:0'], earlyTalkerDelay: '0ms', hostname: 'bench.spoolhouse.test' },
    spool: { dir: join(dir, 'spool') },
    admin: { listen: '127.0.0.1:0' },
    delivery: {
      routes: { 'sink.test': `127.0.0.1:${sinkPort}` },
      tls: { opportunistic: false, verify: false },
      ...(process.env.BENCH_DELIVERY_RATE ? { limits: { default: {}, domains: { 'sink.test': { rate: process.env.BENCH_DELIVERY_RATE } } } } : {}),
    },
    log: { level: 'warn', pretty: false },
  }, dir);

  const accepted = new Map<number, number>();
  try {
    let next = 0;
    const takeWarmup = () => (next < args.warmup ? next++ : undefined);
    await Promise.all(Array.from({ length: args.sessions }, () => senderSession(smtpPort, takeWarmup, args.size, accepted)));
    await waitFor(() => received.size >= args.warmup, 60_000, 'warm-up delivery');

    const start = now();
    const take = () => (next < total ? next++ : undefined);
    const allReceived = new Promise<void>((resolve) => { onAllReceived = resolve; });
    await Promise.all(Array.from({ length: args.sessions }, () => senderSession(smtpPort, take, args.size, accepted)));
    const acceptedEnd = now();
    await Promise.race([allReceived, waitFor(() => received.size >= total, 300_000, 'delivery of every message')]);
    const end = Math.max(...[...received.entries()].filter(([s]) => s >= args.warmup).map(([, t]) => t));

    const latencies = [...received.entries()].filter(([s]) => s >= args.warmup)
      .map(([s, t]) => t - (accepted.get(s) ?? t)).sort((a, b) => a - b);
    const result = {
      bench: 'delivery',
      messages: args.messages, sessions: args.sessions, sizeBytes: args.size,
      endToEndPerSecond: Math.round(args.messages / ((end - start) / 1000)),
      ingressPerSecond: Math.round(args.messages / ((acceptedEnd - start) / 1000)),
      latencyMs: { p50: Math.round(percentile(latencies, 50)), p99: Math.round(percentile(latencies, 99)), max: Math.round(latencies[latencies.length - 1] ?? NaN) },
      duplicates,
      /** Other work on the machine skews the figures: the 1-minute load average at the end. */
      loadAverage: Number(loadavg()[0]!.toFixed(2)),
    };
    process.stderr.write(`delivery: ${result.endToEndPerSecond} msg/s end to end (ingress ${result.ingressPerSecond} msg/s), `
      + `latency p50 ${result.latencyMs.p50} ms, p99 ${result.latencyMs.p99} ms, ${args.sessions} sessions × ${args.size} B\n`);
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    await sink.terminate();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

if (isMainThread) {
  main().catch((err) => {
    process.stderr.write(`bench delivery failed: ${(err as Error).stack}\n`);
    process.exit(1);
  });
} else if ((workerData as { role?: string })?.role === 'sink') {
  runSink();
}
