/**
 * Issue 5's end-to-end proof on the real broker: two Spoolhouse server processes (dist/src/main.js,
 * build first with `npx tsc -p .`) on one Kafka topic set. Mail sent to node A is delivered to a
 * real receiving SMTP server by A or B; node A is killed with kill -9 mid-delivery, and every mail
 * A accepted is still delivered (by B), with duplicates counted and reported.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { deliveringServerOverlay, sendNumbered } from '../helpers/e2e.js';
import { startServer, type ServerProcess } from '../helpers/server-process.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';

const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function overlay(dir: string, rx: Receiver, node: string, topicPrefix: string): Record<string, unknown> {
  return deliveringServerOverlay({
    rx,
    spoolDir: join(dir, node),
    hostname: `${node}.spoolhouse.test`,
    // Slow enough that the kill lands in the middle of delivering.
    delivery: { limits: { default: { connections: 4, messagesPerConnection: 10, rate: '20/s' }, domains: {} } },
    extra: {
      queue: { backend: 'kafka' },
      kafka: { brokers: kafkaBrokers(), topicPrefix, partitions: 3, replicationFactor: 1, nodeId: node, clientId: node },
    },
  });
}

function message(seq: number): Buffer {
  return Buffer.from(
    `From: Sender <sender@origin.test>\r\nTo: user@dest.test\r\nSubject: kafka e2e ${seq}\r\n`
    + `Message-ID: <kafka-e2e-${seq}-${Date.now()}@origin.test>\r\nX-Seq: ${seq}\r\n\r\nHello number ${seq}.\r\n`,
  );
}

describe('two Spoolhouse processes on one Kafka', () => {
  it('delivers everything node A accepted, by A or B, when A is killed with kill -9 mid-delivery', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-kafka-e2e-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const rx = await startReceiver();
    cleanups.push(() => rx.close());
    const prefix = uniquePrefix('e2e');
    const start = async (node: string): Promise<ServerProcess> => {
      mkdirSync(join(dir, `cfg-${node}`), { recursive: true });
      const p = await startServer({ config: { dir: join(dir, `cfg-${node}`), overlay: overlay(dir, rx, node, prefix) } });
      cleanups.push(() => p.kill9());
      return p;
    };
    const a = await start('node-a');
    const b = await start('node-b');
    expect(b.smtp.length).toBeGreaterThan(0);

    // Nothing gets through until every mail is accepted (tries meanwhile are deferred by the 421),
    // so the kill lands mid-delivery however slowly a loaded machine accepted the mails.
    rx.script = { greeting: '421 4.3.2 Not yet' };
    const count = 300;
    const accepted = await sendNumbered(a.smtp[0]!.port, count, { connections: 10, message });
    expect(accepted.size).toBe(count);
    expect(rx.completed()).toHaveLength(0);
    rx.script = {};
    await rx.waitForCompleted(40, 60_000);
    await a.kill9();
    const atKill = rx.tally(accepted);
    const beforeKill = atKill.received.length;
    expect(beforeKill).toBeLessThan(count); // the kill really was mid-delivery
    const { received, missing, duplicates, times } = await rx.waitForDeliveries(accepted, 90_000);
    console.log(`kafka e2e: kill -9 of node A after ${beforeKill}/${count} delivered; ${received.length} deliveries in all, ${duplicates} duplicates, ${missing.length} missing`);
    expect(missing).toEqual([]);
    // A duplicate only for mail that had reached the remote 250 before node A died (A could not
    // record it); nodes never deliver one mail twice while both are alive.
    const dupSeqs = [...times].filter(([, n]) => n > 1).map(([s]) => s);
    expect(dupSeqs.filter((s) => !atKill.distinct.has(s))).toEqual([]);
  }, 180_000);
});
