/**
 * Ingest benchmark: messages per second that the SMTP ingress accepts durably (250 only after the
 * spool's fsync), with 1 and 20 concurrent sessions, 5 KB and 100 KB messages.
 *
 * The server runs in this process (SmtpIngress over the spool chosen by openQueue, on a fresh temp
 * spool per scenario, logging at info to /dev/null so log formatting is paid for). The load comes
 * from Debian's `smtp-source` in its own process, or from a built-in raw-socket client with
 * `--client builtin` or when smtp-source is absent, in the two shapes of bench/lib.ts: sessions
 * kept (each session sends mail after mail on its connection, `smtp-source -d`; rows "…-kept")
 * and a new connection per message (rows without a suffix).
 * Loopback clients are in relay.networks, so the early-talker wait is skipped, as it would be for
 * an application server submitting mail.
 *
 * Usage: node dist/bench/ingest.js [--scale 1] [--client smtp-source|builtin] [--only 20x5k]
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { ConfigStore } from '../src/config/store.js';
import { SmtpIngress } from '../src/ingress/index.js';
import { createMetrics } from '../src/metrics.js';
import { openQueue } from '../src/queue/index.js';
import { SmtpClient } from '../test/helpers/smtp-client.js';
import type { Shape } from './lib.js';

const { values: args } = parseArgs({
  options: {
    scale: { type: 'string', default: '1' },
    client: { type: 'string' },
    only: { type: 'string' },
  },
});
const SCALE = Number(args.scale);
const haveSmtpSource = (process.env.PATH ?? '').split(':').concat('/usr/sbin').some((d) => d && existsSync(join(d, 'smtp-source')));
const CLIENT = args.client ?? (haveSmtpSource ? 'smtp-source' : 'builtin');

interface Scenario {
  name: string;
  sessions: number;
  size: number;
  messages: number;
  shape: Shape;
}

const SCENARIOS: Scenario[] = [
  { name: '1x5k', sessions: 1, size: 5 * 1024, messages: 1000 },
  { name: '20x5k', sessions: 20, size: 5 * 1024, messages: 6000 },
  { name: '1x100k', sessions: 1, size: 100 * 1024, messages: 300 },
  { name: '20x100k', sessions: 20, size: 100 * 1024, messages: 1500 },
].flatMap((s) => {
  const scaled = { ...s, messages: Math.max(s.sessions, Math.round(s.messages * SCALE)) };
  return [{ ...scaled, name: `${s.name}-kept`, shape: 'kept' as const }, { ...scaled, shape: 'per-mail' as const }];
});

async function startServer(dir: string): Promise<{ port: number; stop: () => Promise<void> }> {
  const overlay = join(dir, 'config.json');
  writeFileSync(overlay, JSON.stringify({
    smtp: { listen: ['127.0.0.1:0'], hostname: 'bench.example', maxConnections: 1000, maxConnectionsPerClient: 1000 },
    spool: { dir: join(dir, 'spool') },
    log: { level: 'info', pretty: false },
  }));
  const store = new ConfigStore(overlay);
  const logger = pino({ level: 'info' }, pino.destination('/dev/null'));
  const queue = await openQueue(store.current, logger);
  await queue.start();
  const ingress = new SmtpIngress({ config: store, queue, logger, metrics: createMetrics() });
  const [listener] = await ingress.listen();
  return {
    port: listener!.port,
    async stop() {
      await ingress.close();
      await queue.close();
    },
  };
}

function runSmtpSource(port: number, s: Scenario): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('smtp-source', [...(s.shape === 'kept' ? ['-d'] : []), '-s', String(s.sessions), '-l', String(s.size), '-m', String(s.messages),
      '-f', 'bench@example.org', '-t', 'rcpt@example.net', '-M', 'client.example', `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`smtp-source exited ${code}: ${err.slice(-500)}`))));
  });
}

async function runBuiltin(port: number, s: Scenario): Promise<void> {
  const line = 'La de da de da 1.\r\n'.padEnd(76, 'x') + '\r\n';
  const body = `From: bench@example.org\r\nTo: rcpt@example.net\r\nSubject: bench\r\n\r\n${line.repeat(Math.ceil(s.size / line.length))}`;
  let next = 0;
  const worker = async () => {
    let c: SmtpClient | undefined;
    while (next < s.messages) {
      next++;
      if (!c) {
        c = await SmtpClient.connect({ port });
        await c.read();
        await c.ehlo();
      }
      const r = await c.sendMail('bench@example.org', ['rcpt@example.net'], body);
      if (r.code !== 250) throw new Error(`not accepted: ${r.raw}`);
      if (s.shape === 'per-mail') {
        await c.quit();
        c = undefined;
      }
    }
    await c?.quit();
  };
  await Promise.all(Array.from({ length: s.sessions }, worker));
}

async function measure(s: Scenario): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-bench-ingest-'));
  const server = await startServer(dir);
  try {
    const drive = CLIENT === 'smtp-source' ? runSmtpSource : runBuiltin;
    await drive(server.port, { ...s, messages: Math.min(100, s.messages) }); // warm-up
    const t0 = process.hrtime.bigint();
    await drive(server.port, s);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    return s.messages / seconds;
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const results: Record<string, number> = {};
console.log(`ingest benchmark: client ${CLIENT}, fsync on (spool); "-kept": sessions kept, else a connection per message`);
for (const s of SCENARIOS) {
  if (args.only && args.only !== s.name) continue;
  const rate = await measure(s);
  results[s.name] = Math.round(rate);
  console.log(`${s.name.padEnd(13)} ${String(s.sessions).padStart(2)} session(s) x ${String(s.size / 1024).padStart(3)} KB  ${String(s.messages).padStart(5)} msgs  ${rate.toFixed(0).padStart(6)} msg/s`);
}
console.log(JSON.stringify({ bench: 'ingest', client: CLIENT, results }));
for (const name of ['20x5k-kept', '20x5k']) {
  if (results[name] !== undefined && results[name] < 1000) console.log(`${name}: below the target of 1000 msg/s for 20 sessions of 5 KB`);
}
