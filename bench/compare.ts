/**
 * Spoolhouse beside Postfix, in one run on one machine: the speed targets are ratios to Postfix.
 *
 * Both get the same load from Debian's `smtp-source` (20 sessions of 5 KB mails by default, a new
 * connection per mail, as smtp-source does) and deliver to the same `smtp-sink` (C, dumping each
 * mail to a file on tmpfs so mails can be counted):
 * - ingest: every mail is held at the door (Postfix: an access HOLD; Spoolhouse: a hold rule), so
 *   only durable acceptance is measured: messages / second from first connect to last 250.
 * - end to end: both relay everything to the sink (Postfix relayhost, Spoolhouse smarthost);
 *   messages / second from first connect until the sink has them all.
 * Postfix runs as a private instance (its own config and queue dirs), durable as shipped.
 *
 * Two shapes of the same load, both reported:
 * - sessions kept (smtp-source -d): 20 SMTP sessions, each sending mail after mail over its own
 *   connection, as applications and relays that pool connections do (nodemailer's pool, Postfix's
 *   own smtp client with connection caching). This is "20 sessions of 5 KB mails" read literally.
 * - a connection per mail (smtp-source without -d): 20 in parallel, each connecting, sending one
 *   mail and quitting; this adds connection set-up and the greeting to every mail.
 *
 * Usage: node dist/bench/compare.js [--messages 4000] [--sessions 20] [--size 5120] [--only postfix|spoolhouse]
 *        [--shape kept|per-mail|both]
 * Needs Debian's postfix package (postfix, smtp-source, smtp-sink); run as root.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '4000' },
    sessions: { type: 'string', default: '20' },
    size: { type: 'string', default: '5120' },
    only: { type: 'string' },
    shape: { type: 'string', default: 'both' },
  },
});
const MESSAGES = Number(args.messages);
const SESSIONS = Number(args.sessions);
const SIZE = Number(args.size);
const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitForPort(port: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

class Sink {
  readonly dir: string;
  proc?: ChildProcess;
  constructor(readonly port: number) {
    this.dir = mkdtempSync('/dev/shm/spoolhouse-sink-');
    chownSync(this.dir, Number(execFileSync('id', ['-u', 'postfix']).toString().trim()), 0);
  }
  start(): void {
    this.proc = spawn('smtp-sink', ['-u', 'postfix', '-R', this.dir, '-d', 'm-', `127.0.0.1:${this.port}`, '512'], { stdio: 'ignore' });
  }
  count(): number {
    return readdirSync(this.dir).length;
  }
  clear(): void {
    for (const f of readdirSync(this.dir)) rmSync(join(this.dir, f));
  }
  stop(): void {
    this.proc?.kill('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Runs smtp-source; resolves with the wall time in ms. */
function smtpSource(port: number, messages: number, recipientDomain: string, shape: Shape): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const p = spawn('smtp-source', [...(shape === 'kept' ? ['-d'] : []), '-s', String(SESSIONS), '-m', String(messages), '-l', String(SIZE),
      '-f', 'bench@sender.example', '-t', `rcpt@${recipientDomain}`, `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (d) => { err += d; });
    p.on('exit', (code) => (code === 0 ? resolve(performance.now() - t0) : reject(new Error(`smtp-source exited ${code}: ${err}`))));
  });
}

async function untilSinkHas(sink: Sink, n: number, timeoutMs = 600_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (sink.count() < n) {
    if (Date.now() > deadline) throw new Error(`sink has ${sink.count()} of ${n}`);
    await sleep(20);
  }
}

interface Figures { ingestPerSec: number; endToEndPerSec: number }

interface Mta {
  name: string;
  start(mode: 'ingest' | 'relay', sinkPort: number): Promise<number>;
  stop(): Promise<void>;
}

function postfix(): Mta {
  let base = '';
  return {
    name: 'postfix',
    async start(mode, sinkPort) {
      base = mkdtempSync(join(tmpdir(), 'bench-postfix-'));
      chmodSync(base, 0o755); // postfix's daemons run as the postfix user
      const conf = join(base, 'conf');
      const data = join(base, 'data');
      mkdirSync(conf);
      mkdirSync(data);
      mkdirSync(join(base, 'queue'));
      chownSync(data, Number(execFileSync('id', ['-u', 'postfix']).toString().trim()), 0);
      const port = await freePort();
      writeFileSync(join(conf, 'main.cf'), [
        'compatibility_level = 3.6',
        `queue_directory = ${join(base, 'queue')}`,
        `data_directory = ${data}`,
        'mail_owner = postfix',
        'setgid_group = postdrop',
        'myhostname = bench.localdomain',
        'mydestination =',
        'inet_interfaces = 127.0.0.1',
        'inet_protocols = ipv4',
        'mynetworks = 127.0.0.0/8',
        `relayhost = [127.0.0.1]:${sinkPort}`,
        'smtpd_relay_restrictions = permit_mynetworks, reject',
        ...(mode === 'ingest' ? ['smtpd_data_restrictions = check_client_access static:HOLD'] : []),
        'smtp_tls_security_level = none',
        'smtpd_tls_security_level = none',
        'default_process_limit = 100',
        `maillog_file_prefixes = ${base}`,
        `maillog_file = ${join(data, 'maillog')}`,
        '',
      ].join('\n'));
      const master = readFileSync('/etc/postfix/master.cf', 'utf8').split('\n').map((line) => {
        if (/^smtp\s+inet/.test(line)) return `127.0.0.1:${port} inet n - n - - smtpd`;
        const f = line.split(/\s+/);
        if (/^[a-z]/.test(line) && f.length >= 8) { f[4] = 'n'; return f.join(' '); }
        return line;
      }).join('\n');
      writeFileSync(join(conf, 'master.cf'), master);
      // postfix-script reads the default instance's main.cf even for -c; Debian's "No configuration" leaves none.
      if (!existsSync('/etc/postfix/main.cf')) writeFileSync('/etc/postfix/main.cf', 'compatibility_level = 3.6\n');
      execFileSync('postfix', ['-c', conf, 'check'], { stdio: 'ignore' });
      execFileSync('postfix', ['-c', conf, 'start'], { stdio: 'ignore' });
      await waitForPort(port);
      return port;
    },
    async stop() {
      try { execFileSync('postfix', ['-c', join(base, 'conf'), 'abort'], { stdio: 'ignore' }); } catch { /* already down */ }
      await sleep(500);
      rmSync(base, { recursive: true, force: true });
    },
  };
}

function spoolhouse(): Mta {
  let base = '';
  let proc: ChildProcess | undefined;
  return {
    name: 'spoolhouse',
    async start(mode, sinkPort) {
      base = mkdtempSync(join(tmpdir(), 'bench-spoolhouse-'));
      const port = await freePort();
      const config = {
        smtp: { listen: [`127.0.0.1:${port}`], hostname: 'bench.localdomain' },
        spool: { dir: join(base, 'spool') },
        admin: { listen: `127.0.0.1:${await freePort()}` },
        delivery: {
          smarthost: { host: `127.0.0.1:${sinkPort}`, tls: 'none' },
          limits: { default: { connections: 20, messagesPerConnection: 100, rate: null } },
        },
        rules: mode === 'ingest' ? [{ name: 'bench-hold', match: { sender: '*' }, hold: true }] : [],
        log: { level: 'warn', pretty: false },
      };
      const file = join(base, 'config.json');
      writeFileSync(file, JSON.stringify(config));
      proc = spawn(process.execPath, [join(ROOT, 'dist/src/main.js'), '--config', file], { stdio: ['ignore', 'ignore', 'inherit'] });
      await waitForPort(port, 60_000);
      return port;
    },
    async stop() {
      proc?.kill('SIGKILL');
      await sleep(300);
      rmSync(base, { recursive: true, force: true });
    },
  };
}

type Shape = 'kept' | 'per-mail';
const SHAPES: Shape[] = args.shape === 'both' ? ['kept', 'per-mail'] : [args.shape as Shape];
if (!SHAPES.every((x) => x === 'kept' || x === 'per-mail')) throw new Error(`--shape must be kept, per-mail or both, not ${args.shape}`);

async function measure(mta: Mta, sink: Sink, shape: Shape): Promise<Figures> {
  const warmup = Math.min(200, MESSAGES);
  let port = await mta.start('ingest', sink.port);
  await smtpSource(port, warmup, 'dest.example', shape);
  const ingestMs = await smtpSource(port, MESSAGES, 'dest.example', shape);
  await mta.stop();

  sink.clear();
  port = await mta.start('relay', sink.port);
  await smtpSource(port, warmup, 'dest.example', shape);
  await untilSinkHas(sink, warmup);
  sink.clear();
  const t0 = performance.now();
  await smtpSource(port, MESSAGES, 'dest.example', shape);
  await untilSinkHas(sink, MESSAGES);
  const e2eMs = performance.now() - t0;
  await mta.stop();
  return { ingestPerSec: Math.round(MESSAGES / (ingestMs / 1000)), endToEndPerSec: Math.round(MESSAGES / (e2eMs / 1000)) };
}

async function main(): Promise<void> {
  for (const tool of ['/usr/sbin/postfix', '/usr/sbin/smtp-source', '/usr/sbin/smtp-sink']) {
    if (!existsSync(tool)) throw new Error(`${tool} is missing: apt-get install postfix`);
  }
  const sink = new Sink(await freePort());
  sink.start();
  await waitForPort(sink.port);
  const results: Record<string, Record<string, Figures>> = {};
  const ratio: Record<string, { ingest: number; endToEnd: number }> = {};
  try {
    for (const shape of SHAPES) {
      for (const mta of [postfix(), spoolhouse()]) {
        if (args.only && args.only !== mta.name) continue;
        (results[shape] ??= {})[mta.name] = await measure(mta, sink, shape);
        console.error(`${shape} ${mta.name}: ${JSON.stringify(results[shape][mta.name])}`);
      }
      const p = results[shape]?.postfix;
      const s = results[shape]?.spoolhouse;
      if (p && s) ratio[shape] = { ingest: +(s.ingestPerSec / p.ingestPerSec).toFixed(2), endToEnd: +(s.endToEndPerSec / p.endToEndPerSec).toFixed(2) };
    }
  } finally {
    sink.stop();
  }
  const summary = { load: { messages: MESSAGES, sessions: SESSIONS, sizeBytes: SIZE }, results, ratio };
  console.log(JSON.stringify(summary, null, 2));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
