/**
 * "Removal is final", end to end with the real pieces: the Scheduler and Deliverer deliver a
 * mail to a real receiving SMTP server; while the delivery is in flight (the connection open,
 * the mail leased), an operator removes it through the API. The worker must not finish the
 * transaction: the receiver never sees a completed DATA and the mail is never tried again.
 *
 * A gate (a TCP relay in front of the receiver) holds the SMTP session until the API has
 * answered, so the removal lands mid-delivery every time, not by luck: once at the start of the
 * session, and once with the client's DATA command held (so the worker has already passed its
 * earlier checks and must stop just before the final ".").
 *
 * And the other side of that point of no return: with the final "." sent and the remote's answer
 * held, a removal or hold cannot keep its promise, so the API refuses it (409) and the mail ends
 * delivered; once that destination is done, the other destinations of the mail can be held again.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Deliverer } from '../../src/delivery/deliverer.js';
import { Scheduler } from '../../src/scheduler/index.js';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { startHarness, type Harness } from './harness.js';

/** A relay that holds the client's bytes from `holdAt` on until `open()`. */
class Gate {
  server!: Server;
  port = 0;
  readonly sessions: Socket[] = [];
  readonly closed: Socket[] = [];
  reached = false;
  #open!: () => void;
  readonly opened = new Promise<void>((resolve) => { this.#open = resolve; });

  constructor(private readonly upstreamPort: number, private readonly holdAt: 'connect' | 'data' | 'reply') {}

  async listen(): Promise<void> {
    this.server = createServer((client) => this.#relay(client));
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
  }

  open(): void { this.#open(); }

  #relay(client: Socket): void {
    this.sessions.push(client);
    client.on('close', () => this.closed.push(client));
    const upstream = connect(this.upstreamPort, '127.0.0.1');
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('close', () => upstream.destroy());
    if (this.holdAt === 'connect') {
      // Nothing flows until open(): both sides' bytes wait in their sockets (pipe() would resume them).
      this.reached = true;
      void this.opened.then(() => { client.pipe(upstream); upstream.pipe(client); });
      return;
    }
    if (this.holdAt === 'reply') {
      // The client's bytes pass; the remote's answer to the final "." is held.
      client.pipe(upstream);
      let sent = '';
      let holding = false;
      client.on('data', (chunk: Buffer) => {
        sent = (sent + chunk.toString('latin1')).slice(-5);
        if (sent === '\r\n.\r\n') holding = true;
      });
      const held: Buffer[] = [];
      upstream.on('data', (chunk: Buffer) => {
        if (!holding) { client.write(chunk); return; }
        held.push(chunk);
        this.reached = true;
        void this.opened.then(() => { for (const b of held.splice(0)) client.write(b); holding = false; });
      });
      return;
    }
    upstream.pipe(client);
    let seen = '';
    let holding = false;
    const held: Buffer[] = [];
    client.on('data', (chunk: Buffer) => {
      if (holding) { held.push(chunk); return; }
      seen += chunk.toString('latin1');
      const at = seen.search(/(^|\r\n)DATA\r\n/i);
      if (at < 0) { upstream.write(chunk); return; }
      // Forward what came before DATA; hold DATA and everything after it.
      const dataStart = at === 0 && /^DATA/i.test(seen) ? 0 : at + 2;
      const offset = dataStart - (seen.length - chunk.length);
      if (offset > 0) upstream.write(chunk.subarray(0, offset));
      held.push(chunk.subarray(Math.max(0, offset)));
      holding = true;
      this.reached = true;
      void this.opened.then(() => { for (const b of held) upstream.write(b); holding = false; held.length = 0; });
    });
  }

  close(): void {
    this.open();
    this.server.close();
    for (const s of this.sessions) s.destroy();
  }
}

let h: Harness;
let rx: Receiver;
let atConnect: Gate;
let atData: Gate;
let atReply: Gate;
let slow: Gate;
let scheduler: Scheduler;
let delivery: Deliverer;

beforeAll(async () => {
  rx = await startReceiver();
  atConnect = new Gate(rx.port, 'connect');
  atData = new Gate(rx.port, 'data');
  atReply = new Gate(rx.port, 'reply');
  slow = new Gate(rx.port, 'connect');
  await atConnect.listen();
  await atData.listen();
  await atReply.listen();
  await slow.listen();
  h = await startHarness({
    overlay: {
      delivery: {
        heloName: 'mx.spoolhouse.test',
        routes: {
          'race.example': `127.0.0.1:${atConnect.port}`, 'late.example': `127.0.0.1:${atData.port}`,
          'sent.example': `127.0.0.1:${atReply.port}`, 'slow.example': `127.0.0.1:${slow.port}`, 'quick.example': `127.0.0.1:${rx.port}`,
        },
        tls: { opportunistic: false, verify: false },
        timeouts: { connect: '2s', greeting: '10s', command: '10s', data: '10s' },
        retry: { min: '200ms', max: '400ms', lifetime: '1h' },
        leaseTime: '30s',
      },
    },
  });
  const logger = h.admin.app.log as never;
  delivery = new Deliverer({ config: () => h.config.current, logger });
  scheduler = new Scheduler({ config: h.config, queue: h.queue, delivery, logger, metrics: h.metrics, nodeName: 'e2e-node' });
  scheduler.start();
});

afterAll(async () => {
  for (const g of [atConnect, atData, atReply, slow]) g?.open();
  await scheduler?.stop(2_000);
  await delivery?.close();
  await h?.close();
  for (const g of [atConnect, atData, atReply, slow]) g?.close();
  await rx?.close();
});

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function removeMidFlight(gate: Gate, to: string) {
  const mail = await h.enqueue({ subject: `remove me (${to})`, to: [to], dueInMs: -1000 });
  await waitFor('the delivery to reach the gate', () => gate.reached);
  expect((await h.queue.get(mail.id))!.state).toBe('active');
  const r = await h.json('DELETE', `/api/messages/${mail.id}`);
  expect(r.status).toBe(200);
  expect(r.body.state).toBe('removed');
  gate.open();
  await waitFor('the worker to give the mail up and close the connection', () => gate.sessions.length > 0 && gate.closed.length === gate.sessions.length);
  await new Promise((res) => setTimeout(res, 800)); // a retry would have come by now (retry.min is 200 ms)
  expect((await h.queue.get(mail.id))!.state).toBe('removed');
  expect(gate.sessions).toHaveLength(1);
  expect(await h.queue.reserveDue({ owner: 'other', limit: 10, leaseMs: 1000 })).toEqual([]);
  return mail;
}

it('removed at the start of the session: never delivered', async () => {
  await removeMidFlight(atConnect, 'victim@race.example');
  expect(rx.completed()).toEqual([]);
});

it('removed with DATA in flight: the worker stops before the final "."', async () => {
  await removeMidFlight(atData, 'victim@late.example');
  // The session got as far as DATA at the receiver, and no transaction completed.
  expect(rx.transactions.some((t) => t.rcptTo.some((r) => r.address === 'victim@late.example'))).toBe(true);
  expect(rx.completed()).toEqual([]);
});

it('a mail not removed goes the same way to the receiver (so the tests above can fail)', async () => {
  const mail = await h.enqueue({ subject: 'deliver me', to: ['fine@late.example'], dueInMs: -1000 });
  await waitFor('delivery', async () => (await h.queue.get(mail.id))!.state === 'delivered');
  expect(rx.completed().map((t) => t.data.toString())).toEqual([expect.stringContaining('Subject: deliver me')]);
});

it('the final "." sent, its answer not in yet: removal and hold are refused (409), and the mail ends delivered', async () => {
  const mail = await h.enqueue({ subject: 'already on its way', to: ['one@sent.example'], dueInMs: -1000 });
  await waitFor('the final "." to reach the receiver, its answer held', () => atReply.reached);
  for (const [method, path] of [['DELETE', `/api/messages/${mail.id}`], ['POST', `/api/messages/${mail.id}/hold`]] as const) {
    const r = await h.json(method, path, method === 'POST' ? { body: {} } : {});
    expect(r.status).toBe(409);
    expect(r.body.message).toMatch(/being handed to the remote server right now/);
  }
  const bulk = await h.json('POST', '/api/messages/actions', { body: { filter: { state: 'active' }, action: 'hold' } });
  expect(bulk.status).toBe(200);
  expect(bulk.body).toMatchObject({ changed: 0, failed: 1, errors: [{ id: mail.id }] });
  expect((await h.queue.get(mail.id))!.state).toBe('active');
  atReply.open();
  await waitFor('delivery', async () => (await h.queue.get(mail.id))!.state === 'delivered');
  expect(rx.completed().some((t) => t.data.toString().includes('Subject: already on its way'))).toBe(true);
  expect((await h.json('POST', `/api/messages/${mail.id}/hold`, { body: {} })).status).toBe(409);
});

it('one destination done, another still connecting: the mail can be held again, and the rest is not sent', async () => {
  const mail = await h.enqueue({ subject: 'two destinations', to: ['a@quick.example', 'b@slow.example'], dueInMs: -1000 });
  await waitFor('the quick destination to be done and the slow one held at connect', async () =>
    slow.reached && rx.completed().some((t) => t.data.toString().includes('Subject: two destinations')));
  // The quick destination's "." was settled when its job ended: the hold is taken.
  await waitFor('the hold to be taken', async () => (await h.json('POST', `/api/messages/${mail.id}/hold`, { body: { reason: 'stop the rest' } })).status === 200, 3_000);
  slow.open();
  await waitFor('the attempt to be recorded', async () => {
    const m = (await h.queue.get(mail.id))!;
    return m.state === 'held' && m.recipients.some((r) => r.status === 'delivered');
  });
  const m = (await h.queue.get(mail.id))!;
  expect(m.recipients.map((r) => [r.address, r.status])).toEqual([['a@quick.example', 'delivered'], ['b@slow.example', 'pending']]);
  expect(rx.completed().filter((t) => t.rcptTo.some((r) => r.address === 'b@slow.example'))).toEqual([]);
});
