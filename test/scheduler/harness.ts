/**
 * Real parts for scheduler tests: a SpoolQueue on a temp dir, the real Deliverer, the Scheduler,
 * and a ConfigStore over a temp overlay file (so config changes go through the same path as a
 * reload in production). Retry timings are compressed through the overlay, never by mocking time.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigStore } from '../../src/config/store.js';
import { Deliverer } from '../../src/delivery/deliverer.js';
import type { DeliveryAgent } from '../../src/delivery/types.js';
import { pino } from 'pino';
import { silentLogger, type Logger } from '../../src/logger.js';
import { createMetrics, type Metrics } from '../../src/metrics.js';
import { newMailId } from '../../src/queue/model.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { EnqueueRequest, Queue, QueuedMail } from '../../src/queue/types.js';
import { Scheduler } from '../../src/scheduler/index.js';

export interface SchedulerHarness {
  dir: string;
  store: ConfigStore;
  queue: Queue;
  delivery: Deliverer;
  scheduler: Scheduler;
  metrics: Metrics;
  /** Enqueues a mail (not started scheduler: a backlog). */
  enqueue(o: Partial<EnqueueRequest> & { to: string[]; body?: Buffer | string }): Promise<QueuedMail>;
  /** Every mail in the queue, oldest first. */
  mails(): Promise<QueuedMail[]>;
  body(id: string): Promise<Buffer>;
  close(): Promise<void>;
}

type Plain = Record<string, unknown>;
function merge(a: Plain, b: Plain): Plain {
  const out: Plain = { ...a };
  for (const [k, v] of Object.entries(b)) {
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && out[k] && typeof out[k] === 'object' ? merge(out[k] as Plain, v as Plain) : v;
  }
  return out;
}

export function testLogger(): Logger {
  return process.env.TEST_LOG ? pino({ level: process.env.TEST_LOG }) : silentLogger();
}

export interface SchedulerHarnessOptions {
  /** false: the scheduler is not started (build a backlog first, then `scheduler.start()`). */
  start?: boolean;
  /**
   * What the scheduler gets as its delivery stage, made from the real Deliverer: lets a test
   * observe or pause a step of a real delivery (e.g. the stillWanted() before the final ".").
   */
  wrapDelivery?: (real: Deliverer) => DeliveryAgent;
  /** Collects every log line at info level and above (JSON), for tests of what is logged. */
  logLines?: string[];
}

export async function startScheduler(overlay: Plain, o: SchedulerHarnessOptions = {}): Promise<SchedulerHarness> {
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-scheduler-'));
  const base: Plain = {
    smtp: { listen: ['127.0.0.1:0'], hostname: 'mx.spoolhouse.test' },
    spool: { dir: join(dir, 'spool') },
    log: { level: 'silent' },
    delivery: {
      heloName: 'mx.spoolhouse.test',
      tls: { opportunistic: false, verify: false },
      // Generous: a loopback connect never needs long, so only a stalled (loaded) process hits these.
      timeouts: { connect: '10s', greeting: '10s', command: '10s', data: '10s' },
      retry: { min: '200ms', max: '400ms', lifetime: '1h' },
      leaseTime: '5s',
    },
  };
  const overlayFile = join(dir, 'config.json');
  writeFileSync(overlayFile, JSON.stringify(merge(base, overlay)));
  const store = new ConfigStore(overlayFile);
  const lines = o.logLines;
  const logger = lines ? pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }) : testLogger();
  const queue = new SpoolQueue({ dir: join(dir, 'spool'), retainFinishedMs: 86_400_000, maxSize: 256 * 1024 * 1024, logger });
  await queue.start();
  const metrics = createMetrics();
  const delivery = new Deliverer({ config: () => store.current, logger });
  const scheduler = new Scheduler({ config: store, queue, delivery: o.wrapDelivery ? o.wrapDelivery(delivery) : delivery, logger, metrics, nodeName: 'test-node' });
  if (o.start !== false) scheduler.start();
  let closed = false;
  return {
    dir, store, queue, delivery, scheduler, metrics,
    enqueue({ to, body, ...rest }) {
      const id = rest.id ?? newMailId();
      const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body ?? makeMessage({ subject: `test ${id}` }));
      return queue.enqueue({
        id,
        sender: 'sender@origin.test',
        recipients: to.map((address) => ({ address })),
        body: bytes,
        priority: store.current.priorities.classes[store.current.priorities.default]!,
        notBefore: Date.now(),
        client: { address: '127.0.0.1', helo: 'client.test' },
        classification: { priority: { source: 'default' } },
        ...rest,
      });
    },
    async mails() {
      const items: QueuedMail[] = [];
      let cursor: string | undefined;
      do {
        const page = await queue.browse({}, { sort: 'received', order: 'asc', limit: 1000, ...(cursor ? { cursor } : {}) });
        items.push(...page.items);
        cursor = page.nextCursor;
      } while (cursor);
      return items;
    },
    async body(id) {
      const chunks: Buffer[] = [];
      for await (const c of (await queue.readBody(id)) as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
      return Buffer.concat(chunks);
    },
    async close() {
      if (closed) return;
      closed = true;
      await scheduler.stop(2_000);
      await delivery.close();
      await queue.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function makeMessage(o: { subject?: string; body?: string; from?: string; to?: string } = {}): string {
  return `From: ${o.from ?? 'sender@origin.test'}\r\nTo: ${o.to ?? 'user@dest.test'}\r\nSubject: ${o.subject ?? 'test'}\r\n`
    + `Message-ID: <${newMailId()}@origin.test>\r\nDate: ${new Date().toUTCString()}\r\n\r\n${o.body ?? 'Hello.\r\n.leading dot\r\n'}`;
}

export async function waitFor<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
