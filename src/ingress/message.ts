/**
 * What the ingress does to a message's bytes before it is queued, as pure functions:
 * - line endings: find bare CR / bare LF (SMTP smuggling material) and rewrite them to CRLF;
 * - the header block: parsed (unfolded) for classification, Subject (RFC 2047 decoded) and Message-ID;
 * - a Message-ID: header added when the message has none, and our Received: header prepended;
 * - what the message needs downstream: SMTPUTF8 (non-ASCII headers or addresses), 8BITMIME.
 * The stored message is exactly what `finalizeMessage` returns; nothing changes it afterwards.
 */
import { rfc5322Date } from '../bounce/dsn.js';

export interface LineEndingScan {
  bareLf: number;
  bareCr: number;
}

/** Counts LF not preceded by CR and CR not followed by LF. */
export function scanLineEndings(buf: Buffer): LineEndingScan {
  let bareLf = 0;
  let bareCr = 0;
  let i = buf.indexOf(0x0a);
  while (i >= 0) {
    if (i === 0 || buf[i - 1] !== 0x0d) bareLf++;
    i = buf.indexOf(0x0a, i + 1);
  }
  i = buf.indexOf(0x0d);
  while (i >= 0) {
    if (i === buf.length - 1 || buf[i + 1] !== 0x0a) bareCr++;
    i = buf.indexOf(0x0d, i + 1);
  }
  return { bareLf, bareCr };
}

/** Rewrites every bare LF and bare CR to CRLF (CRLF pairs stay as they are). */
export function normalizeLineEndings(buf: Buffer): Buffer {
  const out = Buffer.allocUnsafe(buf.length * 2);
  let o = 0;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i]!;
    if (c === 0x0d) {
      out[o++] = 0x0d;
      out[o++] = 0x0a;
      if (buf[i + 1] === 0x0a) i++;
    } else if (c === 0x0a) {
      out[o++] = 0x0d;
      out[o++] = 0x0a;
    } else {
      out[o++] = c;
    }
  }
  return Buffer.from(out.subarray(0, o));
}

export interface Header {
  name: string;
  value: string;
}

export interface HeaderBlock {
  headers: Header[];
  /** Offset of the first body byte (after the blank line), or of the first line that is not a header. */
  bodyStart: number;
  /** True when a blank line separates headers from body. */
  hasSeparator: boolean;
  /** Offset where the header block ends (before the blank line): where to add headers. */
  headerEnd: number;
}

const HEADER_LINE = /^([\x21-\x39\x3b-\x7e]+)[ \t]*:/;

/** Parses the header block (CRLF line endings expected; the message was normalized first). */
export function parseHeaderBlock(buf: Buffer, maxHeaderBytes = 1024 * 1024): HeaderBlock {
  // Decode only the header block (up to the blank line), not a large body behind it.
  const blank = buf.indexOf('\r\n\r\n');
  const end = blank >= 0 ? Math.min(blank + 4, maxHeaderBytes) : Math.min(buf.length, maxHeaderBytes);
  const text = buf.subarray(0, end).toString('utf8');
  const headers: Header[] = [];
  let pos = 0;
  let byteOffset = 0;
  while (pos < text.length) {
    const eol = text.indexOf('\r\n', pos);
    const line = eol < 0 ? text.slice(pos) : text.slice(pos, eol);
    const lineBytes = Buffer.byteLength(line, 'utf8') + (eol < 0 ? 0 : 2);
    if (line === '') {
      return { headers, bodyStart: byteOffset + lineBytes, hasSeparator: true, headerEnd: byteOffset };
    }
    if ((line.startsWith(' ') || line.startsWith('\t')) && headers.length > 0) {
      headers[headers.length - 1]!.value += ' ' + line.trim();
    } else {
      const m = HEADER_LINE.exec(line);
      if (!m) return { headers, bodyStart: byteOffset, hasSeparator: false, headerEnd: byteOffset };
      headers.push({ name: m[1]!, value: line.slice(m[0].length).trim() });
    }
    byteOffset += lineBytes;
    if (eol < 0) break;
    pos = eol + 2;
  }
  return { headers, bodyStart: byteOffset, hasSeparator: false, headerEnd: byteOffset };
}

export function headerValue(headers: Header[], name: string): string | undefined {
  const lower = name.toLowerCase();
  return headers.find((h) => h.name.toLowerCase() === lower)?.value;
}

/** Decodes RFC 2047 encoded words (=?charset?B|Q?text?=); undecodable words stay as they are. */
export function decodeEncodedWords(value: string): string {
  return value
    .replace(/(=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=)\s+(?==\?)/g, '$1')
    .replace(/=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=/g, (word, charset: string, enc: string, text: string) => {
      try {
        const bytes = enc.toUpperCase() === 'B'
          ? Buffer.from(text, 'base64')
          : Buffer.from(text.replace(/_/g, ' ').replace(/=([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1');
        return new TextDecoder(charset.replace(/\*.*$/, '').toLowerCase()).decode(bytes);
      } catch {
        return word;
      }
    });
}

export interface ReceivedInfo {
  helo: string;
  /** Reverse DNS name, or undefined when unknown. */
  clientHostname?: string;
  clientAddress: string;
  hostname: string;
  /** ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS … (RFC 3848, RFC 6531). */
  protocol: string;
  tls?: { protocol?: string | null; cipher?: string };
  mailId: string;
  /** Named in "for <…>" only when there is exactly one recipient (privacy, as Postfix does). */
  recipients: string[];
  at: number;
}

/** Characters outside visible ASCII become "?": nothing a client sends can fold or break our header. */
function clean(text: string): string {
  return text.replace(/[^\x21-\x7e]/g, '?').replace(/[()]/g, '?');
}

/** Our Received: trace header (RFC 5321 §4.4), folded, CRLF-terminated. */
export function buildReceivedHeader(r: ReceivedInfo): string {
  const rdns = r.clientHostname && !r.clientHostname.startsWith('[') ? clean(r.clientHostname) : 'unknown';
  const addr = r.clientAddress.includes(':') ? `IPv6:${r.clientAddress}` : r.clientAddress;
  const lines = [`Received: from ${clean(r.helo || 'unknown')} (${rdns} [${addr}])`];
  if (r.tls?.cipher) lines.push(`\t(using ${clean(r.tls.protocol ?? 'TLS')} with cipher ${clean(r.tls.cipher)})`);
  lines.push(`\tby ${clean(r.hostname)} (Spoolhouse) with ${r.protocol} id ${r.mailId}`);
  const forPart = r.recipients.length === 1 && !/[\r\n]/.test(r.recipients[0]!) ? `\tfor <${r.recipients[0]}>; ` : '\t';
  lines.push(`${forPart}${rfc5322Date(r.at)}`);
  return lines.join('\r\n') + '\r\n';
}

export interface FinalMessage {
  body: Buffer;
  headers: Header[];
  /** The client's header block (without our additions), for the SMTPUTF8 check. */
  headerBytes: Buffer;
  /** The client's body, after the header block (a view, not a copy), for the rules' `body` match. */
  text: Buffer;
  subject?: string;
  messageId: string;
  messageIdAdded: boolean;
}

/**
 * The message as stored: our Received: on top, the client's header block, a Message-ID: when it
 * had none, then the body. Expects normalized (CRLF) line endings.
 */
export function finalizeMessage(data: Buffer, received: string, mailId: string, hostname: string): FinalMessage {
  const block = parseHeaderBlock(data);
  const existingId = headerValue(block.headers, 'message-id');
  const subjectRaw = headerValue(block.headers, 'subject');
  const subject = subjectRaw !== undefined ? decodeEncodedWords(subjectRaw) : undefined;
  const parts: Buffer[] = [Buffer.from(received, 'utf8')];
  let messageId = existingId?.trim() ?? '';
  let added = false;
  if (!messageId) {
    messageId = `<${mailId}@${hostname}>`;
    added = true;
    parts.push(data.subarray(0, block.headerEnd));
    parts.push(Buffer.from(`Message-ID: ${messageId}\r\n${block.hasSeparator ? '' : '\r\n'}`));
    parts.push(data.subarray(block.headerEnd));
  } else {
    parts.push(data);
  }
  return {
    body: Buffer.concat(parts),
    headers: block.headers,
    headerBytes: data.subarray(0, block.bodyStart),
    text: data.subarray(block.bodyStart),
    ...(subject !== undefined ? { subject } : {}),
    messageId,
    messageIdAdded: added,
  };
}
