/**
 * Issue 5, "Kafka stopped for a while", through a real server process (dist/src/main.js; build
 * first with `npx tsc -p .`) on a broker of the test's own, which it stops and restarts:
 * - while the broker is down, SMTP ingress answers `451 4.3.0` at the end of DATA (never 250),
 *   and the listener keeps serving the session and new ones;
 * - delivery pauses: mail accepted before the outage that falls due during it is not delivered;
 * - the server process stays alive through the outage;
 * - once the broker is back, new mail is accepted again (same process, no restart), and every
 *   mail that got 250, before or after, reaches the receiving SMTP server exactly once, while
 *   no mail that got 451 is ever delivered.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { startServer, type ServerProcess } from '../helpers/server-process.js';
import { SmtpClient, type SmtpReply } from '../helpers/smtp-client.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { privateBroker, until, type PrivateBroker } from './helpers.js';

/** Mails tagged "X-Later: yes" are delayed by this much (a rule), so they fall due mid-outage. */
const DELAY_MS = 10_000;

function overlay(dir: string, rx: Receiver, brokers: string[]): Record<string, unknown> {
  return {
    smtp: { listen: ['127.0.0.1:0'], hostname: 'down.spoolhouse.test', earlyTalkerDelay: '0ms' },
    queue: { backend: 'kafka' },
    kafka: { brokers, topicPrefix: uniquePrefix('ingress-down'), partitions: 3, replicationFactor: 1, nodeId: 'down-node', clientId: 'down-node' },
    spool: { dir: join(dir, 'spool') },
    admin: { listen: '127.0.0.1:0', token: 'ingress-broker-down-token-0123456789' },
    log: { level: 'info', pretty: false },
    rules: [{ name: 'later', match: { header: { name: 'X-Later', value: 'yes' } }, delay: `${DELAY_MS}ms` }],
    delivery: {
      routes: { 'dest.test': rx.address },
      tls: { opportunistic: false, verify: false },
      retry: { min: '500ms', max: '2s', lifetime: '1h' },
      leaseTime: '10s',
    },
  };
}

function message(seq: number, later = false): string {
  return `From: Sender <sender@origin.test>\r\nTo: user@dest.test\r\nSubject: broker down ${seq}\r\n`
    + `Message-ID: <broker-down-${seq}-${Date.now()}@origin.test>\r\nX-Seq: ${seq}\r\n${later ? 'X-Later: yes\r\n' : ''}`
    + `\r\nHello number ${seq}.\r\n`;
}

const seqOf = (data: Buffer) => Number(/\r\nX-Seq: (\d+)\r\n/.exec(data.toString('latin1'))?.[1]);

/** One transaction on an open session; the reply to the final "." (waits past the queue's 8 s deadline). */
async function transaction(c: SmtpClient, seq: number, later = false): Promise<SmtpReply> {
  for (const line of ['MAIL FROM:<sender@origin.test>', 'RCPT TO:<user@dest.test>']) {
    const r = await c.command(line);
    if (r.code !== 250) return r;
  }
  const d = await c.command('DATA');
  if (d.code !== 354) return d;
  c.write(message(seq, later) + '.\r\n');
  return c.read(30_000);
}

async function session(port: number): Promise<SmtpClient> {
  const c = await SmtpClient.connect({ port });
  const greeting = await c.read();
  expect(greeting.code).toBe(220);
  expect((await c.ehlo('client.origin.test')).code).toBe(250);
  return c;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('SMTP ingress of a server process while Kafka is down', () => {
  let dir: string;
  let broker: PrivateBroker | undefined;
  let rx: Receiver | undefined;
  let server: ServerProcess | undefined;

  beforeAll(async () => {
    kafkaBrokers(); // like every Kafka test: fail rather than skip when the run has no broker
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-ingress-down-'));
    broker = await privateBroker();
    rx = await startReceiver();
    mkdirSync(join(dir, 'cfg'), { recursive: true });
    server = await startServer({ config: { dir: join(dir, 'cfg'), overlay: overlay(dir, rx, broker.brokers) }, timeoutMs: 60_000 });
  }, 120_000);

  afterAll(async () => {
    await server?.kill9();
    await rx?.close();
    await broker?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('answers 451 4.3.0 and pauses delivery while down, then accepts and delivers everything', async () => {
    const port = server!.smtp[0]!.port;
    const accepted = new Set<number>();
    const refused: { seq: number; reply: SmtpReply }[] = [];
    const recorded = () => server!.logs.filter((l) => l.msg === 'delivery attempt recorded').length;

    // Before: immediate mail is delivered (and recorded, so no redelivery is owed after the outage).
    const c1 = await session(port);
    for (const seq of [0, 1, 2]) {
      const r = await transaction(c1, seq);
      expect(r.code, r.raw).toBe(250);
      accepted.add(seq);
    }
    await rx!.waitForCompleted(3, 30_000);
    await until('3 delivery attempts recorded', async () => recorded() >= 3, 30_000);

    // Mail that falls due during the outage: accepted now, delayed by a rule.
    const sentAt = Date.now();
    for (const seq of [3, 4, 5]) {
      const r = await transaction(c1, seq, true);
      expect(r.code, r.raw).toBe(250);
      accepted.add(seq);
    }
    const lastDueAt = Date.now() + DELAY_MS;
    await c1.quit();

    const stopAt = Date.now();
    await broker!.stop();
    const downAt = Date.now();
    console.log(`broker stopped in ${downAt - stopAt} ms`);
    // The broker must be down before the delayed mail is due, or the pause is not shown.
    expect(downAt, 'broker took too long to stop').toBeLessThan(sentAt + DELAY_MS - 1_000);

    // Ingress: 451 4.3.0 at the end of DATA, twice on one session (the session survives), and on a new one.
    const c2 = await session(port);
    for (const seq of [100, 101]) {
      const started = Date.now();
      const r = await transaction(c2, seq);
      refused.push({ seq, reply: r });
      expect(r.code, r.raw).toBe(451);
      expect(r.enhanced, r.raw).toBe('4.3.0');
      console.log(`broker down: DATA of mail ${seq} answered "${r.raw}" after ${Date.now() - started} ms`);
    }
    expect((await c2.command('NOOP')).code).toBe(250);
    await c2.quit();
    const c3 = await session(port);
    const r3 = await transaction(c3, 102);
    refused.push({ seq: 102, reply: r3 });
    expect(r3.code, r3.raw).toBe(451);
    expect(r3.enhanced, r3.raw).toBe('4.3.0');
    await c3.quit();

    // A run-time change through the API cannot reach the cluster: 503 with a JSON message, and
    // nothing changes on this node either.
    const adminBase = server!.adminUrl!.replace(/\/$/, '');
    const auth = { authorization: 'Bearer ingress-broker-down-token-0123456789' };
    const put = await fetch(`${adminBase}/api/config`, {
      method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ delivery: { paused: ['dest.test'] } }),
    });
    expect(put.status).toBe(503);
    expect(((await put.json()) as { message: string }).message).toMatch(/Kafka did not store the settings/);
    const running = (await (await fetch(`${adminBase}/api/config`, { headers: auth })).json()) as { delivery: { paused: string[] } };
    expect(running.delivery.paused).toEqual([]);

    // Delivery pauses: the delayed mails fall due while Kafka is down and are not delivered.
    const waitUntil = lastDueAt + 3_000;
    if (Date.now() < waitUntil) await sleep(waitUntil - Date.now());
    expect(rx!.transactions.map((t) => seqOf(t.data)).sort()).toEqual([0, 1, 2]);
    expect(server!.child.exitCode).toBeNull();
    expect(server!.child.signalCode).toBeNull();

    // Back: the same process accepts again (451 while it reconnects), then delivers everything.
    const restartAt = Date.now();
    await broker!.restart();
    const upAt = Date.now();
    console.log(`broker restarted in ${upAt - restartAt} ms`);
    const c4 = await session(port);
    let seq = 200;
    let replies451 = 0;
    for (;;) {
      const tried = Date.now();
      const r = await transaction(c4, seq);
      console.log(`after restart: mail ${seq} answered ${r.code} in ${Date.now() - tried} ms`);
      if (r.code === 250) {
        accepted.add(seq);
        break;
      }
      expect(r.code, r.raw).toBe(451);
      refused.push({ seq, reply: r });
      replies451++;
      expect(Date.now() - upAt, 'no 250 within 60 s of the broker restart').toBeLessThan(60_000);
      seq++;
      await sleep(500);
    }
    console.log(`broker back: first 250 ${Date.now() - upAt} ms after the restart, after ${replies451} more 451 replies`);
    for (const s of [300, 301, 302]) {
      const r = await transaction(c4, s);
      expect(r.code, r.raw).toBe(250);
      accepted.add(s);
    }
    await c4.quit();
    // And a run-time change is stored and applied again (a pause of a domain no mail here goes to).
    const again = await fetch(`${adminBase}/api/config`, {
      method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ delivery: { paused: ['elsewhere.test'] } }),
    });
    expect(again.status).toBe(200);
    expect(((await again.json()) as { delivery: { paused: string[] } }).delivery.paused).toEqual(['elsewhere.test']);

    const delivered = () => rx!.completed().map((t) => seqOf(t.data));
    await until('every accepted mail delivered', async () => [...accepted].every((s) => delivered().includes(s)), 45_000, 200);
    // Give a late copy of a refused mail time to show up, if there were one.
    await sleep(1_500);
    const got = delivered();
    expect([...got].sort((a, b) => a - b)).toEqual([...accepted].sort((a, b) => a - b)); // each exactly once, none refused
    for (const { seq: s } of refused) expect(got).not.toContain(s);
    expect(server!.child.exitCode).toBeNull();
    console.log(`broker down for ${upAt - downAt} ms: ${accepted.size} mails got 250 and were delivered once each; ${refused.length} got 451 and none was delivered`);
  }, 180_000);
});
