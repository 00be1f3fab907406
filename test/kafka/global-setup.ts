/**
 * One real Apache Kafka broker (KRaft, single combined node, from Maven Central jars; see start.sh)
 * for the whole vitest run, in a temp run dir on free loopback ports. Test files read its bootstrap
 * address with `inject('kafkaBrokers')` (see ./broker.ts).
 *
 * - KAFKA_BROKERS set: that cluster is used and nothing is started.
 * - SPOOLHOUSE_SKIP_KAFKA=1: nothing is started and `kafkaBrokers` is ''; a Kafka test then fails
 *   (it never skips), so only use it for runs that select no Kafka test.
 * - No Kafka test selected by the CLI filters: nothing is started either (saves ~330 MB and ~3 s).
 * The broker's run dir is exported as KAFKA_TEST_RUN_DIR (provided as `kafkaRunDir`) so the
 * broker-down test can stop and restart it on the same data.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { freePort } from '../helpers/ports.js';

const here = fileURLToPath(new URL('.', import.meta.url));
/** test/kafka in the source tree, also when this runs compiled from dist/test/kafka (benchmarks). */
const kafkaDir = existsSync(join(here, 'start.sh')) ? here : join(here, '..', '..', '..', 'test', 'kafka');
let runDir: string | undefined;


function kafkaTestsSelected(project: TestProject): boolean {
  const filters = (project.vitest as unknown as { filenamePattern?: string[] }).filenamePattern;
  if (!filters?.length) return true;
  const root = project.vitest.config.root;
  const files = [
    ...readdirSync(here).filter((f) => f.endsWith('.test.ts')).map((f) => join(here, f)),
    join(here, '..', 'contract', 'kafka.test.ts'),
  ];
  return files.some((file) => filters.some((f) => file.includes(f) || relative(root, file).includes(f.replace(/^\.\//, ''))));
}

/** Runs start.sh and returns the bootstrap address it prints. */
export function startBroker(dir: string, port?: number, cport?: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const args = [dir, ...(port ? [String(port), String(cport)] : [])];
    const child = spawn(join(kafkaDir, 'start.sh'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('error', reject);
    child.on('exit', (code) => {
      // Maven may leave ANSI codes on the terminal; take the address only.
      const address = /127\.0\.0\.1:\d+/.exec(out)?.[0];
      if (code === 0 && address) resolve(address);
      else reject(new Error(`kafka start.sh failed (exit ${code}): ${err.slice(-2000)}`));
    });
  });
}

export function brokerPid(dir: string): number {
  return Number(readFileSync(join(dir, 'broker.pid'), 'utf8').trim());
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** SIGTERM (controlled shutdown, 1–2 s), then SIGKILL after `graceMs`. */
export async function stopBroker(dir: string, graceMs = 20_000): Promise<void> {
  let pid: number;
  try { pid = brokerPid(dir); } catch { return; }
  if (!alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  const until = Date.now() + graceMs;
  while (alive(pid) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  while (alive(pid)) await new Promise((r) => setTimeout(r, 50));
}

export async function setup(project: TestProject): Promise<void> {
  if (process.env.KAFKA_BROKERS) {
    project.provide('kafkaBrokers', process.env.KAFKA_BROKERS);
    project.provide('kafkaRunDir', '');
    return;
  }
  if (process.env.SPOOLHOUSE_SKIP_KAFKA === '1' || !kafkaTestsSelected(project)) {
    project.provide('kafkaBrokers', '');
    project.provide('kafkaRunDir', '');
    return;
  }
  runDir = mkdtempSync(join(tmpdir(), 'spoolhouse-kafka-'));
  const started = Date.now();
  const brokers = await startBroker(runDir, await freePort(), await freePort());
  // eslint-disable-next-line no-console
  console.log(`kafka broker ${brokers} ready in ${Date.now() - started} ms (run dir ${runDir})`);
  project.provide('kafkaBrokers', brokers);
  project.provide('kafkaRunDir', runDir);
}

export async function teardown(): Promise<void> {
  if (!runDir) return;
  await stopBroker(runDir);
  rmSync(runDir, { recursive: true, force: true });
  runDir = undefined;
}


declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string;
    kafkaRunDir: string;
  }
}
