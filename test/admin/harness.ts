/**
 * A real admin server for the API and CLI tests: createAdminServer on 127.0.0.1 port 0 over a
 * real SpoolQueue in a temp dir, a config overlay file with an operator and a viewer token, and
 * a spool populated through the Queue interface with varied mail (priorities, domains, sizes,
 * ages, a bounce, a held mail, a deferred one with attempt history, finished ones).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { createAdminServer, type AdminServer } from '../../src/admin/index.js';
import { ConfigStore } from '../../src/config/store.js';
import { createMetrics, type Metrics } from '../../src/metrics.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { Queue, QueuedMail } from '../../src/queue/types.js';
import { enqueueRequestFor, type MailSpec } from '../helpers/test-mail.js';

export type { MailSpec } from '../helpers/test-mail.js';

export const OPERATOR = 'operator-token-0123456789abcdef';
export const VIEWER = 'viewer-token-0123456789abcdef';
export const PRIO = { urgent: 30, high: 20, normal: 10, bulk: 0 } as const;

export interface Harness {
  url: string;
  dir: string;
  queue: Queue;
  config: ConfigStore;
  metrics: Metrics;
  admin: AdminServer;
  logLines: string[];
  enqueue(m: MailSpec): Promise<QueuedMail>;
  api(method: string, path: string, opts?: { token?: string | null; body?: unknown; headers?: Record<string, string> }): Promise<Response>;
  json<T = any>(method: string, path: string, opts?: { token?: string | null; body?: unknown }): Promise<{ status: number; body: T }>;
  close(): Promise<void>;
}

export function captureLogger(lines: string[]) {
  const stream = new Writable({
    write(chunk, _enc, cb) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      cb();
    },
  });
  return pino({ level: 'info' }, stream);
}

export interface HarnessOptions {
  admin?: Record<string, unknown>;
  heartbeatMs?: number;
  uiDir?: string;
  overlay?: Record<string, unknown>;
  /** Mails per step of a bulk action (createAdminServer's bulkPageSize). */
  bulkPageSize?: number;
  /** How often the server samples queue depth for /api/stats/history (createAdminServer's historyEveryMs). */
  historyEveryMs?: number;
  /** What the admin server is given instead of the spool itself (e.g. a recording wrapper). */
  wrapQueue?: (queue: Queue) => Queue;
  /** Start on this data directory (a restart) instead of a new one; close() then leaves it in place. */
  dir?: string;
}

export async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'spoolhouse-admin-'));
  const overlayFile = join(dir, 'config.json');
  writeFileSync(overlayFile, JSON.stringify({
    smtp: { listen: ['127.0.0.1:0'] },
    spool: { dir: join(dir, 'spool') },
    admin: opts.admin ?? {
      listen: '127.0.0.1:0',
      token: OPERATOR,
      tokens: [{ name: 'viewer-vic', token: VIEWER, role: 'viewer' }],
    },
    log: { level: 'silent', pretty: false },
    ...(opts.overlay ?? {}),
  }, null, 2));
  const config = new ConfigStore(overlayFile);
  const logLines: string[] = [];
  const logger = captureLogger(logLines);
  const c = config.current;
  const queue = new SpoolQueue({ dir: c.spool.dir, retainFinishedMs: c.spool.retainFinished, maxSize: c.spool.maxSize, logger });
  await queue.start();
  const metrics = createMetrics();
  const admin = await createAdminServer({
    config, queue: opts.wrapQueue ? opts.wrapQueue(queue) : queue, logger, metrics, dataDir: dir,
    ...(opts.bulkPageSize ? { bulkPageSize: opts.bulkPageSize } : {}),
    ...(opts.historyEveryMs ? { historyEveryMs: opts.historyEveryMs } : {}),
    ...(opts.heartbeatMs ? { heartbeatMs: opts.heartbeatMs } : {}),
    ...(opts.uiDir ? { uiDir: opts.uiDir } : {}),
  });
  const url = await admin.listen();

  const enqueue = (m: MailSpec): Promise<QueuedMail> => queue.enqueue(enqueueRequestFor(m));

  const api: Harness['api'] = async (method, path, o = {}) => {
    const headers: Record<string, string> = { ...(o.headers ?? {}) };
    const token = o.token === undefined ? OPERATOR : o.token;
    if (token !== null) headers.authorization = `Bearer ${token}`;
    if (o.body !== undefined) headers['content-type'] = 'application/json';
    return fetch(url + path, { method, headers, ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}) });
  };
  const json: Harness['json'] = async (method, path, o = {}) => {
    const res = await api(method, path, o);
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };

  return {
    url, dir, queue, config, metrics, admin, logLines, enqueue, api, json,
    async close() {
      await admin.close();
      await queue.close();
      if (!opts.dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The varied population most tests start from; returns subject → mail. */
export async function populate(h: Harness): Promise<Map<string, QueuedMail>> {
  const specs: MailSpec[] = [
    { subject: 'urgent wire transfer', priority: PRIO.urgent, to: ['ceo@example.com'], ageMinutes: 2 },
    { subject: 'weekly newsletter 1', priority: PRIO.bulk, from: 'news@lists.example', to: ['a@example.org', 'b@example.org'], ageMinutes: 90 },
    { subject: 'weekly newsletter 2', priority: PRIO.bulk, from: 'news@lists.example', to: ['c@example.org'], ageMinutes: 30 },
    { subject: 'big report', priority: PRIO.high, to: ['boss@example.com'], bodyBytes: 200_000, ageMinutes: 7 },
    { subject: 'with attachment', to: ['dave@slow.example'], attachment: { filename: 'invoice.pdf', content: 'PDF-1.4 pretend', contentType: 'application/pdf' }, ageMinutes: 15 },
    { subject: 'bounce of something', from: '', to: ['alice@corp.example'], ageMinutes: 3000 },
    { subject: 'held by rule', to: ['eve@slow.example'], hold: 'rule quarantine', ageMinutes: 45 },
    { subject: '<img src=x onerror=alert(1)>', to: ['mallory@example.net'], html: '<p>hi</p><script>alert(1)</script><b>bold</b>' },
  ];
  const out = new Map<string, QueuedMail>();
  // Oldest first, so ids (ULIDs, monotonic) sort the same way as receivedAt.
  specs.sort((a, b) => (b.ageMinutes ?? 0) - (a.ageMinutes ?? 0));
  for (const s of specs) out.set(s.subject!, await h.enqueue(s));
  return out;
}
