/**
 * Kafka backend ingest: mails per second that `KafkaQueue.enqueue` makes durable (body and state
 * acknowledged with acks=-1 and applied by the node's view), with 20 concurrent writers of 5 KB
 * mails (the SMTP sessions of the ingest benchmark, without SMTP), plus latency percentiles.
 *
 * Uses KAFKA_BROKERS when set; otherwise starts the test broker (test/kafka/start.sh) in a temp
 * dir and stops it afterwards. Usage: node dist/bench/kafka-ingest.js [--seconds 10] [--writers 20] [--size 5120]
 */
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { KafkaQueue } from '../src/queue/kafka/kafka-queue.js';
import { newMailId } from '../src/queue/model.js';
import { benchBroker } from './kafka-broker.js';
import { percentile } from './lib.js';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    writers: { type: 'string', default: '20' },
    size: { type: 'string', default: '5120' },
  },
});



async function main(): Promise<void> {
  const kafka = await benchBroker();
  const q = new KafkaQueue({
    brokers: kafka.brokers, clientId: 'bench', topicPrefix: `bench-${Date.now().toString(36)}`, partitions: 6,
    replicationFactor: 1, nodeId: 'bench', ssl: false, sasl: null, maxMessageSize: 50 * 1024 * 1024,
    priorities: { classes: { normal: 1 }, default: 'normal', lowPriorityShare: 0.1 }, logger: pino({ level: 'warn' }),
  });
  try {
    await q.start();
    const seconds = Number(args.seconds);
    const writers = Number(args.writers);
    const body = Buffer.concat([Buffer.from('Subject: bench\r\n\r\n'), Buffer.alloc(Number(args.size) - 18, 'x')]);
    const latencies: number[] = [];
    const stopAt = Date.now() + seconds * 1000;
    const started = Date.now();
    await Promise.all(Array.from({ length: writers }, async () => {
      while (Date.now() < stopAt) {
        const t = performance.now();
        await q.enqueue({
          id: newMailId(), sender: 'bench@sender.example', recipients: [{ address: 'rcpt@dest.example' }], body,
          priority: 1, notBefore: 0, client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } },
        });
        latencies.push(performance.now() - t);
      }
    }));
    const elapsed = (Date.now() - started) / 1000;
    latencies.sort((a, b) => a - b);
    console.log(JSON.stringify({
      bench: 'kafka-ingest', writers, sizeBytes: body.length, mails: latencies.length,
      perSecond: Math.round(latencies.length / elapsed),
      latencyMs: { p50: +percentile(latencies, 50).toFixed(1), p99: +percentile(latencies, 99).toFixed(1), max: +(latencies.at(-1) ?? 0).toFixed(1) },
    }));
  } finally {
    await q.close();
    await kafka.stop();
  }
}

await main();
