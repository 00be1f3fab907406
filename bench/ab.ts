/**
 * A/B of two builds of the server (or one build with two configs or node flags), interleaved:
 * A, B, then B, A, and so on, so that both see the same stretches of this host, whose speed
 * drifts by ±15–25 % within minutes. Not part of `npm run bench` (it needs two builds); it is how
 * a change's effect on speed is measured before it is kept.
 *
 * Each run starts a fresh server on a fresh spool, sends warm-up mail from Debian's `smtp-source`
 * (20 sessions of 5 KB, sessions kept, by default), then measures:
 * - ingest: mail is held at the door (a hold rule); messages/s from smtp-source's start to its end.
 * - e2e: relayed by smarthost to `smtp-sink`; messages/s until the sink holds them all, and the
 *   backlog when smtp-source ended (small: delivery keeps up; large: delivery is the limit).
 * Per run also the server's CPU per mail (whole process, every thread) and its main thread's
 * (/proc/PID/task/PID), how busy the main thread and the machine were, and the host's steal.
 *
 * Usage: npx tsc -p . && node dist/bench/ab.js --a DIST_A/src/main.js --b DIST_B/src/main.js
 *        [--mode ingest|e2e] [--pairs 4] [--messages 8000] [--warmup 2000] [--shape kept|per-mail]
 *        [--config-a JSON] [--config-b JSON] [--node-a="FLAGS"] [--node-b="FLAGS"]
 * (node flags with `=`: parseArgs takes a value that starts with a dash only that way.)
 * (one build against itself with another config: --a and --b the same file, --config-b '{"spool":{...}}').
 * A second build: `git worktree add /tmp/b REF && cd /tmp/b && ln -s $PWD/node_modules . && npx tsc -p .`
 * (from the main checkout's directory for $PWD). Prints one JSON object (medians per side) on stdout.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { freePort, machineCpuMs, machineShare, mainThreadCpuMs, overlay, parseShapes, percentileOf, runBench, Sink, smtpSource, treeCpuMs, waitForPort } from './lib.js';

const { values: args } = parseArgs({
  options: {
    a: { type: 'string' },
    b: { type: 'string' },
    mode: { type: 'string', default: 'e2e' },
    pairs: { type: 'string', default: '4' },
    messages: { type: 'string', default: '8000' },
    warmup: { type: 'string', default: '2000' },
    shape: { type: 'string', default: 'kept' },
    'config-a': { type: 'string', default: '{}' },
    'config-b': { type: 'string', default: '{}' },
    'node-a': { type: 'string', default: '' },
    'node-b': { type: 'string', default: '' },
  },
});
if (!args.a || !args.b) throw new Error('--a and --b name the two main.js files (see the usage at the top of bench/ab.ts)');
if (args.mode !== 'ingest' && args.mode !== 'e2e') throw new Error(`--mode must be ingest or e2e, not ${args.mode}`);
const MODE = args.mode;
const MESSAGES = Number(args.messages);
const WARMUP = Number(args.warmup);
const LOAD = { sessions: 20, size: 5120, shape: parseShapes(args.shape)[0]! };

interface Side {
  main: string;
  config: Record<string, unknown>;
  nodeArgs: string[];
}

interface Run {
  perSec: number;
  cpuUsPerMail: number;
  mainThreadUsPerMail: number;
  mainThreadBusy: number;
  backlogAtIngestEnd?: number;
  machineBusy: number;
  stolen: number;
}

async function run(side: Side, sink: Sink | undefined): Promise<Run> {
  const base = mkdtempSync(join(tmpdir(), 'bench-ab-'));
  const port = await freePort();
  const config = overlay({
    smtp: { listen: [`127.0.0.1:${port}`], hostname: 'bench.localdomain' },
    spool: { dir: join(base, 'spool') },
    admin: { listen: `127.0.0.1:${await freePort()}` },
    log: { level: 'info', pretty: false },
    ...(sink
      ? { delivery: { smarthost: { host: `127.0.0.1:${sink.port}`, tls: 'none' }, limits: { default: { connections: 20, messagesPerConnection: 100, rate: null } } } }
      : { rules: [{ name: 'bench-hold', match: { sender: '*' }, hold: true }] }),
  }, side.config);
  writeFileSync(join(base, 'config.json'), JSON.stringify(config));
  const proc = spawn(process.execPath, [...side.nodeArgs, side.main, '--config', join(base, 'config.json')], { stdio: ['ignore', openSync(join(base, 'server.log'), 'a'), 'inherit'] });
  try {
    await waitForPort(port, 60_000);
    sink?.clear();
    await smtpSource(port, WARMUP, LOAD);
    if (sink) {
      await sink.untilHas(WARMUP);
      sink.clear();
    }
    const pid = proc.pid!;
    const m0 = machineCpuMs();
    const c0 = treeCpuMs(pid);
    const t0Main = mainThreadCpuMs(pid);
    const t0 = performance.now();
    await smtpSource(port, MESSAGES, LOAD);
    const backlog = sink ? MESSAGES - sink.count() : undefined;
    if (sink) await sink.untilHas(MESSAGES);
    const ms = performance.now() - t0;
    const c1 = treeCpuMs(pid);
    const mainMs = mainThreadCpuMs(pid) - t0Main;
    const m1 = machineCpuMs();
    const machine = machineShare(m0, m1);
    return {
      perSec: Math.round((MESSAGES * 1000) / ms),
      cpuUsPerMail: Math.round(((c1.user + c1.system - c0.user - c0.system) * 1000) / MESSAGES),
      mainThreadUsPerMail: Math.round((mainMs * 1000) / MESSAGES),
      mainThreadBusy: +(mainMs / ms).toFixed(2),
      ...(backlog === undefined ? {} : { backlogAtIngestEnd: backlog }),
      machineBusy: machine.busy,
      stolen: machine.stolen,
    };
  } finally {
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
    rmSync(base, { recursive: true, force: true });
  }
}

runBench(async () => {
  const sides: Record<'A' | 'B', Side> = {
    A: { main: args.a!, config: JSON.parse(args['config-a']!) as Record<string, unknown>, nodeArgs: args['node-a']!.split(' ').filter(Boolean) },
    B: { main: args.b!, config: JSON.parse(args['config-b']!) as Record<string, unknown>, nodeArgs: args['node-b']!.split(' ').filter(Boolean) },
  };
  let sink: Sink | undefined;
  if (MODE === 'e2e') {
    sink = new Sink(await freePort());
    sink.start();
    await waitForPort(sink.port);
  }
  const runs: Record<'A' | 'B', Run[]> = { A: [], B: [] };
  try {
    for (let i = 0; i < Number(args.pairs); i++) {
      for (const k of i % 2 ? (['B', 'A'] as const) : (['A', 'B'] as const)) {
        const r = await run(sides[k], sink);
        runs[k].push(r);
        process.stderr.write(`${k} ${JSON.stringify(r)}\n`);
      }
    }
  } finally {
    sink?.stop();
  }
  const median = (k: 'A' | 'B', f: keyof Run) => percentileOf(runs[k].map((r) => Number(r[f] ?? NaN)), 50);
  const summary = (k: 'A' | 'B') => ({
    main: sides[k].main,
    perSec: median(k, 'perSec'),
    cpuUsPerMail: median(k, 'cpuUsPerMail'),
    mainThreadUsPerMail: median(k, 'mainThreadUsPerMail'),
    runs: runs[k].map((r) => r.perSec),
  });
  console.log(JSON.stringify({ bench: 'ab', mode: MODE, load: { ...LOAD, messages: MESSAGES, warmup: WARMUP }, A: summary('A'), B: summary('B') }, null, 2));
});
