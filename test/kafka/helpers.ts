/**
 * Shared pieces of the Kafka test files: a KafkaQueue on given brokers, mail requests, body reads,
 * polling with a deadline, and a private broker (own run dir and ports) for tests that stop it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/logger.js';
import type { Logger } from '../../src/logger.js';
import { KafkaQueue, type KafkaQueueOptions } from '../../src/queue/kafka/kafka-queue.js';
import { newMailId } from '../../src/queue/model.js';
import type { EnqueueRequest } from '../../src/queue/types.js';
import { startBroker, stopBroker } from './global-setup.js';
import { freePort } from '../helpers/ports.js';
export { bodyOf } from '../helpers/body.js';

export const PRIORITIES = { classes: { bulk: 0, normal: 1, high: 2, urgent: 3 }, default: 'normal', lowPriorityShare: 0.1 };

export async function openKafkaQueue(
  brokers: string[], topicPrefix: string, o: Partial<KafkaQueueOptions> & { logger?: Logger } = {},
): Promise<KafkaQueue> {
  const q = new KafkaQueue({
    brokers, clientId: 'test', topicPrefix, partitions: 3, replicationFactor: 1, nodeId: null, ssl: false, sasl: null,
    maxMessageSize: 50 * 1024 * 1024, priorities: PRIORITIES, logger: silentLogger(), ...o,
  });
  await q.start();
  return q;
}

export function mailRequest(o: Partial<EnqueueRequest> = {}): EnqueueRequest {
  return {
    id: newMailId(),
    sender: 'alice@sender.example',
    recipients: [{ address: 'bob@dest.example' }],
    body: Buffer.from(`Subject: hi\r\n\r\nhello ${Math.random()}\r\n`),
    priority: 1,
    notBefore: 0,
    client: { address: '127.0.0.1', helo: 'client.example' },
    classification: { priority: { source: 'default' } },
    ...o,
  };
}


export async function until<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}


/** A broker of the test's own, for tests that stop or kill it. */
export interface PrivateBroker {
  brokers: string[];
  dir: string;
  stop(): Promise<void>;
  /** Starts it again on the same data and ports. */
  restart(): Promise<void>;
  destroy(): Promise<void>;
}

export async function privateBroker(): Promise<PrivateBroker> {
  const dir = await mkdtemp(join(tmpdir(), 'spoolhouse-kafka-own-'));
  const address = await startBroker(dir, await freePort(), await freePort());
  return {
    brokers: [address],
    dir,
    stop: () => stopBroker(dir),
    restart: async () => { await startBroker(dir); },
    destroy: async () => {
      await stopBroker(dir);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
