/**
 * Test helper: parses a DSN with mailparser (header, text, attachments) and reads the
 * message/delivery-status part's fields by the boundary mailparser reports (mailparser folds
 * that part into `text`, so its fields are read here, not guessed from the text).
 */
import { simpleParser, type ParsedMail } from 'mailparser';

export interface ParsedDsn {
  parsed: ParsedMail;
  /** [per-message fields, ...per-recipient fields], names lower-cased, folded lines joined. */
  blocks: Record<string, string>[];
  /** The parts' Content-Type values in order. */
  partTypes: string[];
  raw: string;
}

export function statusFields(text: string): Record<string, string>[] {
  return text.replace(/\r?\n[ \t]+/g, ' ').trim().split(/\r?\n\r?\n/).map((block) => {
    const fields: Record<string, string> = {};
    for (const line of block.split(/\r?\n/)) {
      const colon = line.indexOf(':');
      if (colon > 0) fields[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
    }
    return fields;
  });
}

export async function parseDsn(body: Buffer | string): Promise<ParsedDsn> {
  const raw = Buffer.isBuffer(body) ? body.toString('utf8') : body;
  const parsed = await simpleParser(raw);
  const ct = parsed.headers.get('content-type') as { value: string; params: Record<string, string> } | undefined;
  if (ct?.value !== 'multipart/report') throw new Error(`not a multipart/report: ${ct?.value}`);
  const boundary = ct.params.boundary!;
  const parts = raw.split(`--${boundary}`).slice(1, -1).map((p) => p.replace(/^\r?\n/, ''));
  const partTypes: string[] = [];
  let blocks: Record<string, string>[] = [];
  for (const part of parts) {
    const split = part.search(/\r?\n\r?\n/);
    const head = part.slice(0, split);
    const type = /^content-type:\s*([^;\r\n]+)/im.exec(head)?.[1]?.trim().toLowerCase() ?? 'text/plain';
    partTypes.push(type);
    if (type === 'message/delivery-status' || type === 'message/global-delivery-status') {
      blocks = statusFields(part.slice(split).trim());
    }
  }
  return { parsed, blocks, partTypes, raw };
}
