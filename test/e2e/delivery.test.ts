/**
 * End to end through the built server process (dist/src/main.js; build first with `npx tsc -p .`):
 * SMTP in at the real ingress, the spool, the scheduler, the Deliverer, out to a real receiving
 * server. Proves the bytes survive unchanged (plus our Received: header on top) and that a
 * kill -9 in the middle of delivering many mails loses none of the accepted ones.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterEach, describe, expect, it } from 'vitest';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { deliveringServerOverlay, sendNumbered } from '../helpers/e2e.js';
import { startServer, type ServerProcess } from '../helpers/server-process.js';

const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-e2e-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function receiver(): Promise<Receiver> {
  const rx = await startReceiver();
  cleanups.push(() => rx.close());
  return rx;
}

function overlay(dir: string, rx: Receiver, delivery: Record<string, unknown> = {}): Record<string, unknown> {
  return deliveringServerOverlay({ rx, spoolDir: join(dir, 'spool'), delivery });
}

async function server(dir: string, config: Record<string, unknown>): Promise<ServerProcess> {
  const p = await startServer({ config: { dir, overlay: config } });
  cleanups.push(() => p.kill9());
  return p;
}

function message(seq: number, extra = ''): Buffer {
  return Buffer.from(
    `From: Sender <sender@origin.test>\r\nTo: user@dest.test\r\nSubject: e2e ${seq}\r\n`
    + `Message-ID: <e2e-${seq}-${Date.now()}@origin.test>\r\nDate: ${new Date().toUTCString()}\r\nX-Seq: ${seq}\r\n`
    + `MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`
    + `Hello number ${seq}.\r\n.a line with a leading dot\r\nnon-ASCII: grüße, 日本\r\n${extra}`,
  );
}

/** Splits off the first header field (ours: Received:, possibly folded) from the received bytes. */
function splitReceived(data: Buffer): { received: string; rest: Buffer } {
  const text = data.toString('latin1');
  let end = text.indexOf('\r\n') + 2;
  while (text[end] === ' ' || text[end] === '\t') end = text.indexOf('\r\n', end) + 2;
  return { received: text.slice(0, end), rest: data.subarray(end) };
}

function transport(port: number) {
  const t = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  cleanups.push(() => t.close());
  return t;
}

describe('end to end through the server process', () => {
  it('delivers what the ingress accepted with our Received: on top and otherwise byte for byte', async () => {
    const dir = tempDir();
    const rx = await receiver();
    const p = await server(dir, overlay(dir, rx));
    const body = message(1, 'end\r\n');
    await transport(p.smtp[0]!.port).sendMail({ envelope: { from: 'sender@origin.test', to: ['user@dest.test'] }, raw: body });
    const [tx] = await rx.waitForCompleted(1, 15_000);
    const { received, rest } = splitReceived(tx!.data);
    expect(received).toMatch(/^Received: from /);
    expect(received).toContain('mx.spoolhouse.test');
    expect(rest.equals(body)).toBe(true);
    expect(tx!.mailFrom.address).toBe('sender@origin.test');
    expect(await p.term()).toBe(0);
  });

  it('kill -9 during delivery of many mails, restart: every accepted mail is delivered at least once', async () => {
    const dir = tempDir();
    const rx = await receiver();
    // Nothing gets through until every mail is accepted (tries meanwhile are deferred by the 421),
    // then a rate limit keeps delivery going for ≥ 6 s: the kill lands in the middle of it however
    // slowly a loaded machine accepted the mails.
    rx.script = { greeting: '421 4.3.2 Not yet' };
    const config = overlay(dir, rx, { limits: { default: { connections: 4, messagesPerConnection: 10, rate: '40/s' }, domains: {} } });
    const first = await server(dir, config);
    const count = 300;
    const accepted = await sendNumbered(first.smtp[0]!.port, count, { connections: 10, message: (seq) => message(seq) });
    expect(accepted.size).toBe(count);
    expect(rx.completed()).toHaveLength(0);
    rx.script = {};
    await rx.waitForCompleted(40, 30_000);
    await first.kill9();
    const beforeRestart = rx.completed().length;
    expect(beforeRestart).toBeLessThan(count); // the kill really was mid-delivery

    await server(dir, config);
    const { received, missing, duplicates } = await rx.waitForDeliveries(accepted, 60_000);
    console.log(`kill -9 after ${beforeRestart}/${count} delivered: ${received.length} deliveries after restart, ${duplicates} duplicates, ${missing.length} missing`);
    expect(missing).toEqual([]);
  }, 120_000);
});
