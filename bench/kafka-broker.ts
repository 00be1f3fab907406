/**
 * The Kafka the benchmarks use: the cluster in KAFKA_BROKERS when set, otherwise the test broker
 * (test/kafka/start.sh) started in a temp dir on this machine, stopped and removed by `stop()`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startBroker, stopBroker } from '../test/kafka/global-setup.js';
import { freePort } from './lib.js';

export interface BenchBroker {
  brokers: string[];
  /** What the figures were measured against, for the report. */
  description: string;
  stop(): Promise<void>;
}

export async function benchBroker(): Promise<BenchBroker> {
  const given = process.env.KAFKA_BROKERS;
  if (given) return { brokers: given.split(','), description: given, stop: async () => undefined };
  const runDir = mkdtempSync(join(tmpdir(), 'spoolhouse-bench-kafka-'));
  const t0 = Date.now();
  const address = await startBroker(runDir, await freePort(), await freePort());
  process.stderr.write(`broker ${address} started in ${Date.now() - t0} ms\n`);
  return {
    brokers: address.split(','),
    description: 'test broker on this machine (test/kafka/start.sh)',
    async stop() {
      await stopBroker(runDir);
      rmSync(runDir, { recursive: true, force: true });
    },
  };
}
