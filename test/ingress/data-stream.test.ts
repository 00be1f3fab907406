/**
 * The ingress's data-mode parser (src/ingress/data-stream.ts) against smtp-server's own: the same
 * input, cut into the same chunks, must give the same commands, the same message bytes and the same
 * byte counts. The inputs are random SMTP streams dense in the bytes that matter (CR, LF, dots,
 * terminators, bare line endings, escape dots), cut at random places, with fast and slow readers
 * of the message (a slow one makes the parser wait for 'drain').
 */
import { describe, expect, it } from 'vitest';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { continueAfterData, feedDataStream } from '../../src/ingress/data-stream.js';
import { seededRandom } from '../helpers/rng.js';

type Make = () => SMTPStream;

const original: Make = () => new SMTPStream();
/** As SpoolhouseConnection builds it. */
const ours: Make = () => {
  const s = new SMTPStream();
  s._feedDataStream = feedDataStream;
  s.continue = continueAfterData;
  return s;
};

/** What a parser did with the input, in order: command lines and messages (bytes, count, over the limit). */
async function parse(make: Make, pieces: Buffer[][], opts: { maxBytes?: number; slowReader?: boolean } = {}): Promise<string[]> {
  const s = make();
  const events: string[] = [];
  s.oncommand = (line: Buffer, next?: () => void) => {
    const text = line.toString('binary');
    events.push(`command ${JSON.stringify(text)}`);
    if (/^DATA$/i.test(text)) {
      const data = s.startDataMode(opts.maxBytes);
      const parts: Buffer[] = [];
      const read = (): void => { data.on('data', (c: Buffer) => parts.push(c)); };
      if (opts.slowReader) setTimeout(read, 1);
      else read();
      data.on('end', () => {
        events.push(`message ${JSON.stringify(Buffer.concat(parts).toString('binary'))} bytes=${data.byteLength} over=${data.sizeExceeded} counted=${s.dataBytes}`);
        s.continue();
      });
    }
    next?.();
  };
  for (const chunks of pieces) {
    for (const c of chunks) await new Promise<void>((resolve, reject) => s.write(c, (err) => (err ? reject(err) : resolve())));
  }
  await new Promise<void>((resolve) => s.end(resolve));
  // A message whose reader is slow may end after the input did.
  if (opts.slowReader) await new Promise((r) => setTimeout(r, 5));
  return events;
}

const TOKENS = ['a', 'Subject: x', '\r', '\n', '\r\n', '.', '..', '...', '\r\n.', '\r\n..', '.\r\n', '\n.\r\n', '\r.\r', '\n.\n', '\r\n.\r\n', '\r\n..\r\n', '\r\n.\r', '\n..'];

function randomStream(r: () => number): Buffer {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!;
  let text = r() < 0.5 ? 'EHLO client\r\n' : '';
  const messages = 1 + Math.floor(r() * 3);
  for (let m = 0; m < messages; m++) {
    text += 'MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n';
    const tokens = Math.floor(r() * 40);
    for (let t = 0; t < tokens; t++) text += r() < 0.1 ? 'x'.repeat(Math.floor(r() * 3000)) : pick(TOKENS);
    if (r() < 0.9) text += '\r\n.\r\n';
  }
  text += pick(['QUIT\r\n', 'RSET\r\nQUIT\r\n', 'NOOP', '']);
  return Buffer.from(text, 'binary');
}

/**
 * Cuts the stream at random places, and also right after each DATA command: like a client that
 * keeps to RFC 2920, the input after DATA is only written once the parser took the command (the
 * client waits for 354). smtp-server's own parser loses its place when a whole second message
 * arrives before its continue() for the first one returns (ours does not: the test above), so the
 * comparison keeps to what it handles.
 */
function randomChunks(r: () => number, input: Buffer): Buffer[][] {
  const text = input.toString('binary');
  const pieces: Buffer[][] = [];
  const size = r() < 0.3 ? () => 1 + Math.floor(r() * 6) : r() < 0.5 ? () => 1 + Math.floor(r() * 200) : () => 1 + Math.floor(r() * 20000);
  let from = 0;
  while (from < text.length) {
    const data = text.indexOf('DATA\r\n', from);
    const to = data < 0 ? text.length : data + 6;
    const chunks: Buffer[] = [];
    for (let at = from; at < to;) {
      const n = Math.min(size(), to - at);
      chunks.push(input.subarray(at, at + n));
      at += n;
    }
    pieces.push(chunks);
    from = to;
  }
  return pieces;
}

/** parse(), failing (with the input) instead of hanging when a parser stops taking input. */
async function parsed(make: Make, pieces: Buffer[][], opts: { maxBytes?: number; slowReader?: boolean }): Promise<string[]> {
  let timer: NodeJS.Timeout | undefined;
  const stuck = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`parser stuck on ${JSON.stringify(pieces.map((p) => p.map((c) => c.toString('binary'))))}`)), 5000);
  });
  try {
    return await Promise.race([parse(make, pieces, opts), stuck]);
  } finally {
    clearTimeout(timer);
  }
}

async function same(chunks: Buffer[][], opts: { maxBytes?: number; slowReader?: boolean } = {}): Promise<string[]> {
  const want = await parsed(original, chunks, opts);
  const got = await parsed(ours, chunks, opts);
  expect(got).toEqual(want);
  return got;
}

const b = (s: string): Buffer => Buffer.from(s, 'binary');

describe('the data-mode parser (data-stream.ts) against smtp-server\'s', () => {
  it('ends the data where smtp-server does in the cases that matter', async () => {
    const cases: string[][] = [
      ['DATA\r\n', 'hello\r\n.\r\n', 'QUIT\r\n'],
      ['DATA\r\n.\r\nQUIT\r\n'],
      ['DATA\r\n', '.\r\n', 'QUIT\r\n'],
      ['DATA\r\n', '..\r\n.\r\n'],
      ['DATA\r\n', '.', '.', '\r\n.\r\n'],
      ['DATA\r\nab\r', '\n', '.', '\r', '\nNOOP\r\n'],
      ['DATA\r\nab\r\n..x\r\n...\r\n.\r\n'],
      ['DATA\r\nbare\n.\nnot the end\r.\rnor this\n.\r\nnor this\r\n.\r\n'],
      ['DATA\r\nx\r\n.\r', '\nMAIL FROM:<a@b>\r\n'],
    ];
    const ends = [];
    for (const c of cases) ends.push(await same([c.map(b)]));
    // The parser is really parsing: the first case has its message and the command after it.
    expect(ends[0]).toEqual(['command "DATA"', 'message "hello\\r\\n" bytes=7 over=false counted=7', 'command "QUIT"']);
    // Bare LF/CR dots never end the data.
    expect(ends[7]!.filter((e) => e.startsWith('message'))).toHaveLength(1);
    expect(ends[7]![1]).toContain('nor this\\r\\n"');
  });

  it('goes on after two whole messages in one chunk (smtp-server\'s continue() lost its place there)', async () => {
    const two = 'DATA\r\none\r\n.\r\nMAIL FROM:<a@b>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n';
    expect(await parsed(ours, [[b(two)]], {})).toEqual([
      'command "DATA"', 'message "one\\r\\n" bytes=5 over=false counted=5',
      'command "MAIL FROM:<a@b>"', 'command "DATA"', 'message "two\\r\\n" bytes=5 over=false counted=5',
      'command "QUIT"',
    ]);
  });

  it('gives the same commands, bytes and counts for random streams cut at random places', async () => {
    const r = seededRandom(0x5eed);
    let messages = 0;
    for (let n = 0; n < 1000; n++) {
      const input = randomStream(r);
      const chunks = randomChunks(r, input);
      const opts = { ...(r() < 0.3 ? { maxBytes: 1 + Math.floor(r() * 4000) } : {}), slowReader: r() < 0.15 };
      const events = await same(chunks, opts);
      messages += events.filter((e) => e.startsWith('message')).length;
    }
    // The streams did reach data mode and come out of it, many times.
    expect(messages).toBeGreaterThan(1500);
  }, 60_000);
});
