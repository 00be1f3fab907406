// A Spoolhouse Kafka node as a child process, for the kill -9 test (needs `npx tsc -p .` first).
// Env: KAFKA_BROKERS, TOPIC_PREFIX, MAILS, LEASE_MS, DATA_DIR (its spool.dir; the test removes it). Enqueues MAILS mails
// (mail i to r<i>@d.example, body "Subject: m<i>\r\n\r\nbody <i>\r\n"), reserves them all with
// LEASE_MS leases, records "delivered" for every other one (out of order: odd ones first), sends
// the final "." of one of the rest (commitDelivery), waits until its body directory's checkpoint
// is past every content record (MAILS bodies, a tombstone per delivered mail), then prints one
// JSON line {"reserved":[...],"delivered":[...],"sending":id,"leaseUntil":ms} and waits to be killed.
// With MEMORY_BODIES=1 it keeps its own bodies in memory only (never written out while it runs), so
// its checkpoint stays below them; it then waits for ten checkpoint rounds instead. Either way it
// also waits for a view snapshot (every 100 ms here) written after its last state record.
import { KafkaQueue } from '../../dist/src/queue/kafka/kafka-queue.js';
import { newMailId } from '../../dist/src/queue/model.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';

const q = new KafkaQueue({
  brokers: process.env.KAFKA_BROKERS.split(','), clientId: 'child', topicPrefix: process.env.TOPIC_PREFIX,
  partitions: 3, replicationFactor: 1, nodeId: 'node-a', ssl: false, sasl: null, maxMessageSize: 10 * 1024 * 1024, dataDir: process.env.DATA_DIR, checkpointIntervalMs: 100, viewSnapshotIntervalMs: 100, ...(process.env.MEMORY_BODIES ? { memoryBodyAgeMs: 3_600_000 } : {}),
  priorities: { classes: { normal: 1 }, default: 'normal', lowPriorityShare: 0.1 }, logger: pino({ level: process.env.LOG_LEVEL ?? 'fatal' }, process.stderr),
});
process.on('unhandledRejection', (err) => { console.error('child failed:', err); process.exit(1); });
await q.start();
const n = Number(process.env.MAILS);
await Promise.all(Array.from({ length: n }, (_, i) => q.enqueue({
  id: newMailId(), sender: 'a@s.example', recipients: [{ address: `r${i}@d.example` }],
  body: Buffer.from(`Subject: m${i}\r\n\r\nbody ${i}\r\n`), priority: 1, notBefore: 0,
  client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } },
})));
const reserved = [];
while (reserved.length < n) reserved.push(...await q.reserveDue({ owner: 'node-a', limit: n, leaseMs: Number(process.env.LEASE_MS) }));
const delivered = [];
for (const m of reserved.filter((_, i) => i % 2 === 1).reverse()) {
  await q.recordAttempt(m.id, m.lease.token, { outcomes: [{ address: m.recipients[0].address, outcome: 'delivered' }] });
  delivered.push(m.id);
}
// One unfinished mail with its final "." in flight (commitDelivery) when the kill comes.
const sending = reserved.find((m) => !delivered.includes(m.id));
if (!(await q.commitDelivery(sending.id, sending.lease.token))) throw new Error('commitDelivery refused');
const lastWrite = Date.now();
const records = n + delivered.length;
const checkpointed = () => {
  try {
    return Object.values(JSON.parse(readFileSync(join(process.env.DATA_DIR, 'kafka-bodies', '.checkpoint.json'), 'utf8')).offsets).reduce((a, b) => a + b, 0);
  } catch {
    return 0;
  }
};
const snapshotAt = () => {
  try {
    return JSON.parse(readFileSync(join(process.env.DATA_DIR, 'kafka-view.snapshot'), 'utf8').split('\n', 1)[0]).writtenAt;
  } catch {
    return 0;
  }
};
if (process.env.MEMORY_BODIES) await new Promise((r) => setTimeout(r, 1_000));
else while (checkpointed() < records) await new Promise((r) => setTimeout(r, 50));
while (snapshotAt() <= lastWrite) await new Promise((r) => setTimeout(r, 50));
process.stdout.write(JSON.stringify({ reserved: reserved.map((m) => m.id), delivered, sending: sending.id, leaseUntil: Math.min(...reserved.map((m) => m.lease.until)) }) + '\n');
setInterval(() => {}, 1 << 30);
