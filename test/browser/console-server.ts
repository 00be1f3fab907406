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
import { silentLogger } from '../../src/logger.js';
import { createMetrics } from '../../src/metrics.js';
import { newMailId } from '../../src/queue/model.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { Queue, QueuedMail } from '../../src/queue/types.js';

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
  close(): Promise<void>;
}

export interface MailSpec {
  subject: string;
  from?: string;
  to?: string[];
  priority?: number;
  text?: string;
  extraHeaders?: string[];
  attachment?: { filename: string; content: string };
  /** Defaults to now; older mail fills the qshape's right-hand columns. */
  receivedAt?: number;
}

/** A real message: CRLF line ends, a text part, optionally an attachment. */
export function buildMessage(m: MailSpec, id: string): Buffer {
  const from = m.from ?? 'alice@corp.example';
  const to = m.to ?? ['bob@example.com'];
  const head = [
    `Received: from client.test (127.0.0.1) by spoolhouse.test with ESMTP id ${id}`,
    `From: ${from}`,
    `To: ${to.join(', ')}`,
    `Subject: ${m.subject}`,
    `Message-ID: <${id}@corp.example>`,
    `Date: ${new Date().toUTCString()}`,
    'MIME-Version: 1.0',
    ...(m.extraHeaders ?? []),
  ];
  const text = m.text ?? `Hello,\r\n\r\nThis is "${m.subject}".\r\n`;
  if (!m.attachment) {
    return Buffer.from([...head, 'Content-Type: text/plain; charset=utf-8', '', text].join('\r\n'));
  }
  const b = 'b0undary-spoolhouse';
  return Buffer.from([
    ...head,
    `Content-Type: multipart/mixed; boundary="${b}"`,
    '',
    `--${b}`,
    'Content-Type: text/plain; charset=utf-8',
    '',
    text,
    `--${b}`,
    `Content-Type: text/plain; name="${m.attachment.filename}"`,
    `Content-Disposition: attachment; filename="${m.attachment.filename}"`,
    '',
    m.attachment.content,
    `--${b}--`,
    '',
  ].join('\r\n'));
}

export async function startConsoleServer(mails: MailSpec[]): Promise<ConsoleServer> {
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-browser-'));
  const overlayFile = join(dir, 'config.json');
  writeFileSync(overlayFile, JSON.stringify({
    smtp: { listen: ['127.0.0.1:0'] },
    spool: { dir: join(dir, 'spool') },
    admin: { listen: '127.0.0.1:0', token: TOKEN, tokens: [{ name: 'auditor', token: VIEWER_TOKEN, role: 'viewer' }] },
    log: { level: 'silent', pretty: false },
  }, null, 2));
  const config = new ConfigStore(overlayFile);
  const logger = silentLogger();
  const c = config.current;
  const queue = new SpoolQueue({ dir: c.spool.dir, retainFinishedMs: c.spool.retainFinished, maxSize: c.spool.maxSize, logger });
  await queue.start();
  const enqueue = async (m: MailSpec): Promise<QueuedMail> => {
    const id = newMailId();
    return queue.enqueue({
      id,
      sender: m.from ?? 'alice@corp.example',
      recipients: (m.to ?? ['bob@example.com']).map((address) => ({ address })),
      body: buildMessage(m, id),
      priority: m.priority ?? 10,
      // An hour ahead: nothing here delivers, and "next attempt" has something to show.
      notBefore: Date.now() + 3_600_000,
      client: { address: '127.0.0.1', helo: 'client.test', listener: '127.0.0.1:2525' },
      subject: m.subject,
      messageId: `<${id}@corp.example>`,
      classification: { priority: { source: 'default' } },
      ...(m.receivedAt !== undefined ? { receivedAt: m.receivedAt } : {}),
    });
  };
  const ids = new Map<string, string>();
  for (const m of mails) ids.set(m.subject, (await enqueue(m)).id);
  const admin = await createAdminServer({ config, queue, logger, metrics: createMetrics(), dataDir: dir });
  const url = await admin.listen();
  return {
    url: url.replace(/\/$/, ''),
    queue,
    config,
    dir,
    ids,
    enqueue,
    async close() {
      await admin.close();
      await queue.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
