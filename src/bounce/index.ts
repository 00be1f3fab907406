/**
 * The bounce stage: turns a DSN plan (plan.ts) into an RFC 3464 message (dsn.ts) and enqueues it
 * as a new mail with the null reverse-path.
 *
 * Guarantees:
 * - `enqueueDsn` resolves only once the DSN is durable in the queue (queue.enqueue), so a caller
 *   that records the attempt afterwards can at worst duplicate a DSN after a crash, never lose one.
 * - The DSN is sent with sender '' (RFC 5321 §4.5.5), to one recipient, with NOTIFY=NEVER
 *   so it can never cause another DSN, at priority max(default class, original's priority).
 */
import type { EnqueueRequest, Queue, QueuedMail } from '../queue/types.js';
import { newMailId } from '../queue/model.js';
import { buildDsn, type BuiltDsn } from './dsn.js';
import type { DsnPlan } from './plan.js';

export * from './dsn.js';
export * from './plan.js';

/** Most header bytes returned in a headers-only DSN. */
const MAX_HEADER_BYTES = 256 * 1024;

/** Reads the stored message: whole, or its header section only (up to the first empty line). */
export async function readOriginal(queue: Queue, id: string, kind: 'full' | 'headers'): Promise<Buffer> {
  const stream = await queue.readBody(id);
  const chunks: Buffer[] = [];
  let length = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer | string>) {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      chunks.push(buf);
      length += buf.length;
      if (kind === 'headers') {
        const soFar = Buffer.concat(chunks);
        const end = headerEnd(soFar);
        if (end >= 0) return soFar.subarray(0, end);
        if (length > MAX_HEADER_BYTES) return soFar.subarray(0, MAX_HEADER_BYTES);
      }
    }
  } finally {
    (stream as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
  }
  return Buffer.concat(chunks);
}

/** Offset just after the header section's last line end (before the empty line), or -1. */
function headerEnd(buf: Buffer): number {
  const crlf = buf.indexOf('\r\n\r\n');
  const lf = buf.indexOf('\n\n');
  if (crlf >= 0 && (lf < 0 || crlf < lf)) return crlf + 2;
  if (lf >= 0) return lf + 1;
  return -1;
}

export interface DsnContext {
  /** smtp.hostname: Reporting-MTA and the From: domain. */
  hostname: string;
  /** Queue priority of the DSN. */
  priority: number;
  now: number;
}

/** The queue request for a built DSN. */
export function dsnEnqueueRequest(id: string, to: string, built: BuiltDsn, messageId: string, ctx: DsnContext): EnqueueRequest {
  return {
    id,
    sender: '',
    recipients: [{ address: to, notify: ['NEVER'] }],
    body: built.body,
    priority: ctx.priority,
    notBefore: ctx.now,
    smtputf8: built.smtputf8,
    bodyType: built.eightBit ? '8BITMIME' : '7BIT',
    client: { address: '127.0.0.1', helo: ctx.hostname, hostname: ctx.hostname, listener: 'bounce' },
    subject: built.subject,
    messageId: `<${messageId}>`,
    classification: { priority: { source: 'default', detail: 'delivery status notification' } },
    receivedAt: ctx.now,
  };
}

/** Builds the DSN for `plan` (kind 'send') about `mail` and enqueues it. Returns the new mail. */
export async function enqueueDsn(
  queue: Queue, mail: QueuedMail, plan: Extract<DsnPlan, { kind: 'send' }>, ctx: DsnContext,
): Promise<QueuedMail> {
  const original = await readOriginal(queue, mail.id, plan.returnContent);
  const id = newMailId(ctx.now);
  const messageId = `${id}@${ctx.hostname}`;
  const built = buildDsn({
    reportingMta: ctx.hostname,
    queueId: mail.id,
    originalSender: mail.sender,
    to: plan.to,
    arrivalDate: mail.receivedAt,
    ...(mail.dsn.envid !== undefined ? { envid: mail.dsn.envid } : {}),
    recipients: plan.recipients,
    original: { kind: plan.returnContent, content: original, smtputf8: mail.smtputf8 },
    now: ctx.now,
    messageId,
  });
  return queue.enqueue(dsnEnqueueRequest(id, plan.to, built, messageId, ctx));
}
