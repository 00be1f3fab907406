/**
 * Real Apache Kafka brokers (KRaft, single combined node, from Maven Central jars; see start.sh)
 * for the whole vitest run, in temp run dirs on free loopback ports: Kafka 4 for every Kafka
 * suite, and Kafka 3.9 (the previous line, still widely run) for the queue contract a second time
 * (test/contract/kafka39.test.ts). Both start side by side. Test files read the bootstrap
 * addresses with `kafkaBrokers()` (see ./broker.ts).
 *
 * - KAFKA_BROKERS set: that cluster is used for the Kafka 4 suites and no Kafka 4 is started;
 *   KAFKA39_BROKERS likewise for the 3.9 contract run.
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
const runDirs: string[] = [];


function kafkaTestsSelected(project: TestProject): boolean {
  const filters = (project.vitest as unknown as { filenamePattern?: string[] }).filenamePattern;
  if (!filters?.length) return true;
  const root = project.vitest.config.root;
  const files = [
    ...readdirSync(here).filter((f) => f.endsWith('.test.ts')).map((f) => join(here, f)),
    // The contract's Kafka runs: kafka.test.ts, kafka39.test.ts, kafka-random-ops.test.ts.
    ...readdirSync(join(here, '..', 'contract')).filter((f) => f.startsWith('kafka') && f.endsWith('.test.ts')).map((f) => join(here, '..', 'contract', f)),
  ];
  return files.some((file) => filters.some((f) => file.includes(f) || relative(root, file).includes(f.replace(/^\.\//, ''))));
}

/** Runs start.sh and returns the bootstrap address it prints. `profile` kafka3 is Kafka 3.9. */
export function startBroker(dir: string, port?: number, cport?: number, profile: 'kafka4' | 'kafka3' = 'kafka4'): Promise<string> {
  return new Promise((resolve, reject) => {
    const args = [dir, ...(port ? [String(port), String(cport)] : [])];
    const child = spawn(join(kafkaDir, 'start.sh'), args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KAFKA_PROFILE: profile } });
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
  const wanted = process.env.SPOOLHOUSE_SKIP_KAFKA !== '1' && kafkaTestsSelected(project);
  const [kafka4, kafka39] = await Promise.all([
    brokerFor('Kafka 4', process.env.KAFKA_BROKERS, wanted, 'kafka4'),
    brokerFor('Kafka 3.9', process.env.KAFKA39_BROKERS, wanted, 'kafka3'),
  ]);
  project.provide('kafkaBrokers', kafka4.brokers);
  project.provide('kafkaRunDir', kafka4.runDir);
  project.provide('kafka39Brokers', kafka39.brokers);
}

/** The given cluster, or a broker started here (when Kafka tests run), or none. */
async function brokerFor(name: string, given: string | undefined, wanted: boolean, profile: 'kafka4' | 'kafka3'): Promise<{ brokers: string; runDir: string }> {
  if (given) return { brokers: given, runDir: '' };
  if (!wanted) return { brokers: '', runDir: '' };
  const dir = mkdtempSync(join(tmpdir(), `spoolhouse-${profile}-`));
  runDirs.push(dir);
  const started = Date.now();
  const brokers = await startBroker(dir, await freePort(), await freePort(), profile);
  // eslint-disable-next-line no-console
  console.log(`${name} broker ${brokers} ready in ${Date.now() - started} ms (run dir ${dir})`);
  return { brokers, runDir: dir };
}

export async function teardown(): Promise<void> {
  await Promise.all(runDirs.splice(0).map(async (dir) => {
    await stopBroker(dir);
    rmSync(dir, { recursive: true, force: true });
  }));
}


declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string;
    kafkaRunDir: string;
    kafka39Brokers: string;
  }
}
