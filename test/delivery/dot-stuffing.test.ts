/**
 * The fast DATA encoder against nodemailer's own, on the same input split the same way: same
 * bytes out, same counters, same final "." (its _flush), for CRLF-only bodies (the fast path)
 * and for bodies with bare CR/LF (the fallback), with chunk boundaries anywhere.
 */
import { describe, expect, it } from 'vitest';
import DataStream from 'nodemailer/lib/smtp-connection/data-stream';
import { fastDotStuffingTransform, nodemailerTransform } from '../../src/delivery/dot-stuffing.js';
import { seededRandom } from '../helpers/rng.js';

type Encoder = InstanceType<typeof DataStream> & { inByteCount: number; outByteCount: number };

async function encode(transform: typeof nodemailerTransform, chunks: Buffer[]): Promise<{ out: Buffer; inBytes: number; outBytes: number }> {
  const s = new DataStream() as Encoder;
  (s as unknown as { _transform: typeof nodemailerTransform })._transform = transform;
  const parts: Buffer[] = [];
  s.on('data', (b: Buffer) => parts.push(b));
  const ended = new Promise((r) => s.once('end', r));
  for (const c of chunks) s.write(c);
  s.end();
  await ended;
  return { out: Buffer.concat(parts), inBytes: s.inByteCount, outBytes: s.outByteCount };
}


function body(r: () => number, crlfOnly: boolean): Buffer {
  const pieces = ['.', '..', 'a', 'text ', '\r\n', '\r\n.', '\r\n..\r\n', '.\r\n', 'x.y', '\r\n\r\n'];
  if (!crlfOnly) pieces.push('\r', '\n', '\n.', '\r.', '\r\r\n', '\n\n');
  let s = '';
  const n = Math.floor(r() * 60);
  for (let i = 0; i < n; i++) s += pieces[Math.floor(r() * pieces.length)];
  return Buffer.from(s, 'latin1');
}

function split(r: () => number, b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length;) {
    const n = 1 + Math.floor(r() * 12);
    out.push(b.subarray(i, i + n));
    i += n;
  }
  return out;
}

describe('fast dot-stuffing', () => {
  it('gives what nodemailer gives for 3000 random bodies, CRLF-only and not, split anywhere', async () => {
    const r = seededRandom(20261203);
    for (let i = 0; i < 3000; i++) {
      const b = body(r, i % 2 === 0);
      const chunks = r() < 0.3 ? [b] : split(r, b);
      const want = await encode(nodemailerTransform, chunks);
      const got = await encode(fastDotStuffingTransform, chunks);
      expect(got.out.toString('latin1'), JSON.stringify(b.toString('latin1'))).toBe(want.out.toString('latin1'));
      expect([got.inBytes, got.outBytes]).toEqual([want.inBytes, want.outBytes]);
    }
  });

  it('doubles dots at line starts, across chunk boundaries too, and ends with CRLF.CRLF', async () => {
    const got = await encode(fastDotStuffingTransform, [Buffer.from('.a\r\n'), Buffer.from('.b\r'), Buffer.from('\n.'), Buffer.from('.c\r\n')]);
    expect(got.out.toString()).toBe('..a\r\n..b\r\n...c\r\n.\r\n');
  });

  it('is what the SMTP client uses', async () => {
    await import('../../src/delivery/session.js');
    expect((DataStream.prototype as unknown as { _transform: unknown })._transform).toBe(fastDotStuffingTransform);
  });
});
