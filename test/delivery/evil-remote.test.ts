/**
 * A remote SMTP server that misbehaves at random cannot make delivery lose a mail or bounce one
 * for nothing: a raw TCP server on loopback (not smtp-server, which only sends well-formed replies)
 * answers each step from a seeded menu: the right reply, 4xx, 5xx, a multi-line reply whose lines
 * disagree, a reply with no code, a code that does not exist (999), a reply in two TCP writes, a
 * long line, a bare LF, a pause, silence past the timeout, or a dropped connection (after the
 * final "." too). Batches of numbered mails (1–3 recipients each) are delivered through it; for
 * every recipient the result must be what the remote said:
 * - delivered only if, in one transaction, the remote's last reply line to its RCPT and to the
 *   mail's final "." was 2xx;
 * - failed (a bounce) only if the remote's last reply line to its MAIL, RCPT, DATA or final "."
 *   was 5xx in a transaction of that mail;
 * - deferred otherwise; never an exception, never a hang past the timeouts.
 * A failure names the seed; FUZZ_SEED=N repeats it, FUZZ_MAILS=N makes it longer.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { seededRandom } from '../helpers/rng.js';
import { hostsFor, makeDeliverer, outbound, testConfig } from './harness.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261205);
const MAILS = Number(process.env.FUZZ_MAILS ?? 60);

/** What the remote said to one transaction, by the effective (last-line) code of each reply. */
interface Transaction {
  mail?: number;
  rcpts: { address: string; code: number }[];
  data?: number;
  /** The reply to the final "." (undefined: none was sent). */
  final?: number;
  seq?: number;
}

type Step = { text: string } | 'drop' | 'stall' | { split: string } | { delayMs: number; text: string } | { lateMs: number; text: string };

function effectiveCode(text: string): number {
  const lines = text.split(/\r?\n/).filter(Boolean);
  const last = lines[lines.length - 1] ?? '';
  return /^\d{3}(?:[ -]|$)/.test(last) ? Number(last.slice(0, 3)) : NaN;
}

class EvilRemote {
  readonly transactions: Transaction[] = [];
  #server: Server;
  #sockets = new Set<Socket>();
  #connections = 0;

  /** Some replies come late and are overtaken by later ones: a server out of step with itself. */
  constructor(readonly seed: number, readonly outOfOrder = false) {
    this.#server = createServer((s) => this.#session(s));
  }

  async listen(): Promise<number> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    return (this.#server.address() as { port: number }).port;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }

  #session(socket: Socket): void {
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => undefined);
    const rnd = seededRandom(this.seed * 1000 + this.#connections++);
    const pick = <T>(weighted: [number, T][]): T => {
      let r = rnd() * weighted.reduce((a, [w]) => a + w, 0);
      for (const [w, v] of weighted) if ((r -= w) < 0) return v;
      return weighted[weighted.length - 1]![1];
    };
    /** Answers `ok` mostly; otherwise anything a broken or hostile server might say. */
    const menu = (ok: string, temp: string, perm: string): Step => pick<Step>([
      [70, { text: ok }], [8, { text: temp }], [6, { text: perm }],
      [2, { text: 'hello there' }], [2, { text: `999 ${ok.slice(4)}` }],
      [2, { text: `${ok.slice(0, 3)}-${ok.slice(4)}\r\n${perm}` }], [2, { text: `${perm.slice(0, 3)}-${perm.slice(4)}\r\n${ok}` }],
      [2, { split: ok }], [1, { text: `${ok} ${'x'.repeat(3000)}` }], [1, { text: ok.replace(/$/, '\n').trimEnd() + '\n' }],
      [1, { delayMs: 50, text: ok }], [this.outOfOrder ? 3 : 0, { lateMs: 50, text: ok }], [1.5, 'drop'], [0.5, 'stall'],
    ]);
    let tx: Transaction | undefined;
    let buffer = '';
    let inData = false;
    let closed = false;
    const id = this.#connections;
    const debug = (what: string) => { if (process.env.FUZZ_DEBUG) console.log(`conn ${id}: ${what.slice(0, 160)}`); };
    const send = (step: Step): number | undefined => {
      debug(`S: ${JSON.stringify(step)}`);
      if (closed) return undefined;
      if (step === 'drop') {
        closed = true;
        socket.destroy();
        return undefined;
      }
      if (step === 'stall') {
        closed = true; // never answers again; the sender's timeout must act
        return undefined;
      }
      if ('split' in step) {
        const line = `${step.split}\r\n`;
        write(line.slice(0, 3), 0);
        write(line.slice(3), 5);
        return effectiveCode(step.split);
      }
      const text = step.text.endsWith('\n') ? step.text : `${step.text}\r\n`;
      if ('lateMs' in step) {
        // Late and out of order: the replies after it overtake it (a server gone wrong).
        setTimeout(() => { if (!socket.destroyed) socket.write(text); }, step.lateMs);
        return NaN;
      }
      write(text, 'delayMs' in step ? step.delayMs : 0);
      return effectiveCode(step.text);
    };
    /** Replies leave in order: a late one holds back those after it, as a slow server's would. */
    let chain = Promise.resolve();
    const write = (text: string, delayMs: number) => {
      chain = chain.then(async () => {
        if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
        if (!socket.destroyed) socket.write(text);
      });
    };
    const onLine = (line: string) => {
      const verb = line.slice(0, 4).toUpperCase();
      if (verb === 'EHLO' || verb === 'HELO') send(pick<Step>([[90, { text: '250-evil.test\r\n250-PIPELINING\r\n250 8BITMIME' }], [4, { text: '421 4.3.2 not now' }], [3, { text: 'garbage' }], [3, 'drop']]));
      else if (verb === 'MAIL') {
        tx = { rcpts: [] };
        this.transactions.push(tx);
        tx.mail = send(menu('250 2.1.0 Ok', '451 4.3.0 Try later', '553 5.7.1 Sender refused'));
      } else if (verb === 'RCPT') {
        const address = /<([^>]*)>/.exec(line)?.[1] ?? '';
        const code = send(menu('250 2.1.5 Ok', '450 4.2.0 Mailbox busy', '550 5.1.1 No such user'));
        tx?.rcpts.push({ address, code: code ?? NaN });
      } else if (verb === 'DATA') {
        const code = send(menu('354 End data with <CR><LF>.<CR><LF>', '451 4.3.0 Not now', '554 5.7.1 No data for you'));
        if (tx) tx.data = code;
        if (code === 354) inData = true;
      } else if (verb === 'RSET' || verb === 'NOOP') send({ text: '250 2.0.0 Ok' });
      else if (verb === 'QUIT') {
        send({ text: '221 2.0.0 Bye' });
        closed = true;
        socket.end();
      } else send({ text: '500 5.5.2 What?' });
    };
    socket.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('latin1');
      for (;;) {
        if (inData) {
          const end = buffer.indexOf('\r\n.\r\n');
          if (end < 0) return;
          const message = buffer.slice(0, end);
          debug(`C: <data ${message.length} bytes>.`);
          buffer = buffer.slice(end + 5);
          inData = false;
          const seq = /^X-Seq: (\d+)/m.exec(message)?.[1];
          if (tx && seq !== undefined) tx.seq = Number(seq);
          const step = pick<Step>([
            [72, { text: '250 2.0.0 Ok: queued' }], [9, { text: '451 4.3.0 Try again' }], [7, { text: '554 5.7.1 Rejected' }],
            [2, { text: 'queued!' }], [2, { text: '999 what' }], [2, { split: '250 2.0.0 Ok: queued' }],
            [2, { text: '250-2.0.0 Ok\r\n451 4.3.0 but not really' }], [2, 'drop'], [1, 'stall'], [1, { delayMs: 50, text: '250 2.0.0 Ok: queued' }],
          ]);
          const code = send(step);
          if (tx) tx.final = code;
          continue;
        }
        const eol = buffer.indexOf('\r\n');
        if (eol < 0) return;
        const line = buffer.slice(0, eol);
        buffer = buffer.slice(eol + 2);
        debug(`C: ${line}`);
        if (!closed) onLine(line);
      }
    });
    const greeting = pick<Step>([[88, { text: '220 evil.test ESMTP' }], [3, { text: '220-evil.test\r\n220 ESMTP' }], [3, { text: '554 5.7.1 Go away' }], [2, { text: 'welcome' }], [2, 'drop'], [2, { split: '220 evil.test ESMTP' }]]);
    send(greeting);
  }
}

let remote: EvilRemote | undefined;
afterEach(async () => {
  await remote?.close();
  remote = undefined;
});

async function deliverAll(port: number, seed: number, mails: number, each: (n: number, result: Awaited<ReturnType<ReturnType<typeof makeDeliverer>['deliver']>>[number]) => void): Promise<void> {
  const deliverer = makeDeliverer(testConfig({
    delivery: {
      routes: { 'evil.test': `127.0.0.1:${port}` },
      timeouts: { connect: '1s', greeting: '400ms', command: '400ms', data: '1s' },
      connectionReuseWait: '0s',
    },
  }));
  const dest = await hostsFor(deliverer, 'evil.test');
  const rnd = seededRandom(seed);
  try {
    let seq = 0;
    while (seq < mails) {
      const batch = Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => {
        const n = seq++;
        const to = Array.from({ length: 1 + Math.floor(rnd() * 3) }, (_, i) => `u${n}-${i}@evil.test`);
        return outbound({ id: `m${n}`, to, body: `X-Seq: ${n}\r\nSubject: mail ${n}\r\n\r\n${'.line\r\n'.repeat(Math.floor(rnd() * 5))}body\r\n` });
      });
      const results = await deliverer.deliver(dest, batch);
      for (const [i, result] of results.entries()) each(Number(batch[i]!.id.slice(1)), result);
    }
  } finally {
    await deliverer.close();
  }
}

describe('delivery to a remote that misbehaves', () => {
  it(`marks a recipient delivered or failed only on what the remote said (seed ${SEED})`, async () => {
    remote = new EvilRemote(SEED);
    const port = await remote.listen();
    const problems: string[] = [];
    const outcomes = { delivered: 0, deferred: 0, failed: 0 };
    const r0 = remote;
    await deliverAll(port, SEED, MAILS, (n, result) => {
      const txs = r0.transactions.filter((t) => t.rcpts.some((r) => r.address.startsWith(`u${n}-`)));
      for (const r of result.recipients) {
        outcomes[r.outcome]++;
        const where = `seed ${SEED}, mail ${n}, ${r.address}: ${r.outcome} ${r.reply.code} ${r.reply.enhanced ?? ''} ${r.reply.message.slice(0, 120)}`;
        const said = (c: number | undefined, lo: number) => c !== undefined && c >= lo && c < lo + 100;
        if (r.outcome === 'delivered') {
          const ok = txs.some((t) => t.seq === n && said(t.final, 200) && t.rcpts.some((x) => x.address === r.address && said(x.code, 200)));
          if (!ok) problems.push(`${where}: the remote never accepted it (${JSON.stringify(txs)})`);
          if (!said(r.reply.code, 200)) problems.push(`${where}: delivered with a reply that is not 2xx`);
        } else if (r.outcome === 'failed') {
          const refused = txs.some((t) => said(t.mail, 500) || said(t.data, 500) || said(t.final, 500) || t.rcpts.some((x) => x.address === r.address && said(x.code, 500)));
          if (!refused) problems.push(`${where}: a bounce without a 5xx from the remote (${JSON.stringify(txs)})`);
          if (!said(r.reply.code, 500)) problems.push(`${where}: failed with a reply that is not 5xx`);
        } else if (!said(r.reply.code, 400)) {
          problems.push(`${where}: deferred with a reply that is not 4xx`);
        }
      }
    });
    expect(problems).toEqual([]);
    // The menu reached every outcome.
    expect(outcomes.delivered).toBeGreaterThan(0);
    expect(outcomes.deferred).toBeGreaterThan(0);
    expect(outcomes.failed).toBeGreaterThan(0);
  });

  it(`is not wedged by a remote whose replies come out of order: every call ends, every recipient has an outcome (seed ${SEED})`, async () => {
    remote = new EvilRemote(SEED, true);
    const port = await remote.listen();
    let recipients = 0;
    // What such a remote's replies mean cannot be known (they answer other commands than they
    // seem to); what must hold is that delivery goes on, bounded by its timeouts.
    await deliverAll(port, SEED, Math.min(MAILS, 40), (_n, result) => {
      for (const r of result.recipients) {
        recipients++;
        expect(['delivered', 'deferred', 'failed']).toContain(r.outcome);
      }
    });
    expect(recipients).toBeGreaterThan(40);
  });
});
