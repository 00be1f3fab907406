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
 * Postfix runs as a private instance (its own config and queue dirs), durable as shipped, logging
 * each mail to a file (maillog_file); Spoolhouse logs at info to a file too.
 *
 * Beside messages / second, each phase reports the CPU time (user + system) of the MTA's whole
 * process tree per mail (`cpuUsPerMail`, from /proc). On this 2-core machine the load generator,
 * the sink and the MTA together use both cores, so throughput follows CPU per mail, and CPU per
 * mail varies much less from run to run than throughput does.
 *
 * Two shapes of the same load, both reported:
 * - sessions kept (smtp-source -d): 20 SMTP sessions, each sending mail after mail over its own
 *   connection, as applications and relays that pool connections do (nodemailer's pool, Postfix's
 *   own smtp client with connection caching). This is "20 sessions of 5 KB mails" read literally.
 * - a connection per mail (smtp-source without -d): 20 in parallel, each connecting, sending one
 *   mail and quitting; this adds connection set-up and the greeting to every mail.
 *
 * Usage: node dist/bench/compare.js [--messages 8000] [--warmup 2000] [--sessions 20] [--size 5120] [--only postfix|spoolhouse]
 *        [--shape kept|per-mail|both] [--rounds 3]
 * With --rounds N both run N times, alternating, and the medians are reported (ratios of medians).
 * BENCH_CONFIG='{"delivery":{...}}' overlays Spoolhouse's config (A/B runs).
 * Needs Debian's postfix package (postfix, smtp-source, smtp-sink); run as root.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { freePort, machineCpuMs, machineShare, overlay, parseShapes, reapedChildrenCpuMs, treeCpuMs, Sink, sleep, smtpSource, waitForPort, type Shape } from './lib.js';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '8000' },
    warmup: { type: 'string', default: '2000' },
    sessions: { type: 'string', default: '20' },
    size: { type: 'string', default: '5120' },
    only: { type: 'string' },
    shape: { type: 'string', default: 'both' },
    rounds: { type: 'string', default: '3' },
  },
});
const MESSAGES = Number(args.messages);
const SESSIONS = Number(args.sessions);
const SIZE = Number(args.size);
/** Rounds of both MTAs, alternating; the figures are the medians (this machine's throughput varies by ±15 % run to run). */
const ROUNDS = Number(args.rounds);
/**
 * Mails sent to each freshly started MTA before measuring, in each phase: steady state, as an MTA
 * that has been running for a while. Node compiles hot code as it runs (its optimising compiler
 * works on other threads, on the same two cores), so a short warm-up charges Spoolhouse 30-40 %
 * more CPU per mail than it costs once warm (2026-12-03: 200 warm-up mails and 4000 measured gave
 * 1478-2013 µs per mail end to end; 200 and 8000, 1100-1300 µs). Postfix's C has no such phase.
 */
const WARMUP = Number(args.warmup);
const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');

interface Figures {
  ingestPerSec: number;
  endToEndPerSec: number;
  /** CPU (user + system) of the MTA's whole process tree per mail, in µs: its cost on a machine it saturates. */
  cpuUsPerMail?: { ingest: number; endToEnd: number };
  /**
   * The rest of the machine during each phase: CPU per mail of the load generator (smtp-source)
   * and of the sink, and how busy both cores were (1 = both fully busy). With the MTA's own CPU,
   * this shows where the cores went, and whether the MTA is waiting or the machine is full.
   */
  machine?: { ingest: MachineShare; endToEnd: MachineShare };
}

interface MachineShare {
  loadUsPerMail: number;
  sinkUsPerMail: number;
  busy: number;
  /** Share of both cores the host (hypervisor) took away meanwhile (counted in busy). */
  stolen: number;
}

interface Mta {
  name: string;
  start(mode: 'ingest' | 'relay', sinkPort: number): Promise<number>;
  stop(): Promise<void>;
  /** The root of its process tree (Postfix's master, Spoolhouse's node). */
  pid(): number | undefined;
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
    pid() {
      try {
        return Number(readFileSync(join(base, 'queue', 'pid', 'master.pid'), 'utf8').trim());
      } catch {
        return undefined;
      }
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
        // Info, to a file: every mail logged, as Postfix's maillog_file has it.
        log: { level: 'info', pretty: false },
      };
      const file = join(base, 'config.json');
      // BENCH_CONFIG: a JSON overlay on top (e.g. '{"delivery":{"threads":0}}'), for A/B runs.
      writeFileSync(file, JSON.stringify(overlay(config, process.env.BENCH_CONFIG ? JSON.parse(process.env.BENCH_CONFIG) as Record<string, unknown> : {})));
      const log = openSync(join(base, 'spoolhouse.log'), 'a');
      proc = spawn(process.execPath, [...(process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(' ') : []), join(ROOT, 'dist/src/main.js'), '--config', file], { stdio: ['ignore', log, 'inherit'] });
      closeSync(log);
      await waitForPort(port, 60_000);
      return port;
    },
    pid() {
      return proc?.pid;
    },
    async stop() {
      proc?.kill(process.env.BENCH_NODE_ARGS ? 'SIGINT' : 'SIGKILL');
      await sleep(300);
      rmSync(base, { recursive: true, force: true });
    },
  };
}

const SHAPES = parseShapes(args.shape);


async function measure(mta: Mta, sink: Sink, shape: Shape): Promise<Figures> {
  const rest = () => {
    const sinkCpu = treeCpuMs(sink.pid() ?? -1);
    return { load: reapedChildrenCpuMs(), sink: sinkCpu.user + sinkCpu.system, machine: machineCpuMs() };
  };
  const share = (a: ReturnType<typeof rest>, b: ReturnType<typeof rest>): MachineShare => ({
    loadUsPerMail: Math.round(((b.load - a.load) * 1000) / MESSAGES),
    sinkUsPerMail: Math.round(((b.sink - a.sink) * 1000) / MESSAGES),
    ...machineShare(a.machine, b.machine),
  });
  const cpu = (): number => {
    const c = treeCpuMs(mta.pid() ?? -1);
    return c.user + c.system;
  };
  let port = await mta.start('ingest', sink.port);
  await smtpSource(port, WARMUP, { sessions: SESSIONS, size: SIZE, shape });
  let cpu0 = cpu();
  let rest0 = rest();
  const ingestMs = await smtpSource(port, MESSAGES, { sessions: SESSIONS, size: SIZE, shape });
  const ingestCpuMs = cpu() - cpu0;
  const ingestRest = share(rest0, rest());
  await mta.stop();

  sink.clear();
  port = await mta.start('relay', sink.port);
  await smtpSource(port, WARMUP, { sessions: SESSIONS, size: SIZE, shape });
  await sink.untilHas(WARMUP);
  sink.clear();
  cpu0 = cpu();
  rest0 = rest();
  const t0 = performance.now();
  await smtpSource(port, MESSAGES, { sessions: SESSIONS, size: SIZE, shape });
  await sink.untilHas(MESSAGES);
  const e2eMs = performance.now() - t0;
  const e2eCpuMs = cpu() - cpu0;
  const e2eRest = share(rest0, rest());
  await mta.stop();
  return {
    ingestPerSec: Math.round(MESSAGES / (ingestMs / 1000)),
    endToEndPerSec: Math.round(MESSAGES / (e2eMs / 1000)),
    cpuUsPerMail: { ingest: Math.round((ingestCpuMs * 1000) / MESSAGES), endToEnd: Math.round((e2eCpuMs * 1000) / MESSAGES) },
    machine: { ingest: ingestRest, endToEnd: e2eRest },
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : Math.round((s[m - 1]! + s[m]!) / 2);
}

async function main(): Promise<void> {
  for (const tool of ['/usr/sbin/postfix', '/usr/sbin/smtp-source', '/usr/sbin/smtp-sink']) {
    if (!existsSync(tool)) throw new Error(`${tool} is missing: apt-get install postfix`);
  }
  const sink = new Sink(await freePort());
  sink.start();
  await waitForPort(sink.port);
  const runs: Record<string, Record<string, Figures[]>> = {};
  const results: Record<string, Record<string, Figures>> = {};
  const ratio: Record<string, { ingest: number; endToEnd: number; cpuPerMail: { ingest: number; endToEnd: number } }> = {};
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const shape of SHAPES) {
        for (const mta of [postfix(), spoolhouse()]) {
          if (args.only && args.only !== mta.name) continue;
          const f = await measure(mta, sink, shape);
          ((runs[shape] ??= {})[mta.name] ??= []).push(f);
          console.error(`round ${round} ${shape} ${mta.name}: ${JSON.stringify(f)}`);
        }
      }
    }
    for (const shape of SHAPES) {
      for (const [name, list] of Object.entries(runs[shape] ?? {})) {
        (results[shape] ??= {})[name] = {
          ingestPerSec: median(list.map((f) => f.ingestPerSec)),
          endToEndPerSec: median(list.map((f) => f.endToEndPerSec)),
          cpuUsPerMail: { ingest: median(list.map((f) => f.cpuUsPerMail?.ingest ?? NaN)), endToEnd: median(list.map((f) => f.cpuUsPerMail?.endToEnd ?? NaN)) },
        };
      }
      const p = results[shape]?.postfix;
      const s = results[shape]?.spoolhouse;
      if (p && s) {
        ratio[shape] = {
          ingest: +(s.ingestPerSec / p.ingestPerSec).toFixed(2),
          endToEnd: +(s.endToEndPerSec / p.endToEndPerSec).toFixed(2),
          // Postfix's CPU per mail over Spoolhouse's: how many times less CPU a mail costs here.
          cpuPerMail: { ingest: +(p.cpuUsPerMail!.ingest / s.cpuUsPerMail!.ingest).toFixed(2), endToEnd: +(p.cpuUsPerMail!.endToEnd / s.cpuUsPerMail!.endToEnd).toFixed(2) },
        };
      }
    }
  } finally {
    sink.stop();
  }
  const summary = { load: { messages: MESSAGES, warmup: WARMUP, sessions: SESSIONS, sizeBytes: SIZE, rounds: ROUNDS }, results, ratio, ...(ROUNDS > 1 ? { runs } : {}) };
  console.log(JSON.stringify(summary, null, 2));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
