/**
 * Starts a real SmtpIngress on 127.0.0.1:0 over a real queue in a temp dir, with a temp
 * overlay config file (so hot reload goes through ConfigStore like in production).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { ConfigStore } from '../../src/config/store.js';
import { SmtpIngress, type ListenerInfo } from '../../src/ingress/index.js';
import { silentLogger } from '../../src/logger.js';
import { createMetrics, type Metrics } from '../../src/metrics.js';
import type { Queue, QueuedMail } from '../../src/queue/types.js';
import { startDnsServer, type DnsServer, type DnsZone } from '../helpers/dns-server.js';
import { SmtpClient } from '../helpers/smtp-client.js';

export interface Harness {
  dir: string;
  store: ConfigStore;
  queue: Queue;
  ingress: SmtpIngress;
  metrics: Metrics;
  listeners: ListenerInfo[];
  port: number;
  /** Every mail in the queue, oldest first. */
  mails(): Promise<QueuedMail[]>;
  body(id: string): Promise<string>;
  /** Applies a config patch (validated, saved, 'change' emitted). */
  update(patch: Record<string, unknown>): void;
  close(): Promise<void>;
}

export type QueueFactory = (o: { dir: string }) => Promise<Queue>;

export async function defaultQueue(o: { dir: string }): Promise<Queue> {
  const { SpoolQueue } = await import('../../src/queue/spool/spool-queue.js');
  return new SpoolQueue({ dir: o.dir, retainFinishedMs: 86_400_000, maxSize: 256 * 1024 * 1024, logger: silentLogger() });
}

export async function startIngress(overlay: Record<string, unknown> = {}, o: { queue?: QueueFactory; spoolDir?: string } = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-ingress-'));
  const spoolDir = o.spoolDir ?? join(dir, 'spool');
  const base = {
    smtp: { listen: ['127.0.0.1:0'], hostname: 'mx.test.example', earlyTalkerDelay: '0ms' },
    spool: { dir: spoolDir },
    log: { level: 'silent' },
  };
  const overlayFile = join(dir, 'config.json');
  writeFileSync(overlayFile, JSON.stringify(merge(base, overlay)));
  const store = new ConfigStore(overlayFile);
  const queue = await (o.queue ?? defaultQueue)({ dir: spoolDir });
  await queue.start();
  const metrics = createMetrics();
  const ingress = new SmtpIngress({ config: store, queue, logger: silentLogger(), metrics });
  const listeners = await ingress.listen();
  return {
    dir, store, queue, ingress, metrics, listeners, port: listeners[0]!.port,
    async mails() {
      const page = await queue.browse({}, { sort: 'received', order: 'asc', limit: 1000 });
      return page.items;
    },
    async body(id: string) {
      const stream = await queue.readBody(id);
      const chunks: Buffer[] = [];
      for await (const c of stream as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
      return Buffer.concat(chunks).toString('utf8');
    },
    update(patch) {
      store.update(patch);
    },
    async close() {
      await ingress.close();
      await queue.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function merge(a: unknown, b: unknown): unknown {
  if (typeof a !== 'object' || a === null || Array.isArray(a) || typeof b !== 'object' || b === null || Array.isArray(b)) return b === undefined ? a : b;
  const out: Record<string, unknown> = { ...(a as Record<string, unknown>) };
  for (const [k, v] of Object.entries(b)) out[k] = merge(out[k], v);
  return out;
}

/** Metric value of a counter with labels, 0 when absent. */
export async function counter(metrics: Metrics, name: 'acceptedTotal' | 'rejectedTotal', labels: Record<string, string>): Promise<number> {
  const data = await metrics[name].get();
  const v = data.values.find((x) => Object.entries(labels).every(([k, val]) => (x.labels as Record<string, string | number | undefined>)[k] === val));
  return v?.value ?? 0;
}

/**
 * A raw client past the greeting and EHLO (and AUTH PLAIN when `auth` is given, with allowInsecure
 * on the server), pushed onto `track` so that the test's afterEach can QUIT it.
 */
export async function greetedClient(port: number, o: { host?: string; auth?: { user: string; pass: string }; track?: SmtpClient[]; proxyFrom?: string; helo?: string } = {}): Promise<SmtpClient> {
  const c = await SmtpClient.connect({ port, ...(o.host ? { host: o.host } : {}) });
  o.track?.push(c);
  // As a balancer of a `proxyProtocol` listener would: a PROXY v1 line naming the client first.
  if (o.proxyFrom) c.write(o.proxyFrom.includes(':') ? `PROXY TCP6 ${o.proxyFrom} ::1 40000 25\r\n` : `PROXY TCP4 ${o.proxyFrom} 127.0.0.1 40000 25\r\n`);
  const greeting = await c.read();
  expect(greeting.code).toBe(220);
  expect((await c.ehlo(o.helo)).code).toBe(250);
  if (o.auth) expect((await c.command(`AUTH PLAIN ${Buffer.from(`\0${o.auth.user}\0${o.auth.pass}`).toString('base64')}`)).code).toBe(235);
  return c;
}

/** An auth.users file in `dir`: bcrypt hashes (cost 4, quick) of the given passwords. */
export function writeUsersFile(dir: string, users: Record<string, string>): string {
  const file = join(dir, 'users');
  writeFileSync(file, Object.entries(users).map(([u, p]) => `${u}:${bcrypt.hashSync(p, 4)}`).join('\n') + '\n');
  return file;
}

export interface BalancedIngress {
  readonly h: Harness;
  readonly dns: DnsServer;
  /** A greeted session from `client` (any address, named by the balancer's PROXY header), closed after each test. */
  from(client: string, o?: { helo?: string; auth?: { user: string; pass: string } }): Promise<SmtpClient>;
}

/**
 * For a test file of the ingress's client and sender checks: an ingress behind a PROXY balancer on
 * loopback, so that clients can have any address (10.0.0.0/8 is in relay.networks with loopback;
 * other addresses are outside), taking mail for local.example, with AUTH users (default roamer,
 * password pw-roamer), asking a DNS server of the file's own that answers from `zone`. `overlay`
 * adds keys to smtp and relay, and may set the DNS timeout. Started before the file's tests,
 * sessions closed after each, everything stopped after the last.
 */
export function balancedIngressPerFile(
  zone: DnsZone,
  overlay: { smtp?: Record<string, unknown>; relay?: Record<string, unknown>; dnsTimeout?: string; users?: Record<string, string> } = {},
): BalancedIngress {
  let h: Harness | undefined;
  let dns: DnsServer | undefined;
  let dir: string | undefined;
  const clients: SmtpClient[] = [];
  beforeAll(async () => {
    dns = await startDnsServer(zone);
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-balanced-'));
    const users = writeUsersFile(dir, overlay.users ?? { roamer: 'pw-roamer' });
    h = await startIngress({
      smtp: { listen: [{ address: '127.0.0.1:0', proxyProtocol: ['127.0.0.0/8'] }], ...overlay.smtp },
      relay: { networks: ['127.0.0.0/8', '10.0.0.0/8'], domains: ['local.example'], ...overlay.relay },
      auth: { users, allowInsecure: true },
      delivery: { dns: { servers: [dns.address], timeout: overlay.dnsTimeout ?? '500ms' } },
    });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h?.close();
    await dns?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return {
    get h() { return h!; },
    get dns() { return dns!; },
    from: (client, o = {}) => greetedClient(h!.port, { proxyFrom: client, track: clients, ...o }),
  };
}

