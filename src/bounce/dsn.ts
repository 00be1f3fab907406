/**
 * RFC 3464 delivery status notifications, built as plain bytes (CRLF line ends).
 *
 * What a DSN built here always has:
 * - `multipart/report; report-type=delivery-status` with three parts: a human-readable
 *   text/plain part, the machine-readable `message/delivery-status` part, and the original
 *   message (`message/rfc822`) or only its header (`text/rfc822-headers`).
 * - Per-message fields: Original-Envelope-Id (ENVID, when given), Reporting-MTA (dns; our
 *   smtp.hostname), X-Spoolhouse-Queue-ID, X-Spoolhouse-Sender, Arrival-Date.
 * - Per-recipient fields: Final-Recipient, Original-Recipient (ORCPT, when given), Action,
 *   Status, Remote-MTA (when a remote host answered), Diagnostic-Code (`smtp;` for a remote
 *   reply, `X-Spoolhouse;` for one we made up, e.g. a null MX), Last-Attempt-Date, and
 *   Will-Retry-Until for `delayed`.
 * - `Auto-Submitted: auto-replied` (RFC 3834), so well-behaved software never answers it.
 * When an address or reply is not ASCII the report uses RFC 6533's `message/global-delivery-status`
 * (and `message/global` for an SMTPUTF8 original), since message/delivery-status must be ASCII.
 *
 * The builder is pure: time, ids and the boundary come in as input, so tests can parse the
 * result and compare fields.
 */
import { isAscii as isAsciiBuffer } from 'node:buffer';
import { randomBytes } from 'node:crypto';

export type DsnAction = 'failed' | 'delayed' | 'delivered' | 'relayed' | 'expanded';

export interface DsnRecipientReport {
  /** The address we tried (Final-Recipient). */
  address: string;
  /** ORCPT as received, "rfc822;user@example.org" (Original-Recipient). */
  orcpt?: string;
  action: DsnAction;
  /** RFC 3463 status, e.g. "5.1.1", "4.4.7". */
  status: string;
  /** The remote host that answered, e.g. "mx.example.org" (Remote-MTA). */
  remoteMta?: string;
  /** What the remote said ("smtp"), or our own explanation ("x-spoolhouse"). */
  diagnostic?: { type: 'smtp' | 'x-spoolhouse'; text: string };
  lastAttemptAt?: number;
  /** For delayed: when we give up (receivedAt + lifetime). */
  willRetryUntil?: number;
}

export interface DsnReport {
  /** Our host name (smtp.hostname). */
  reportingMta: string;
  /** Queue id of the original mail. */
  queueId: string;
  /** Reverse path of the original mail ('' for the null sender). */
  originalSender: string;
  /** Who gets this DSN: the original sender, or the postmaster for a failed bounce. */
  to: string;
  arrivalDate: number;
  envid?: string;
  recipients: DsnRecipientReport[];
  /** The original message, whole or only its header section. */
  original: { kind: 'full' | 'headers'; content: Buffer; smtputf8?: boolean };
  now: number;
  /** Message-ID of the DSN itself, without angle brackets. */
  messageId: string;
  /** Fixed in tests; random otherwise. */
  boundary?: string;
}

export interface BuiltDsn {
  body: Buffer;
  subject: string;
  /** The DSN needs SMTPUTF8 to be sent (non-ASCII recipient address). */
  smtputf8: boolean;
  /** The DSN carries 8-bit data (an 8-bit original, or non-ASCII text). */
  eightBit: boolean;
}

const CRLF = '\r\n';
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** The second formatted last: the Received: header of every mail accepted in one second has this date. */
let lastDate = { second: NaN, text: '' };

/** RFC 5322 date-time in UTC, to the second: "Wed, 25 Nov 2026 05:53:54 +0000". */
export function rfc5322Date(ms: number): string {
  const second = Math.floor(ms / 1000);
  if (second === lastDate.second) return lastDate.text;
  const d = new Date(second * 1000);
  const two = (n: number) => String(n).padStart(2, '0');
  const text = `${DAYS[d.getUTCDay()]}, ${two(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} `
    + `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())} +0000`;
  lastDate = { second, text };
  return text;
}

const isAscii = (s: string) => /^[\x00-\x7f]*$/.test(s);

/** One line of text for a header field: multi-line SMTP replies are joined, controls dropped. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '').replace(/\s+/g, ' ').trim();
}

/** Folds a header field at spaces so lines stay under 78 characters where possible (RFC 5322 §2.2.3). */
export function foldField(name: string, value: string): string {
  const words = oneLine(value).split(' ');
  const lines: string[] = [];
  let line = `${name}:`;
  for (const word of words) {
    if (line.length + 1 + word.length > 76 && line.length > name.length + 1) {
      lines.push(line);
      line = ` ${word}`;
    } else {
      line += ` ${word}`;
    }
  }
  lines.push(line);
  return lines.join(CRLF);
}

/** "mx.example.org[192.0.2.1]:25" → "mx.example.org" (Remote-MTA is a host name). */
export function remoteMtaName(remoteHost: string): string {
  return remoteHost.replace(/\[[^\]]*\]/, '').replace(/:\d+$/, '').trim() || remoteHost;
}

/** Splits an ORCPT "rfc822;addr" into its type and address (RFC 3461 §4.2). */
function splitOrcpt(orcpt: string): { type: string; address: string } {
  const semi = orcpt.indexOf(';');
  if (semi < 0) return { type: 'rfc822', address: orcpt };
  return { type: orcpt.slice(0, semi).trim() || 'rfc822', address: orcpt.slice(semi + 1).trim() };
}

function subjectFor(recipients: DsnRecipientReport[]): string {
  if (recipients.some((r) => r.action === 'failed')) return 'Undelivered Mail Returned to Sender';
  if (recipients.some((r) => r.action === 'delayed')) return 'Delayed Mail (still being retried)';
  return 'Successful Mail Delivery Report';
}

function humanLine(r: DsnRecipientReport): string {
  const reason = r.diagnostic
    ? (r.remoteMta ? `host ${r.remoteMta} said: ${oneLine(r.diagnostic.text)}` : oneLine(r.diagnostic.text))
    : `status ${r.status}`;
  return `<${r.address}>: ${reason}`;
}

function humanReadable(report: DsnReport): string {
  const lines: string[] = [`This is the mail system at host ${report.reportingMta}.`, ''];
  const failed = report.recipients.filter((r) => r.action === 'failed');
  const delayed = report.recipients.filter((r) => r.action === 'delayed');
  const done = report.recipients.filter((r) => r.action === 'delivered' || r.action === 'relayed' || r.action === 'expanded');
  if (failed.length > 0) {
    lines.push(
      "I'm sorry to have to inform you that your message could not be delivered to one or more",
      'recipients. It is attached below.', '',
      'For further assistance, please send mail to postmaster.', '',
      'If you do so, please include this problem report. You can delete your own text from the',
      'attached returned message.', '',
      ...failed.map(humanLine), '',
    );
  }
  if (delayed.length > 0) {
    const until = delayed[0]!.willRetryUntil;
    lines.push(
      '####################################################################',
      '# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #',
      '####################################################################', '',
      'Your message could not be delivered yet to the recipients below. The mail system',
      `will keep trying${until !== undefined ? ` until ${rfc5322Date(until)}` : ''}.`, '',
      ...delayed.map(humanLine), '',
    );
  }
  if (done.length > 0) {
    lines.push(
      'Your message was successfully delivered to the destination(s) listed below. If the',
      'message was relayed, further notices may come from the next system.', '',
      ...done.map((r) => `<${r.address}>: ${r.action}${r.diagnostic ? `, ${oneLine(r.diagnostic.text)}` : ''}`), '',
    );
  }
  lines.push(`Queue id: ${report.queueId}`);
  return lines.join(CRLF) + CRLF;
}

function deliveryStatus(report: DsnReport, global: boolean): string {
  const addrType = (a: string) => (global && !isAscii(a) ? 'utf-8' : 'rfc822');
  const perMessage = [
    ...(report.envid !== undefined ? [foldField('Original-Envelope-Id', report.envid)] : []),
    foldField('Reporting-MTA', `dns; ${report.reportingMta}`),
    foldField('X-Spoolhouse-Queue-ID', report.queueId),
    foldField('X-Spoolhouse-Sender', `${addrType(report.originalSender)}; ${report.originalSender}`),
    foldField('Arrival-Date', rfc5322Date(report.arrivalDate)),
  ];
  const blocks = [perMessage.join(CRLF)];
  for (const r of report.recipients) {
    const fields = [foldField('Final-Recipient', `${addrType(r.address)}; ${r.address}`)];
    if (r.orcpt) {
      const o = splitOrcpt(r.orcpt);
      fields.push(foldField('Original-Recipient', `${o.type}; ${o.address}`));
    }
    fields.push(`Action: ${r.action}`, `Status: ${r.status}`);
    if (r.remoteMta) fields.push(foldField('Remote-MTA', `dns; ${r.remoteMta}`));
    if (r.diagnostic) fields.push(foldField('Diagnostic-Code', `${r.diagnostic.type === 'smtp' ? 'smtp' : 'X-Spoolhouse'}; ${r.diagnostic.text}`));
    if (r.lastAttemptAt !== undefined) fields.push(foldField('Last-Attempt-Date', rfc5322Date(r.lastAttemptAt)));
    if (r.action === 'delayed' && r.willRetryUntil !== undefined) fields.push(foldField('Will-Retry-Until', rfc5322Date(r.willRetryUntil)));
    blocks.push(fields.join(CRLF));
  }
  return blocks.join(CRLF + CRLF) + CRLF;
}

/** Whether a message part has bytes over 0x7f (8BITMIME, Content-Transfer-Encoding: 8bit). */
export function hasEightBit(buf: Buffer): boolean {
  return !isAsciiBuffer(buf);
}

/** Normalises lone LF line ends of the original to CRLF and makes it end with one. */
function withCrlf(content: Buffer): Buffer {
  let text = content.toString('latin1');
  if (text.includes('\n') && !text.includes('\r\n')) text = text.replace(/\n/g, CRLF);
  if (!text.endsWith(CRLF)) text += CRLF;
  return Buffer.from(text, 'latin1');
}

function chooseBoundary(report: DsnReport, parts: Buffer[]): string {
  for (;;) {
    const boundary = report.boundary ?? `${report.queueId}.${randomBytes(9).toString('base64url')}/${report.reportingMta}`;
    if (!parts.some((p) => p.includes(boundary))) return boundary;
    if (report.boundary) throw new Error('the fixed DSN boundary occurs in the message');
  }
}

/** Builds the DSN message (header and body) for `report`. */
export function buildDsn(report: DsnReport): BuiltDsn {
  if (report.recipients.length === 0) throw new Error('a DSN needs at least one recipient');
  const addresses = [report.originalSender, ...report.recipients.flatMap((r) => [r.address, r.orcpt ?? ''])];
  const global = !addresses.every(isAscii) || !report.recipients.every((r) => isAscii(r.diagnostic?.text ?? ''));
  const subject = subjectFor(report.recipients);
  const text = Buffer.from(humanReadable(report), 'utf8');
  const status = Buffer.from(deliveryStatus(report, global), 'utf8');
  const original = withCrlf(report.original.content);
  const boundary = chooseBoundary(report, [text, status, original]);
  const eightBit = hasEightBit(text) || hasEightBit(status) || hasEightBit(original);

  const originalType = report.original.kind === 'full'
    ? (report.original.smtputf8 ? 'message/global' : 'message/rfc822')
    : (report.original.smtputf8 ? 'message/global-headers' : 'text/rfc822-headers');
  const header = [
    foldField('From', `Mail Delivery System <MAILER-DAEMON@${report.reportingMta}>`),
    foldField('To', report.to),
    foldField('Subject', subject),
    `Date: ${rfc5322Date(report.now)}`,
    `Message-ID: <${report.messageId}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status;${CRLF}\tboundary="${boundary}"`,
    'Content-Transfer-Encoding: 8bit',
  ].join(CRLF);
  const body = Buffer.concat([
    Buffer.from(`${header}${CRLF}${CRLF}This is a MIME-encapsulated message.${CRLF}${CRLF}`),
    Buffer.from(`--${boundary}${CRLF}Content-Description: Notification${CRLF}`
      + `Content-Type: text/plain; charset=utf-8${CRLF}Content-Transfer-Encoding: ${hasEightBit(text) ? '8bit' : '7bit'}${CRLF}${CRLF}`),
    text,
    Buffer.from(`${CRLF}--${boundary}${CRLF}Content-Description: Delivery report${CRLF}`
      + `Content-Type: ${global ? 'message/global-delivery-status' : 'message/delivery-status'}${CRLF}${CRLF}`),
    status,
    Buffer.from(`${CRLF}--${boundary}${CRLF}Content-Description: ${report.original.kind === 'full' ? 'Undelivered Message' : 'Undelivered Message Headers'}${CRLF}`
      + `Content-Type: ${originalType}${CRLF}Content-Transfer-Encoding: ${hasEightBit(original) ? '8bit' : '7bit'}${CRLF}${CRLF}`),
    original,
    Buffer.from(`${CRLF}--${boundary}--${CRLF}`),
  ]);
  const smtputf8 = !isAscii(report.to);
  return { body, subject, smtputf8, eightBit };
}
