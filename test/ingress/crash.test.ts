/**
 * The crash test: the built server as a child process, 20 concurrent SMTP sessions sending, then
 * `kill -9` mid-stream, then a restart. Every message that got 250 must be in the spool, whole
 * (byte for byte after our Received: header); a message whose 250 was not seen may exist (it was
 * stored, the reply was lost with the process) but then it must be whole too; nothing else exists.
 * A rule holds every mail so the scheduler leaves them alone while we look.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import type { Queue, QueuedMail } from '../../src/queue/types.js';
import { SmtpClient } from '../helpers/smtp-client.js';
import { startServer, type ServerProcess } from '../helpers/server-process.js';

const SESSIONS = 20;
const KILL_AFTER_ACKS = 400;

interface Sent {
  token: string;
  data: string;
  /** Queue id from the 250 reply, when it was seen. */
  ackedId?: string;
}

function messageFor(token: string): string {
  const lines = [`From: crash@example.org`, `To: rcpt@example.net`, `Subject: ${token}`, `Message-ID: <${token}@example.org>`, ''];
  for (let i = 0; i < 60; i++) lines.push(`${token} line ${i} ${'x'.repeat(60)}`);
  return lines.join('\r\n') + '\r\n';
}

async function sendUntilDead(port: number, session: number, sent: Sent[], stop: { acked: number; killed: boolean }): Promise<void> {
  let client: SmtpClient;
  try {
    client = await SmtpClient.connect({ port });
    if ((await client.read()).code !== 220) return;
    await client.ehlo();
  } catch {
    return;
  }
  for (let n = 0; !stop.killed; n++) {
    const token = `crash-${session}-${n}`;
    const entry: Sent = { token, data: messageFor(token) };
    try {
      if ((await client.command('MAIL FROM:<crash@example.org>')).code !== 250) return;
      if ((await client.command('RCPT TO:<rcpt@example.net>')).code !== 250) return;
      if ((await client.command('DATA')).code !== 354) return;
      sent.push(entry);
      client.write(entry.data + '.\r\n');
      const r = await client.read();
      if (r.code !== 250) return;
      entry.ackedId = r.text.split(' ').pop();
      stop.acked++;
    } catch {
      client.destroy();
      return;
    }
  }
  client.destroy();
}

async function allMails(queue: Queue): Promise<QueuedMail[]> {
  const out: QueuedMail[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await queue.browse({}, { limit: 1000, ...(cursor ? { cursor } : {}) });
    out.push(...page.items);
    if (!page.nextCursor) return out;
    cursor = page.nextCursor;
  }
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks).toString('utf8');
}

describe('crash safety of the built server', () => {
  let dir: string;
  let server: ServerProcess | undefined;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-crash-'));
  });
  afterAll(async () => {
    await server?.kill9();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps every acknowledged message whole across kill -9 and restart', async () => {
    const overlay = {
      smtp: { listen: ['127.0.0.1:0'], hostname: 'mx.crash.example', earlyTalkerDelay: '0ms' },
      spool: { dir: join(dir, 'spool') },
      admin: { listen: '127.0.0.1:0', token: 'crash-test-token-0123456789' },
      rules: [{ name: 'hold-everything', match: { senderDomain: '*' }, hold: true }],
      log: { level: 'warn', pretty: false },
    };
    // Started = "spoolhouse ready": SIGTERM handlers are installed by then.
    const ready = (p: { smtpCount: number; line: { msg?: string } }) => p.smtpCount >= 1 && p.line.msg === 'spoolhouse ready';
    server = await startServer({ config: { dir, overlay: { ...overlay, log: { level: 'info', pretty: false } } }, ready });
    const port = server.smtp[0]!.port;

    const sent: Sent[] = [];
    const stop = { acked: 0, killed: false };
    const sessions = Array.from({ length: SESSIONS }, (_, i) => sendUntilDead(port, i, sent, stop));
    const deadline = Date.now() + 30_000;
    while (stop.acked < KILL_AFTER_ACKS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    await server.kill9();
    stop.killed = true;
    await Promise.all(sessions);
    const acked = sent.filter((s) => s.ackedId);
    expect(acked.length).toBeGreaterThanOrEqual(KILL_AFTER_ACKS);

    // Restart on the same spool: recovery must succeed, then stop gracefully to inspect the spool.
    server = await startServer({ config: { dir, overlay: { ...overlay, log: { level: 'info', pretty: false } } }, ready });
    expect(await server.term()).toBe(0);
    server = undefined;

    const { SpoolQueue } = await import('../../src/queue/spool/spool-queue.js');
    const queue: Queue = new SpoolQueue({ dir: overlay.spool.dir, retainFinishedMs: 86_400_000, maxSize: 64 * 1024 ** 3, logger: silentLogger() });
    await queue.start();
    try {
      const mails = await allMails(queue);
      const byToken = new Map(mails.map((m) => [m.subject ?? '', m]));
      const sentByToken = new Map(sent.map((s) => [s.token, s]));
      // Nothing in the spool that we did not send.
      for (const m of mails) expect(sentByToken.has(m.subject ?? ''), `unexpected mail ${m.id} "${m.subject}"`).toBe(true);
      let storedWithoutAck = 0;
      for (const s of sent) {
        const mail = byToken.get(s.token);
        if (s.ackedId) {
          expect(mail, `acknowledged ${s.token} (${s.ackedId}) missing after crash`).toBeDefined();
          expect(mail!.id).toBe(s.ackedId);
        }
        if (!mail) continue;
        if (!s.ackedId) storedWithoutAck++;
        expect(mail.state).toBe('held');
        const body = await readAll(await queue.readBody(mail.id));
        // Whole: our Received: header, then exactly the bytes the client sent.
        expect(body.startsWith('Received: ')).toBe(true);
        expect(body.endsWith(s.data)).toBe(true);
        expect(body.length - body.indexOf(`From: crash@example.org`)).toBe(s.data.length);
        expect(mail.size).toBe(Buffer.byteLength(body));
      }
      console.log(`crash test: ${sent.length} DATA sent, ${acked.length} acknowledged (all present and whole), ${storedWithoutAck} stored without a 250 seen, ${sent.length - acked.length - storedWithoutAck} lost before being stored (never acknowledged)`);
    } finally {
      await queue.close();
    }
  }, 120_000);
});
