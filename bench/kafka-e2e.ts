/**
 * End to end on the Kafka backend: one Spoolhouse node (dist/src/main.js, queue.backend "kafka")
 * fed by Debian's `smtp-source` (20 sessions of 5 KB mails by default, in the two shapes
 * bench/compare.ts feeds Postfix and the spool: sessions kept (`-d`, mail after mail on each
 * connection) and a connection per mail) and relaying by smarthost to `smtp-sink` (dumping each
 * mail to a file on tmpfs, so mails can be counted and timed).
 *
 * - ingest: every mail is held at the door (a hold rule), so only durable acceptance is measured
 *   (body + state acknowledged by Kafka with acks=-1): messages / second from smtp-source's start
 *   to its last 250. Same method as compare.ts, so the figures sit beside the spool's.
 * - end to end: a fresh node on fresh topics relays everything: messages / second from
 *   smtp-source's start until the sink holds them all. Latency per mail = the sink's file
 *   mtime (its final ".") − the time in the mail's queue id (a ULID stamped when the ingress had
 *   the whole DATA, before the 250), read from Spoolhouse's Received: header.
 *
 * Uses KAFKA_BROKERS when set; otherwise starts the test broker (test/kafka/start.sh) in a temp
 * dir on the same machine and stops it afterwards. Needs Debian's postfix package (smtp-source,
 * smtp-sink); run as root (smtp-sink -R chroots).
 *
 * Usage: npx tsc -p . && node dist/bench/kafka-e2e.js [--messages 4000] [--sessions 20] [--size 5120] [--warmup 200]
 *        [--shape kept|per-mail|both] [--broker-warmup 8000]
 * (BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR" profiles the server processes.)
 * Prints one JSON object with the figures on stdout (progress on stderr).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { decodeTime } from 'ulid';
import { benchBroker } from './kafka-broker.js';
import { freePort, overlay, parseShapes, percentile, Sink, sleep, smtpSource, waitForPort, type Shape } from './lib.js';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '4000' },
    sessions: { type: 'string', default: '20' },
    size: { type: 'string', default: '5120' },
    warmup: { type: 'string', default: '200' },
    shape: { type: 'string', default: 'both' },
    'broker-warmup': { type: 'string' },
  },
});
const SHAPES = parseShapes(args.shape);
const MESSAGES = Number(args.messages);
const SESSIONS = Number(args.sessions);
const SIZE = Number(args.size);
const WARMUP = Number(args.warmup);
/**
 * Mails sent end to end through a throwaway node before measuring, so that the broker's JVM has
 * compiled its hot paths (a production broker is long warm). Measured here: the first 10 s on a
 * fresh broker run at about half speed. Default 8000 when this bench starts its own broker, 0 with KAFKA_BROKERS.
 */
const BROKER_WARMUP = Number(args['broker-warmup'] ?? (process.env.KAFKA_BROKERS ? 0 : 8000));
const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');

/** One Spoolhouse node on the Kafka backend, on topics of its own. */
class Node {
  private proc?: ChildProcess;
  private base = '';
  port = 0;

  async start(mode: 'ingest' | 'relay', brokers: string[], sinkPort: number): Promise<void> {
    this.base = mkdtempSync(join(tmpdir(), 'bench-kafka-e2e-'));
    this.port = await freePort();
    const config = {
      smtp: { listen: [`127.0.0.1:${this.port}`], hostname: 'bench.localdomain' },
      queue: { backend: 'kafka' },
      kafka: { brokers, clientId: 'bench', topicPrefix: `bench-e2e-${mode}-${Date.now().toString(36)}`, partitions: 6, replicationFactor: 1, nodeId: 'bench' },
      spool: { dir: join(this.base, 'spool') },
      admin: { listen: `127.0.0.1:${await freePort()}`, token: 'bench-kafka-e2e-token-0123456789' },
      delivery: {
        smarthost: { host: `127.0.0.1:${sinkPort}`, tls: 'none' },
        limits: { default: { connections: 20, messagesPerConnection: 100, rate: null } },
      },
      rules: mode === 'ingest' ? [{ name: 'bench-hold', match: { sender: '*' }, hold: true }] : [],
      log: { level: 'warn', pretty: false },
    };
    const file = join(this.base, 'config.json');
    // BENCH_CONFIG: a JSON overlay on top (e.g. '{"delivery":{"threads":0}}'), for A/B runs.
    writeFileSync(file, JSON.stringify(overlay(config, process.env.BENCH_CONFIG ? JSON.parse(process.env.BENCH_CONFIG) as Record<string, unknown> : {})));
    // BENCH_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") is passed to the server's node, as bench/delivery.ts does.
    const nodeArgs = process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(' ') : [];
    this.proc = spawn(process.execPath, [...nodeArgs, join(ROOT, 'dist/src/main.js'), '--config', file], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    await waitForPort(this.port, 90_000, this.proc);
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (p && p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    if (this.base) rmSync(this.base, { recursive: true, force: true });
  }
}

interface Figures {
  ingestPerSec: number;
  endToEndPerSec: number;
  /** smtp-source's rate in the end-to-end run (acceptance while delivering). */
  ingestWhileRelayingPerSec: number;
  /** From the ingress having the whole DATA (queue id time) to the sink's final ".". */
  latencyMs: { measured: number; p50: number; p99: number; max: number };
  delivered: number;
}

async function measure(node: Node, sink: Sink, brokers: string[], shape: Shape): Promise<Figures> {
  // Ingest: held at the door, durable acceptance only.
  await node.start('ingest', brokers, sink.port);
  await smtpSource(node.port, WARMUP, { sessions: SESSIONS, size: SIZE, shape });
  const ingestMs = await smtpSource(node.port, MESSAGES, { sessions: SESSIONS, size: SIZE, shape });
  await node.stop();

  // End to end: a fresh node on fresh topics relays everything to the sink.
  sink.clear();
  await node.start('relay', brokers, sink.port);
  await smtpSource(node.port, WARMUP, { sessions: SESSIONS, size: SIZE, shape });
  await sink.untilHas(WARMUP);
  await sleep(500);
  sink.clear();
  const t0 = performance.now();
  const sourceMs = await smtpSource(node.port, MESSAGES, { sessions: SESSIONS, size: SIZE, shape });
  await sink.untilHas(MESSAGES);
  const e2eMs = performance.now() - t0;
  const receipts = sink.receipts();
  await node.stop();
  sink.clear();

  const latencies = receipts.flatMap((r) => (r.id ? [r.at - decodeTime(r.id)] : [])).sort((a, b) => a - b);
  return {
    ingestPerSec: Math.round(MESSAGES / (ingestMs / 1000)),
    endToEndPerSec: Math.round(MESSAGES / (e2eMs / 1000)),
    ingestWhileRelayingPerSec: Math.round(MESSAGES / (sourceMs / 1000)),
    latencyMs: {
      measured: latencies.length,
      p50: Math.round(percentile(latencies, 50)),
      p99: Math.round(percentile(latencies, 99)),
      max: Math.round(latencies.at(-1) ?? NaN),
    },
    delivered: receipts.length,
  };
}

async function main(): Promise<void> {
  for (const tool of ['/usr/sbin/smtp-source', '/usr/sbin/smtp-sink']) {
    if (!existsSync(tool)) throw new Error(`${tool} is missing: apt-get install postfix`);
  }
  const kafka = await benchBroker();
  const sink = new Sink(await freePort());
  sink.start();
  const node = new Node();
  try {
    await waitForPort(sink.port, 20_000);
    if (BROKER_WARMUP > 0) {
      console.error(`warming the broker up: ${BROKER_WARMUP} mails end to end on throwaway topics`);
      await node.start('relay', kafka.brokers, sink.port);
      await smtpSource(node.port, BROKER_WARMUP, { sessions: SESSIONS, size: SIZE, shape: 'kept' });
      await sink.untilHas(BROKER_WARMUP);
      await node.stop();
      sink.clear();
    }

    const results: Partial<Record<Shape, Figures>> = {};
    for (const shape of SHAPES) {
      results[shape] = await measure(node, sink, kafka.brokers, shape);
      console.error(`${shape}: ${JSON.stringify(results[shape])}`);
    }
    console.log(JSON.stringify({
      bench: 'kafka-e2e',
      load: { messages: MESSAGES, sessions: SESSIONS, sizeBytes: SIZE, warmup: WARMUP, brokerWarmup: BROKER_WARMUP, tool: 'smtp-source → Spoolhouse (kafka) → smtp-sink' },
      results,
      broker: kafka.description,
      loadAverage: Number(loadavg()[0]!.toFixed(2)),
    }, null, 2));
  } finally {
    await node.stop().catch(() => undefined);
    sink.stop();
    await kafka.stop();
  }
}

await main();
