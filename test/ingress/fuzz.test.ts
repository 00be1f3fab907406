/**
 * Bad input never crashes the ingress and never loses or invents mail: seeded random sessions
 * against the real server, mixing whole transactions with random bodies (lines starting with
 * dots, long lines, 8-bit bytes), commands with broken or odd addresses and parameters, random
 * bytes, pipelined bursts, AUTH and STARTTLS where neither is offered, QUIT, and clients that go
 * away in the middle of the data. Checked after every step and at the end:
 * - every reply is a well-formed SMTP reply (three digits 2xx-5xx, no control characters);
 * - the queue holds exactly the mails whose ids the clients were given in a "250 ... queued as"
 *   reply, nothing else (a transaction cut off mid-data leaves nothing);
 * - each whole transaction's message is stored byte for byte after our Received: header;
 * - the server still takes a plain mail afterwards.
 * A failure names the seed and the step; FUZZ_SEED=N repeats it, FUZZ_STEPS=N makes it longer.
 */
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../helpers/rng.js';
import { SmtpClient, type SmtpReply } from '../helpers/smtp-client.js';
import { startIngress } from './harness.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261205);
const SESSIONS = 6;
const STEPS = Number(process.env.FUZZ_STEPS ?? 60);
const MAX_SIZE = 32 * 1024;
/** Sent after every step that may leave the session anywhere: its 214 says every reply before it is in. */
const MARKER = '\r\n.\r\nHELP\r\n';

describe('the ingress under random input', () => {
  it(`answers every command with a proper reply and queues exactly what it acknowledged (seed ${SEED})`, async () => {
    const h = await startIngress({
      smtp: {
        maxMessageSize: MAX_SIZE,
        maxRecipients: 5,
        errorLimits: { soft: 5, hard: 30, sleep: '5ms', junk: 10 },
      },
      relay: { networks: ['10.0.0.0/8'], domains: ['local.example'] },
    });
    const acknowledged = new Set<string>();
    const expectedBodies = new Map<string, Buffer>();
    const badReplies: string[] = [];
    try {
      const sessions = Array.from({ length: SESSIONS }, (_, i) => fuzzSession(h.port, SEED + i, { acknowledged, expectedBodies, badReplies }));
      await Promise.all(sessions);
      expect(badReplies).toEqual([]);

      // The 250 comes once a mail is durable; browse lists it once indexed, which get() waits for.
      for (const id of acknowledged) expect(await h.queue.get(id), `acknowledged ${id}`).toBeDefined();
      const stored = await h.mails();
      expect(stored.map((m) => m.id).sort()).toEqual([...acknowledged].sort());
      expect(expectedBodies.size).toBeGreaterThan(10);
      for (const [id, sent] of expectedBodies) {
        const body = await readBody(h.queue, id);
        expect(body.subarray(body.length - sent.length).equals(sent), `stored message of ${id}`).toBe(true);
        expect(body.subarray(0, body.length - sent.length).toString('latin1')).toMatch(/^Received: /);
      }

      const c = await SmtpClient.connect({ port: h.port });
      await c.read();
      await c.ehlo();
      const last = await c.sendMail('after@local.example', ['rcpt@local.example'], 'Subject: still here\r\n\r\nyes');
      expect(last.code).toBe(250);
      await c.quit();
    } finally {
      await h.close();
    }
  });
});

interface Ledger {
  acknowledged: Set<string>;
  expectedBodies: Map<string, Buffer>;
  badReplies: string[];
}

async function readBody(queue: { readBody(id: string): Promise<NodeJS.ReadableStream> }, id: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of (await queue.readBody(id)) as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}

async function fuzzSession(port: number, seed: number, ledger: Ledger): Promise<void> {
  const rnd = seededRandom(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  let c: SmtpClient | undefined;
  let step = 0;
  const where = () => `seed ${seed}, step ${step}`;

  const check = (r: SmtpReply) => {
    if (!/^[2-5]\d\d$/.test(String(r.code)) || r.lines.some((l) => /[\x00-\x08\x0a-\x1f\x7f]/.test(l))) ledger.badReplies.push(`${where()}: ${JSON.stringify(r.raw)}`);
    const m = /queued as (\S+)$/.exec(r.text);
    if (r.code === 250 && m) ledger.acknowledged.add(m[1]!);
  };
  /** Reads replies up to the marker's 214 (or the connection's end). */
  const drain = async () => {
    for (;;) {
      let r: SmtpReply;
      try {
        r = await c!.read();
      } catch (err) {
        if (!/connection closed/.test((err as Error).message)) throw err;
        c = undefined;
        return;
      }
      check(r);
      if (r.code === 214) return;
    }
  };
  const connect = async () => {
    c = await SmtpClient.connect({ port });
    check(await c.read());
    if (rnd() < 0.9) check(await c.command(`${pick(['EHLO', 'HELO', 'ehlo'])} ${pick(['client.example', '[127.0.0.1]', 'x', '', '-bad-', 'ü.example'])}`));
  };

  for (step = 0; step < STEPS; step++) {
    try {
      await fuzzStep();
    } catch (err) {
      // A connection the server closed (QUIT, a 421) mid-step: the next step opens another.
      // A reply that never came is a hang: that is a failure.
      if (!/connection closed|ECONNRESET|EPIPE/.test((err as Error).message)) ledger.badReplies.push(`${where()}: ${(err as Error).message}`);
      c?.destroy();
      c = undefined;
    }
  }
  if (c && !c.closed) await c.quit();

  async function fuzzStep(): Promise<void> {
    if (!c || c.closed) await connect();
    const roll = rnd();
    if (roll < 0.3) {
      // A whole, well-formed transaction with a random message.
      const sent = randomMessage(rnd, seed, step);
      // As a client does after trouble: EHLO again (it resets the session).
      const hello = await c!.command('EHLO client.example');
      check(hello);
      if (hello.code !== 250) ledger.badReplies.push(`${where()}: EHLO got ${hello.raw}`);
      const r = await c!.sendMail(`s${step}@local.example`, [`r${step}@local.example`], dotStuff(sent));
      check(r);
      if (r.code === 250) {
        const id = /queued as (\S+)$/.exec(r.text)?.[1];
        // The CRLF before the final "." ends the message's last line.
        if (id) ledger.expectedBodies.set(id, Buffer.concat([sent, Buffer.from('\r\n')]));
      } else if (sent.length + 2 <= MAX_SIZE * 0.9 && r.code !== 421) {
        ledger.badReplies.push(`${where()}: a well-formed mail of ${sent.length} bytes got ${r.raw}`);
      }
    } else if (roll < 0.4) {
      // A client that goes away in the middle of the data.
      check(await c!.command('EHLO client.example'));
      const m = await c!.command('MAIL FROM:<gone@local.example>');
      check(m);
      const r = await c!.command('RCPT TO:<gone@local.example>');
      check(r);
      const d = await c!.command('DATA');
      check(d);
      if (d.code === 354) c!.write(dotStuff(randomMessage(rnd, seed, step)).subarray(0, 1 + int(2000)));
      c!.destroy();
      c = undefined;
    } else {
      // Anything else, then the marker.
      c!.write(Buffer.concat([randomCommands(rnd), Buffer.from(MARKER)]));
      await drain();
    }
  }
}

const ADDRESSES = [
  'a@local.example', 'user@elsewhere.example', '', 'postmaster', '"quoted user"@local.example', '@r1,@r2:x@local.example',
  'x@[127.0.0.1]', 'x@[IPv6:::1]', 'ü@local.example', `${'a'.repeat(300)}@local.example`, 'no-at-sign', 'a@b@c', '<>',
  'a@local.example\0', 'a@-bad-.example', 'a@local.example>', '"unterminated@local.example', 'a@.example', 'a..b@local.example',
];
const PARAMETERS = [
  'SIZE=100', 'SIZE=999999999999', 'SIZE=x', 'SIZE=', 'BODY=8BITMIME', 'BODY=BINARYMIME', 'BODY=7BIT', 'SMTPUTF8', 'RET=FULL',
  'RET=bogus', 'ENVID=abc', 'ENVID=a+2Bb', 'ENVID=', 'NOTIFY=SUCCESS,FAILURE', 'NOTIFY=NEVER,SUCCESS', 'NOTIFY=', 'ORCPT=rfc822;a@b',
  'ORCPT=x', 'MT-PRIORITY=5', 'MT-PRIORITY=99', 'HOLDFOR=60', 'HOLDFOR=-1', 'HOLDUNTIL=2030-01-01T00:00:00Z', 'HOLDUNTIL=yesterday',
  'FOO=bar', '=', 'AUTH=<>', 'SIZE=1 SIZE=2',
];
/** Not HELP: its 214 is the marker's. */
const VERBS = ['HELO', 'EHLO', 'MAIL FROM:', 'RCPT TO:', 'DATA', 'RSET', 'NOOP', 'VRFY', 'EXPN', 'QUIT', 'AUTH PLAIN', 'AUTH LOGIN',
  'AUTH CRAM-MD5', 'STARTTLS', 'BDAT 10 LAST', 'ETRN', 'XCLIENT ADDR=1.2.3.4', 'TURN', 'mail from:', 'rcpt to:', 'GET / HTTP/1.1'];

/** One to five command lines of every kind, or raw bytes; sent in one write (pipelined). */
function randomCommands(rnd: () => number): Buffer {
  const int = (n: number) => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const parts: Buffer[] = [];
  for (let n = 1 + int(5); n > 0; n--) {
    const kind = rnd();
    if (kind < 0.15) {
      // Random bytes, no line ends, up to 1200 of them (past the 512 of RFC 5321's command line).
      const b = Buffer.alloc(int(1200));
      for (let i = 0; i < b.length; i++) {
        let v = int(256);
        if (v === 10 || v === 13) v = 32;
        b[i] = v;
      }
      parts.push(b, Buffer.from('\r\n'));
    } else if (kind < 0.25) {
      // Line ends on their own, bare or doubled.
      parts.push(Buffer.from(pick(['\n', '\r', '\r\r\n', '\n\r\n', '\r\n\r\n', '.\r\n', '\0\r\n'])));
    } else if (kind < 0.35) {
      // DATA with a body that may end early, hold a bare LF dot, or never end here (the marker ends it).
      parts.push(Buffer.from(`DATA\r\n${pick(['x', 'Subject: a\r\n\r\nb', 'a\n.\nMAIL FROM:<x@y>\n', 'a\r\n.\r\nRSET', '..\r\n.', 'a\r.\rb'])}\r\n`));
    } else {
      const verb = pick(VERBS);
      let arg = '';
      if (/FROM:|TO:|from:|to:/.test(verb)) {
        const addr = pick(ADDRESSES);
        arg = `${pick(['<', '', ' <', '<<'])}${addr}${pick(['>', '', '>>', '> '])}`;
        for (let p = int(3); p > 0; p--) arg += ` ${pick(PARAMETERS)}`;
      } else if (rnd() < 0.5) {
        arg = ` ${pick([...ADDRESSES, 'x'.repeat(600), '=?utf-8?b?w7w=?=', '\t', 'ZHVtbXk=', '*'])}`;
      }
      parts.push(Buffer.from(`${verb}${arg}\r\n`, 'utf8'));
    }
  }
  return Buffer.concat(parts);
}

/** A message with CRLF lines: some start with a dot, some are long, some hold 8-bit bytes. */
function randomMessage(rnd: () => number, seed: number, step: number): Buffer {
  const int = (n: number) => Math.floor(rnd() * n);
  const lines = [`Message-ID: <fuzz-${seed}-${step}@client.example>`, `Subject: fuzz ${seed} ${step}`, ''];
  for (let n = int(40); n > 0; n--) {
    const kind = rnd();
    if (kind < 0.15) lines.push('.'.repeat(1 + int(3)) + 'x'.repeat(int(5)));
    else if (kind < 0.2) lines.push('');
    else if (kind < 0.25) lines.push('y'.repeat(900 + int(1200)));
    else {
      let s = '';
      for (let i = int(100); i > 0; i--) s += String.fromCharCode(rnd() < 0.05 ? 0x80 + int(128) : 32 + int(95));
      lines.push(s);
    }
  }
  return Buffer.from(lines.join('\r\n'), 'latin1');
}

/** RFC 5321 §4.5.2: a line that starts with a dot gets one more. */
function dotStuff(message: Buffer): Buffer {
  return Buffer.from(message.toString('latin1').replace(/(^|\r\n)\./g, '$1..'), 'latin1');
}
