/**
 * How a queued mail is shown to operators: a summary for lists, and the detail with the stored
 * message parsed by mailparser. Parsing streams the body (attachments are counted, not kept),
 * so a 50 MB mail costs little memory; HTML is never returned, only text (mailparser converts
 * HTML to text when there is no text part), so mail content can never run as script.
 * The shapes are the API's (src/api-types.ts), shared with the CLI and the console.
 */
import { MailParser, type AddressObject, type HeaderLines } from 'mailparser';
import type { MailDetail, MailSummary, ParsedMessage } from '../api-types.js';
import type { Config } from '../config/schema.js';
import type { Queue, QueuedMail, SmtpReply } from '../queue/types.js';
import { priorityNameOf } from './filters.js';
import { replyKind } from '../scheduler/reply-kind.js';

export const LIST_RECIPIENTS = 20;
export const TEXT_PREVIEW_CHARS = 4096;

type Priorities = Config['priorities'];

function lastReplyOf(mail: QueuedMail): SmtpReply | undefined {
  let best: { at: number; reply: SmtpReply } | undefined;
  for (const r of mail.recipients) {
    if (r.lastReply && (!best || (r.lastAttemptAt ?? 0) >= best.at)) best = { at: r.lastAttemptAt ?? 0, reply: r.lastReply };
  }
  return best?.reply;
}

export function summarise(mail: QueuedMail, priorities: Priorities): MailSummary {
  const name = priorityNameOf(mail.priority, priorities);
  const lastReply = lastReplyOf(mail);
  return {
    id: mail.id,
    state: mail.state,
    sender: mail.sender,
    recipients: mail.recipients.slice(0, LIST_RECIPIENTS),
    recipientCount: mail.recipients.length,
    size: mail.size,
    receivedAt: mail.receivedAt,
    priority: mail.priority,
    ...(name ? { priorityName: name } : {}),
    notBefore: mail.notBefore,
    attempts: mail.attempts,
    ...(mail.subject !== undefined ? { subject: mail.subject } : {}),
    ...(mail.messageId !== undefined ? { messageId: mail.messageId } : {}),
    ...(mail.holdReason !== undefined ? { holdReason: mail.holdReason } : {}),
    ...(mail.bounceRequest ? { bounceRequest: mail.bounceRequest } : {}),
    ...(lastReply ? { lastReply } : {}),
  };
}

export type ParsedView = ParsedMessage;

function addressText(v: unknown): string | undefined {
  if (!v) return undefined;
  const list = (Array.isArray(v) ? v : [v]) as AddressObject[];
  return list.map((a) => a.text).join(', ');
}

function headerList(lines: HeaderLines): { name: string; value: string }[] {
  return lines.map(({ line }) => {
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    // Unfold (RFC 5322 §2.2.3): a folded header is one value.
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/\r?\n[ \t]+/g, ' ').trim();
    return { name: name.trim(), value };
  });
}

/** Parses the stored message of a mail. A body that cannot be read gives `error`, not a failure. */
export async function parseStoredMessage(queue: Queue, id: string): Promise<ParsedView> {
  const view: ParsedView = { headers: [], attachments: [] };
  let body: NodeJS.ReadableStream;
  try {
    body = await queue.readBody(id);
  } catch (err) {
    return { ...view, error: `The message body could not be read: ${(err as Error).message}` };
  }
  return new Promise<ParsedView>((resolve) => {
    const parser = new MailParser({ skipImageLinks: true } as ConstructorParameters<typeof MailParser>[0]);
    let settled = false;
    const finish = (error?: string) => {
      if (settled) return;
      settled = true;
      resolve(error ? { ...view, error } : view);
    };
    parser.on('headers', (headers: Map<string, unknown>) => {
      const subject = headers.get('subject');
      if (typeof subject === 'string') view.subject = subject;
      const from = addressText(headers.get('from'));
      if (from) view.from = from;
      const to = addressText(headers.get('to'));
      if (to) view.to = to;
      const cc = addressText(headers.get('cc'));
      if (cc) view.cc = cc;
      const date = headers.get('date');
      if (date instanceof Date && !Number.isNaN(date.getTime())) view.date = date.toISOString();
    });
    parser.on('headerLines', (lines: HeaderLines) => {
      view.headers = headerList(lines);
    });
    parser.on('data', (data: { type: string; [k: string]: unknown }) => {
      if (data.type === 'attachment') {
        const att = data as unknown as { filename?: string; contentType: string; content: NodeJS.ReadableStream; release(): void };
        let size = 0;
        att.content.on('data', (chunk: Buffer) => { size += chunk.length; });
        att.content.on('end', () => {
          view.attachments.push({ ...(att.filename ? { filename: att.filename } : {}), contentType: att.contentType, size });
          att.release();
        });
      } else if (data.type === 'text') {
        const text = typeof data.text === 'string' ? data.text : undefined;
        if (data.html) view.hasHtml = true;
        if (text !== undefined) {
          view.textTruncated = text.length > TEXT_PREVIEW_CHARS;
          view.text = text.slice(0, TEXT_PREVIEW_CHARS);
        }
      }
    });
    parser.on('end', () => finish());
    parser.on('error', (err: Error) => finish(`The message could not be parsed: ${err.message}`));
    body.on('error', (err: Error) => {
      finish(`The message body could not be read: ${err.message}`);
      parser.destroy();
    });
    body.pipe(parser);
  });
}

export async function detail(queue: Queue, mail: QueuedMail, priorities: Priorities): Promise<MailDetail> {
  const { lease, ...rest } = mail;
  return {
    ...rest,
    ...summarise(mail, priorities),
    // What kind of trouble a recipient not delivered had, from its last reply (as the reply digest says it).
    recipients: mail.recipients.map((r) => (r.lastReply && r.status !== 'delivered' ? { ...r, replyKind: replyKind(r.lastReply) } : r)),
    // The lease token is a worker's credential; operators see only who holds it and until when.
    ...(lease ? { lease: { owner: lease.owner, until: lease.until } } : {}),
    parsed: await parseStoredMessage(queue, mail.id),
  };
}
