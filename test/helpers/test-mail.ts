/**
 * Mail for the tests that populate a spool directly (admin API, CLI, console): a real RFC 5322
 * message (CRLF line ends, a text or HTML part, optionally an attachment) and the EnqueueRequest
 * that puts it in a queue, as ingress would have (our Received: header, Message-ID, subject).
 * One builder, shared by test/admin/harness.ts and test/browser/console-server.ts.
 */
import { newMailId } from '../../src/queue/model.js';
import type { EnqueueRequest } from '../../src/queue/types.js';

export interface MailSpec {
  /** '' is the null sender (a bounce); the From: header then says MAILER-DAEMON. */
  from?: string;
  to?: string[];
  subject?: string;
  priority?: number;
  /** When it was received (epoch ms); or `ageMinutes` before now. Default now. */
  receivedAt?: number;
  ageMinutes?: number;
  /** notBefore offset from now in ms (default +1 h, so nothing is due unless asked). */
  dueInMs?: number;
  /** Held at enqueue, with this reason. */
  hold?: string;
  /** The text part; default a line naming the subject. */
  text?: string;
  /** Padding appended to the text, to make a big mail. */
  bodyBytes?: number;
  /** An HTML-only message instead of the text part. */
  html?: string;
  extraHeaders?: string[];
  /** Sent base64-encoded; contentType defaults to application/octet-stream. */
  attachment?: { filename: string; content: string; contentType?: string };
}

export const DEFAULT_PRIORITY = 10;
const BOUNDARY = 'b0undary-spoolhouse-test';

export function buildMessage(m: MailSpec, id: string): Buffer {
  const subject = m.subject ?? 'Hello';
  const head = [
    `Received: from client.test (127.0.0.1) by spoolhouse.test with ESMTP id ${id}`,
    `From: ${m.from === '' ? 'MAILER-DAEMON@spoolhouse.test' : m.from ?? 'alice@corp.example'}`,
    `To: ${(m.to ?? ['bob@example.com']).join(', ')}`,
    `Subject: ${subject}`,
    `Message-ID: <${id}@corp.example>`,
    `Date: ${new Date().toUTCString()}`,
    'MIME-Version: 1.0',
    ...(m.extraHeaders ?? []),
  ];
  const text = (m.text ?? `Hello,\r\n\r\nThis is "${subject}".\r\n`) + (m.bodyBytes ? 'x'.repeat(m.bodyBytes) + '\r\n' : '');
  if (m.html) return Buffer.from([...head, 'Content-Type: text/html; charset=utf-8', '', m.html, ''].join('\r\n'));
  if (!m.attachment) return Buffer.from([...head, 'Content-Type: text/plain; charset=utf-8', '', text].join('\r\n'));
  const a = m.attachment;
  return Buffer.from([
    ...head,
    `Content-Type: multipart/mixed; boundary="${BOUNDARY}"`,
    '',
    `--${BOUNDARY}`,
    'Content-Type: text/plain; charset=utf-8',
    '',
    text,
    `--${BOUNDARY}`,
    `Content-Type: ${a.contentType ?? 'application/octet-stream'}; name="${a.filename}"`,
    `Content-Disposition: attachment; filename="${a.filename}"`,
    'Content-Transfer-Encoding: base64',
    '',
    Buffer.from(a.content).toString('base64'),
    `--${BOUNDARY}--`,
    '',
  ].join('\r\n'));
}

/** The request ingress would make for this mail; the id is a ULID of its received time. */
export function enqueueRequestFor(m: MailSpec, now = Date.now()): EnqueueRequest {
  const receivedAt = m.receivedAt ?? now - (m.ageMinutes ?? 0) * 60_000;
  const id = newMailId(receivedAt);
  return {
    id,
    sender: m.from ?? 'alice@corp.example',
    recipients: (m.to ?? ['bob@example.com']).map((address) => ({ address })),
    body: buildMessage(m, id),
    priority: m.priority ?? DEFAULT_PRIORITY,
    notBefore: now + (m.dueInMs ?? 3_600_000),
    client: { address: '127.0.0.1', helo: 'client.test', listener: '127.0.0.1:2525' },
    subject: m.subject ?? 'Hello',
    messageId: `<${id}@corp.example>`,
    classification: { priority: { source: 'default' } },
    receivedAt,
    ...(m.hold ? { hold: { reason: m.hold } } : {}),
  };
}
