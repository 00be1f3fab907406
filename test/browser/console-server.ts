/**
 * The real thing the console tests drive: the admin server from createAdminServer over a real
 * SpoolQueue in a temp dir, with a known operator token, populated through queue.enqueue with
 * real RFC 5322 messages (one of them hostile: markup in the subject, a header, the body and an
 * attachment's file name). Nothing is mocked; the browser talks to it over loopback.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createAdminServer } from '../../src/admin/index.js';
import { ConfigStore } from '../../src/config/store.js';
import { Deliverer, destinationView } from '../../src/delivery/deliverer.js';
import { SmtpIngress } from '../../src/ingress/index.js';
import { Scheduler } from '../../src/scheduler/index.js';
import { silentLogger } from '../../src/logger.js';
import { createMetrics } from '../../src/metrics.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { Queue, QueuedMail } from '../../src/queue/types.js';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { enqueueRequestFor, type MailSpec as BaseMailSpec } from '../helpers/test-mail.js';

export const TOKEN = 'browser-test-operator-token-0123456789';
/** A read-only token (role viewer). */
export const VIEWER_TOKEN = 'browser-test-viewer-token-0123456789';
export const XSS_SUBJECT = '<img src=x onerror=alert(1)>';

export interface ConsoleServer {
  url: string;
  queue: Queue;
  config: ConfigStore;
  dir: string;
  /** Subject → mail id of the mails put in at start. */
  ids: Map<string, string>;
  enqueue(m: MailSpec): Promise<QueuedMail>;
  /** With deliveryRoutes: the running scheduler. */
  scheduler: Scheduler | undefined;
  /** With `ingress`: the SMTP port on 127.0.0.1. */
  smtpPort: number | undefined;
  close(): Promise<void>;
}

/** A mail for the console tests: the shared spec (test/helpers/test-mail.ts), always with a subject. */
export type MailSpec = BaseMailSpec & { subject: string };

export interface ConsoleServerOptions {
  /**
   * Also run the real scheduler and delivery, with these routes (domain → host:port): mail that is
   * due is delivered (the console's usual mails are not due for an hour).
   */
  deliveryRoutes?: Record<string, string>;
  /** Also run the real SMTP ingress (its refusals feed GET /api/refusals), with these `relay` settings. */
  ingress?: { relay: Record<string, unknown> };
}

export async function startConsoleServer(mails: MailSpec[], opts: ConsoleServerOptions = {}): Promise<ConsoleServer> {
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-browser-'));
  const overlayFile = join(dir, 'config.json');
  writeFileSync(overlayFile, JSON.stringify({
    smtp: { listen: ['127.0.0.1:0'] },
    spool: { dir: join(dir, 'spool') },
    admin: { listen: '127.0.0.1:0', token: TOKEN, tokens: [{ name: 'auditor', token: VIEWER_TOKEN, role: 'viewer' }] },
    log: { level: 'silent', pretty: false },
    ...(opts.ingress ? { relay: opts.ingress.relay } : {}),
    ...(opts.deliveryRoutes ? { delivery: { routes: opts.deliveryRoutes, tls: { opportunistic: false, verify: false }, retry: { min: '10m', max: '1h', lifetime: '5d' } } } : {}),
  }, null, 2));
  const config = new ConfigStore(overlayFile);
  const logger = silentLogger();
  const c = config.current;
  const queue = new SpoolQueue({ dir: c.spool.dir, retainFinishedMs: c.spool.retainFinished, maxSize: c.spool.maxSize, logger });
  await queue.start();
  // notBefore an hour ahead (the default): nothing here delivers, and "next attempt" has something to show.
  const enqueue = (m: MailSpec): Promise<QueuedMail> => queue.enqueue(enqueueRequestFor(m));
  const ids = new Map<string, string>();
  for (const m of mails) ids.set(m.subject, (await enqueue(m)).id);
  const metrics = createMetrics();
  let scheduler: Scheduler | undefined;
  let delivery: Deliverer | undefined;
  if (opts.deliveryRoutes) {
    delivery = new Deliverer({ config: () => config.current, logger });
    scheduler = new Scheduler({ config, queue, delivery, logger, metrics, nodeName: 'console-node' });
    scheduler.start();
  }
  const ingress = opts.ingress ? new SmtpIngress({ config, queue, logger, metrics }) : undefined;
  const smtpPort = ingress ? (await ingress.listen())[0]!.port : undefined;
  const admin = await createAdminServer({
    config, queue, logger, metrics, dataDir: dir,
    ...(scheduler ? { suspendedDestinations: () => scheduler.suspendedDestinations(), replies: (q) => scheduler.replies(q), connectionsTo: (d: string) => scheduler.destinationConnections(d), deliveringNow: () => scheduler.deliveringNow() } : {}),
    ...(delivery ? { whereTo: (domain: string) => delivery!.resolve(domain).then((d) => destinationView(d, config.current)) } : {}),
    ...(ingress ? { refusals: ingress.refusals } : {}),
  });
  const url = await admin.listen();
  return {
    url: url.replace(/\/$/, ''),
    queue,
    config,
    dir,
    ids,
    enqueue,
    scheduler,
    smtpPort,
    async close() {
      await ingress?.close();
      await admin.close();
      await scheduler?.stop(2_000);
      await delivery?.close();
      await queue.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A fresh context and page; `dialogs` collects any alert()/confirm() a page opens (there must be none). */
export async function openConsolePage(browser: Browser): Promise<{ ctx: BrowserContext; page: Page; dialogs: string[] }> {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 }, locale: 'en-GB', timezoneId: 'UTC' });
  const page = await ctx.newPage();
  const dialogs: string[] = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  page.setDefaultTimeout(15_000);
  return { ctx, page, dialogs };
}
