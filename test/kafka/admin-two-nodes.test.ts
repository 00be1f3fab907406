/**
 * Issue 5's cross-node operator proof on the real broker: two Spoolhouse server processes
 * (dist/src/main.js; build first with `npx tsc -p .`) on one Kafka topic prefix. Mail is sent over
 * SMTP to node A only; everything an operator does goes through node B's admin REST API:
 * - B lists it (GET /api/messages with filters), shows it (GET /api/messages/:id, parsed subject),
 *   downloads it (GET …/raw: what A received plus A's trace headers, byte for byte);
 * - B holds a delayed mail: it stays undelivered past its due time, and A's API sees it held;
 *   B releases it and a rule-held mail: both are then delivered to the receiving SMTP server;
 * - B removes a mail (DELETE): it is never delivered;
 * - a 40 MB mail sent to A is delivered end to end byte for byte (identical to the stored
 *   message B serves, which ends with the bytes A was sent).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { startServer, type ServerProcess } from '../helpers/server-process.js';
import { SmtpClient } from '../helpers/smtp-client.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { until } from './helpers.js';

const TOKEN = 'admin-two-nodes-operator-token-0123456789';
/** Mails tagged "X-Later: yes" wait this long (a rule): long enough for B to act on them first. */
const DELAY_MS = 6_000;
const BIG = 40 * 1024 * 1024;

function overlay(dir: string, rx: Receiver, node: string, topicPrefix: string): Record<string, unknown> {
  return {
    smtp: { listen: ['127.0.0.1:0'], hostname: `${node}.spoolhouse.test`, earlyTalkerDelay: '0ms', maxMessageSize: '60MB' },
    queue: { backend: 'kafka' },
    kafka: { brokers: kafkaBrokers(), topicPrefix, partitions: 3, replicationFactor: 1, nodeId: node, clientId: node },
    spool: { dir: join(dir, node) },
    admin: { listen: '127.0.0.1:0', tokens: [{ name: 'ops', token: TOKEN, role: 'operator' }] },
    log: { level: 'info', pretty: false },
    rules: [
      { name: 'hold-tagged', match: { header: { name: 'X-Hold', value: 'yes' } }, hold: true },
      { name: 'later', match: { header: { name: 'X-Later', value: 'yes' } }, delay: `${DELAY_MS}ms` },
    ],
    delivery: {
      routes: { 'dest.test': rx.address },
      tls: { opportunistic: false, verify: false },
      retry: { min: '500ms', max: '2s', lifetime: '1h' },
      leaseTime: '30s',
    },
  };
}

/** A small message; `tag` makes its subject unique to this run (the browse filter `q` finds it). */
function message(seq: number, tag: string, extra = ''): Buffer {
  return Buffer.from(
    `From: Sender <sender@origin.test>\r\nTo: user@dest.test\r\nSubject: two nodes ${tag} ${seq}\r\n`
    + `Message-ID: <two-nodes-${seq}-${tag}@origin.test>\r\nX-Seq: ${seq}\r\n${extra}\r\nHello number ${seq}.\r\n`,
  );
}

/** ~40 MB: base64 lines (never starting with ".", so no dot-stuffing is needed on the wire). */
function bigMessage(tag: string): Buffer {
  const head = Buffer.from(`From: Sender <sender@origin.test>\r\nTo: user@dest.test\r\nSubject: two nodes ${tag} big\r\n`
    + `Message-ID: <two-nodes-big-${tag}@origin.test>\r\nX-Seq: 999\r\nX-Hold: yes\r\nMIME-Version: 1.0\r\n`
    + 'Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n');
  const b64 = randomBytes(Math.ceil(((BIG - head.length) / 78) * 57)).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 76) lines.push(b64.slice(i, i + 76));
  return Buffer.concat([head, Buffer.from(lines.join('\r\n') + '\r\n')]);
}

const seqOf = (data: Buffer) => Number(/\r\nX-Seq: (\d+)\r\n/.exec(data.subarray(0, 64 * 1024).toString('latin1'))?.[1]);

/** Sends one mail over a raw session to `port`; resolves with the queue id from "250 2.0.0 Ok: queued as ID". */
async function send(port: number, data: Buffer): Promise<string> {
  const c = await SmtpClient.connect({ port });
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.ehlo('client.origin.test')).code).toBe(250);
    for (const line of ['MAIL FROM:<sender@origin.test>', 'RCPT TO:<user@dest.test>']) expect((await c.command(line)).code).toBe(250);
    expect((await c.command('DATA')).code).toBe(354);
    c.write(data);
    c.write('.\r\n');
    const r = await c.read(60_000);
    expect(r.code, r.raw).toBe(250);
    const id = /queued as (\S+)/.exec(r.text)?.[1];
    expect(id, r.raw).toBeTruthy();
    return id!;
  } finally {
    await c.quit();
  }
}

interface Api {
  json<T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
  raw(path: string): Promise<{ status: number; type: string | null; bytes: Buffer }>;
}

function api(base: string): Api {
  const headers = { authorization: `Bearer ${TOKEN}` };
  return {
    async json(method, path, body) {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return { status: res.status, body: (await res.json()) as never };
    },
    async raw(path) {
      const res = await fetch(`${base}${path}`, { headers });
      return { status: res.status, type: res.headers.get('content-type'), bytes: Buffer.from(await res.arrayBuffer()) };
    },
  };
}

/** The stored message is the received one with trace headers (Received:, …) added in front. */
function expectStoredFrom(stored: Buffer, sent: Buffer): void {
  expect(stored.length).toBeGreaterThan(sent.length);
  expect(stored.subarray(stored.length - sent.length).equals(sent)).toBe(true);
  const added = stored.subarray(0, stored.length - sent.length).toString('latin1');
  expect(added).toMatch(/^Received: /);
  expect(added).toMatch(/\r\n$/);
  for (const line of added.split('\r\n').slice(0, -1)) expect(line).toMatch(/^([A-Za-z0-9-]+: |[ \t])/);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('two Spoolhouse processes on one Kafka: operating node B on mail accepted by node A', () => {
  let dir: string;
  let rx: Receiver;
  let a: ServerProcess | undefined;
  let b: ServerProcess | undefined;
  let apiA: Api;
  let apiB: Api;
  const tag = randomBytes(4).toString('hex');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-kafka-admin-'));
    rx = await startReceiver();
    const prefix = uniquePrefix('admin2');
    const start = async (node: string): Promise<ServerProcess> => {
      mkdirSync(join(dir, `cfg-${node}`), { recursive: true });
      return startServer({ config: { dir: join(dir, `cfg-${node}`), overlay: overlay(dir, rx, node, prefix) }, timeoutMs: 60_000 });
    };
    a = await start('node-a');
    b = await start('node-b');
    expect(a.adminUrl).toBeTruthy();
    expect(b.adminUrl).toBeTruthy();
    apiA = api(a.adminUrl!.replace(/\/$/, ''));
    apiB = api(b.adminUrl!.replace(/\/$/, ''));
  }, 120_000);

  afterAll(async () => {
    await a?.kill9();
    await b?.kill9();
    await rx?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const delivered = () => rx.completed().map((t) => seqOf(t.data));

  it('takes a run-time change made through B on A too: A refuses the sender B blocked, and keeps it in its file', async () => {
    const blocked = `blocked-${tag}@origin.test`;
    const mailFromA = async () => {
      const c = await SmtpClient.connect({ port: a!.smtp[0]!.port });
      try {
        await c.read();
        await c.ehlo('client.origin.test');
        return await c.command(`MAIL FROM:<${blocked}>`);
      } finally {
        await c.quit();
      }
    };
    expect((await mailFromA()).code).toBe(250);
    const put = await apiB.json('PUT', '/api/config', { smtp: { helo: { rejectInvalid: true } }, relay: { reject: [{ sender: blocked }] }, delivery: { paused: ['paused.test'], routes: { 'dest.test': rx.address, 'routed.test': '192.0.2.25:2525' } } });
    expect(put.status, JSON.stringify(put.body)).toBe(200);

    type View = { relay: { reject: { sender?: string }[] }; delivery: { paused: string[]; routes: Record<string, string> }; smtp: { helo: { rejectInvalid: boolean } } };
    // The sections of one PUT reach A as one change.
    const seen = await until('node A has the change made on B', async () => {
      const v = (await apiA.json<View>('GET', '/api/config')).body;
      return v.relay.reject.some((e) => e.sender === blocked) && v.smtp.helo.rejectInvalid && v;
    }, 15_000);
    expect(seen.delivery.paused).toEqual(['paused.test']);
    expect(seen.smtp.helo.rejectInvalid).toBe(true);
    expect(seen.delivery.routes).toEqual({ 'dest.test': rx.address, 'routed.test': '192.0.2.25:2525' });
    const refused = await mailFromA();
    expect([refused.code, refused.enhanced]).toEqual([554, '5.7.1']);
    const saved = JSON.parse(readFileSync(join(dir, 'cfg-node-a', 'config.json'), 'utf8')) as View;
    expect(saved.relay.reject).toEqual([{ sender: blocked }]);

    // Undone through A: B follows, and A takes the sender again.
    expect((await apiA.json('PUT', '/api/config', { smtp: { helo: { rejectInvalid: false } }, relay: { reject: [] }, delivery: { paused: [], routes: { 'dest.test': rx.address } } })).status).toBe(200);
    await until('node B has the change made on A', async () => {
      const v = (await apiB.json<View>('GET', '/api/config')).body;
      return v.relay.reject.length === 0 && !v.smtp.helo.rejectInvalid;
    }, 15_000);
    expect((await mailFromA()).code).toBe(250);
  });

  it('applies the sections of one change together on the other node: a new class and the rules that name it, then both taken away', async () => {
    type View = { priorities: { classes: Record<string, number> }; rules: { name: string; priority?: string }[] };
    const { classes } = (await apiB.json<View>('GET', '/api/config')).body.priorities;
    const { rules } = (await apiB.json<View>('GET', '/api/config')).body;
    const vip = (v: View) => v.rules.some((r) => r.name === 'vip');
    // Every view of A while it takes the change: the old one or the new one, never half of each.
    const views: View[] = [];
    const whole = () => {
      for (const v of views) expect([vip(v), v.priorities.classes.vip]).toEqual(vip(v) ? [true, 40] : [false, undefined]);
    };
    const watch = async (what: string, done: (v: View) => boolean) => until(what, async () => {
      const v = (await apiA.json<View>('GET', '/api/config')).body;
      views.push(v);
      return done(v);
    }, 15_000, 5);

    const vipRule = { name: 'vip', match: { senderDomain: 'vip.test' }, priority: 'vip' };
    expect((await apiB.json('PUT', '/api/config', { priorities: { classes: { ...classes, vip: 40 } }, rules: [vipRule, ...rules] })).status).toBe(200);
    await watch('node A has the class and the rule', vip);
    expect(views.at(-1)!.priorities.classes.vip).toBe(40);
    whole();

    // Both taken away in one change. Applied a section at a time, A would refuse the classes
    // (its rule still names vip) and keep vip for good.
    views.length = 0;
    expect((await apiB.json('PUT', '/api/config', { priorities: { classes }, rules })).status).toBe(200);
    await watch('node A has neither the class nor the rule', (v) => !vip(v) && v.priorities.classes.vip === undefined);
    whole();
    expect(views.at(-1)!.rules).toEqual(rules);
  });

  it('lists, shows, downloads, holds, releases and removes on B what A accepted', async () => {
    const port = a!.smtp[0]!.port;
    const sent = new Map<number, Buffer>([
      [0, message(0, tag)],
      [1, message(1, tag, 'X-Hold: yes\r\n')],
      [2, message(2, tag, 'X-Later: yes\r\n')],
      [3, message(3, tag, 'X-Later: yes\r\n')],
    ]);
    const ids = new Map<number, string>();
    let lastAcceptedAt = 0;
    for (const [seq, data] of sent) {
      ids.set(seq, await send(port, data));
      lastAcceptedAt = Date.now();
    }
    const [plain, ruleHeld, toHold, toRemove] = [0, 1, 2, 3].map((s) => ids.get(s)!);

    // First (before the delayed mails are due): hold one and remove another on B; A sees both at once.
    const h = await apiB.json<{ id: string; state: string }>('POST', `/api/messages/${toHold}/hold`, { reason: 'checked by ops' });
    expect(h.status, JSON.stringify(h.body)).toBe(200);
    expect(h.body.state).toBe('held');
    const del = await apiB.json<{ id: string; state: string }>('DELETE', `/api/messages/${toRemove}`);
    expect(del.status, JSON.stringify(del.body)).toBe(200);
    expect(del.body.state).toBe('removed');
    expect(Date.now(), 'hold/remove came after the delayed mail was due: inconclusive').toBeLessThan(lastAcceptedAt + DELAY_MS - 1_000);
    expect((await apiA.json<{ state: string }>('GET', `/api/messages/${toHold}`)).body.state).toBe('held');
    expect((await apiA.json<{ state: string }>('GET', `/api/messages/${toRemove}`)).body.state).toBe('removed');

    // B lists A's mail: every one of this run by subject, and the held ones (rule and operator) by state.
    const all = await apiB.json<{ items: { id: string; state: string; subject?: string }[] }>('GET', `/api/messages?q=${tag}&limit=100`);
    expect(all.status).toBe(200);
    for (const id of [ruleHeld, toHold, toRemove]) expect(all.body.items.map((m) => m.id)).toContain(id);
    const held = await apiB.json<{ items: { id: string; state: string; subject?: string; sender: string; holdReason?: string }[] }>(
      'GET', `/api/messages?q=${tag}&state=held&sender=sender@origin.test`);
    expect(held.status).toBe(200);
    expect(held.body.items.map((m) => m.id).sort()).toEqual([ruleHeld, toHold].sort());
    const byId = new Map(held.body.items.map((m) => [m.id, m]));
    expect(byId.get(ruleHeld)!.subject).toBe(`two nodes ${tag} 1`);
    expect(byId.get(toHold)!.holdReason).toBe('checked by ops');

    // Detail with the parsed message.
    const detail = await apiB.json<{ id: string; state: string; sender: string; recipients: { address: string }[]; parsed: { subject?: string; from?: string; text?: string } }>(
      'GET', `/api/messages/${ruleHeld}`);
    expect(detail.status).toBe(200);
    expect(detail.body.id).toBe(ruleHeld);
    expect(detail.body.state).toBe('held');
    expect(detail.body.sender).toBe('sender@origin.test');
    expect(detail.body.recipients.map((r) => r.address)).toEqual(['user@dest.test']);
    expect(detail.body.parsed.subject).toBe(`two nodes ${tag} 1`);
    expect(detail.body.parsed.from).toContain('sender@origin.test');
    expect(detail.body.parsed.text).toContain('Hello number 1.');

    // Raw download: what A got, plus A's trace headers.
    const raw = await apiB.raw(`/api/messages/${ruleHeld}/raw`);
    expect(raw.status).toBe(200);
    expect(raw.type).toMatch(/^message\/rfc822/);
    expectStoredFrom(raw.bytes, sent.get(1)!);
    expect(raw.bytes.toString('latin1')).toContain('node-a.spoolhouse.test');

    // Past the delayed mails' due time: only the plain mail was delivered.
    await rx.waitForCompleted(1, 30_000);
    await sleep(Math.max(0, lastAcceptedAt + DELAY_MS + 2_500 - Date.now()));
    expect(rx.transactions.map((t) => seqOf(t.data))).toEqual([0]);
    expectStoredFrom(rx.completed()[0]!.data, sent.get(0)!);
    await until('plain mail recorded as delivered', async () => (await apiB.json<{ state: string }>('GET', `/api/messages/${plain}`)).body.state === 'delivered', 10_000);

    // Release both held mails on B: both are delivered, with their stored bytes.
    for (const id of [ruleHeld, toHold]) {
      const r = await apiB.json<{ state: string }>('POST', `/api/messages/${id}/release`);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body.state).toBe('queued');
    }
    await until('released mails delivered', async () => delivered().includes(1) && delivered().includes(2), 30_000, 100);
    const byseq = new Map(rx.completed().map((t) => [seqOf(t.data), t.data]));
    expect(byseq.get(1)!.equals(raw.bytes)).toBe(true);
    expectStoredFrom(byseq.get(2)!, sent.get(2)!);
    // The removed one never goes out, and nothing went out twice.
    await sleep(1_000);
    expect(delivered().sort()).toEqual([0, 1, 2]);
    const removedDetail = await apiA.json<{ state: string; holdReason?: string }>('GET', `/api/messages/${toRemove}`);
    expect(removedDetail.body.state).toBe('removed');
    await until('released mails recorded as delivered on A', async () => {
      const states = await Promise.all([ruleHeld, toHold].map(async (id) => (await apiA.json<{ state: string }>('GET', `/api/messages/${id}`)).body.state));
      return states.every((s) => s === 'delivered');
    }, 10_000);
  }, 90_000);

  it('delivers a 40 MB mail sent to A end to end, byte for byte', async () => {
    const big = bigMessage(tag);
    const before = rx.completed().length;
    const t0 = Date.now();
    // Held by rule at A, so B's copy can be downloaded and compared before it goes out.
    const id = await send(a!.smtp[0]!.port, big);
    const acceptMs = Date.now() - t0;
    const raw = await apiB.raw(`/api/messages/${id}/raw`);
    expect(raw.status).toBe(200);
    expectStoredFrom(raw.bytes, big);
    const released = await apiB.json<{ state: string }>('POST', `/api/messages/${id}/release`);
    expect(released.body.state).toBe('queued');
    const t1 = Date.now();
    await rx.waitForCompleted(before + 1, 60_000);
    const got = rx.completed()[before]!;
    console.log(`40 MB mail: ${big.length} bytes sent, 250 after ${acceptMs} ms; delivered ${Date.now() - t1} ms after release; stored ${raw.bytes.length} bytes`);
    expect(seqOf(got.data)).toBe(999);
    expect(got.data.length).toBe(raw.bytes.length);
    expect(got.data.equals(raw.bytes)).toBe(true);
    expect(got.reply).toMatch(/^250/);
    await until('40 MB mail recorded as delivered', async () => (await apiA.json<{ state: string }>('GET', `/api/messages/${id}`)).body.state === 'delivered', 15_000);
  }, 90_000);
});
