/**
 * Delivery-stage throughput (not a test): 20 concurrent deliver() calls, 100 messages of 5 KB
 * each per connection, to one receiving smtp-server on loopback (in the same process, so the
 * figure includes the receiver's own cost). Run: `npx vitest bench --run test/delivery/throughput.bench.ts`.
 */
import { afterAll, beforeAll, bench } from 'vitest';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { hostsFor, makeDeliverer, outbound, testConfig } from './harness.js';

const TOTAL = 2000;
const WORKERS = 20;
const BATCH = 100;
const body = Buffer.from('Subject: bench\r\n\r\n' + ('x'.repeat(76) + '\r\n').repeat(65));
let rx: Receiver;
let deliver: (n: number) => Promise<void>;

beforeAll(async () => {
  rx = await startReceiver();
  const deliverer = makeDeliverer(testConfig({ delivery: { routes: { 'bench.test': rx.address } } }));
  const dest = await hostsFor(deliverer, 'bench.test');
  deliver = async (n) => {
    const results = await deliverer.deliver(dest, Array.from({ length: n }, () => outbound({ to: ['a@bench.test'], body })));
    for (const r of results) if (r.recipients[0]?.outcome !== 'delivered') throw new Error(`not delivered: ${JSON.stringify(r)}`);
  };
});
afterAll(async () => {
  await rx.close();
});

bench(`${TOTAL} messages of ${body.length} B, ${WORKERS} connections at a time, ${BATCH} per connection`, async () => {
  let left = TOTAL;
  await Promise.all(Array.from({ length: WORKERS }, async () => {
    while (left > 0) {
      const n = Math.min(BATCH, left);
      left -= n;
      await deliver(n);
    }
  }));
}, { iterations: 3, warmupIterations: 1 });
