/**
 * The scheduler with real parts over loopback: the real SpoolQueue on a temp dir, the real
 * Deliverer, scripted receiving SMTP servers and a real DNS server. Retry timings are compressed
 * through config (retry.min "200ms", lifetime "2s"), never by mocking time.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startDnsServer, NULL_MX, type DnsServer } from '../helpers/dns-server.js';
import type { Deliverer } from '../../src/delivery/deliverer.js';
import { WHOLE_BODY_BYTES } from '../../src/delivery/session.js';
import type { DeliveryAgent, OutboundMessage } from '../../src/delivery/types.js';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { parseDsn } from '../bounce/parse-dsn.js';
import { makeMessage, startScheduler, waitFor, type SchedulerHarness, type SchedulerHarnessOptions } from './harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function receiver(...args: Parameters<typeof startReceiver>): Promise<Receiver> {
  const rx = await startReceiver(...args);
  cleanups.push(() => rx.close());
  return rx;
}

async function scheduler(overlay: Record<string, unknown>, o: SchedulerHarnessOptions = {}): Promise<SchedulerHarness> {
  const h = await startScheduler(overlay, o);
  cleanups.push(() => h.close());
  return h;
}

async function dnsServer(zone: Parameters<typeof startDnsServer>[0]): Promise<DnsServer> {
  const dns = await startDnsServer(zone);
  cleanups.push(() => dns.close());
  return dns;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The scheduler's delivery stage: the real Deliverer, with `each` applied to every message when
 * the scheduler hands it over (in deliver(), or later on the same connection through `more`).
 */
function deliveryWith(each: (m: OutboundMessage) => OutboundMessage): (real: Deliverer) => DeliveryAgent {
  return (real) => ({
    resolve: (domain) => real.resolve(domain),
    deliver: (destination, messages, options) => real.deliver(destination, messages.map(each), options && {
      ...options,
      ...(options.more ? { more: async () => (await options.more!()).map(each) } : {}),
    }),
    close: () => real.close(),
  });
}

/**
 * Which message the scheduler handed to the delivery stage when, in order. With concurrency 1
 * this is the scheduler's own order, whatever then happens on the network; the hand-over is in
 * the same tick as the rate token it took, so its time is the token's time.
 */
function recordHandovers() {
  const handed: { address: string; at: number }[] = [];
  const each = (m: OutboundMessage): OutboundMessage => {
    handed.push({ address: m.recipients[0]!.address, at: Date.now() });
    return m;
  };
  /** Each address once, in the order of its first hand-over. */
  const firsts = () => [...new Set(handed.map((x) => x.address))];
  return { each, wrap: deliveryWith(each), handed, firsts };
}

/**
 * The real Deliverer, except that each message's stillWanted() — which the SMTP session asks just
 * before it writes the final "." (for a body over WHOLE_BODY_BYTES, once the whole body is out) —
 * first waits until the test opens the gate. Then the real check runs (the scheduler asks the
 * queue whether the lease holds).
 */
function pauseBeforeTheDot() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => { open = resolve; });
  const asked: string[] = [];
  const each = (m: OutboundMessage): OutboundMessage => ({
    ...m,
    stillWanted: async () => {
      asked.push(m.id);
      await opened;
      return m.stillWanted();
    },
  });
  return { each, wrap: deliveryWith(each), asked, open };
}

/**
 * About 300 KB: over WHOLE_BODY_BYTES, so the session streams it out before asking stillWanted(),
 * and it reaches the receiver in many chunks; with dot-stuffed lines. (A smaller body is asked
 * about before any of it is written: test/delivery/transaction.test.ts.)
 */
function bigMessage(): Buffer {
  const lines = Array.from({ length: 3_000 }, (_, i) => `${i % 50 === 0 ? '.' : ''}line ${i} ${'x'.repeat(90)}`);
  return Buffer.from(makeMessage({ body: `${lines.join('\r\n')}\r\nthe last line\r\n` }));
}

/**
 * A scheduler delivering one ~300 KB mail to a receiver, stopped where the SMTP session asks
 * stillWanted() before the final ".". Resolves once the receiver has the whole body but for the
 * last bytes smtp-server holds back until it sees what follows them (at most 4: they could be
 * the start of "\r\n.\r\n"). A transaction that completes instead (a "." sent without asking)
 * ends the wait too, so a missing check fails these assertions rather than timing out.
 */
async function deliveryAtTheDot() {
  const rx = await receiver();
  const gate = pauseBeforeTheDot();
  const h = await scheduler({ delivery: { routes: { 'dest.test': rx.address } } }, { wrapDelivery: gate.wrap });
  const body = bigMessage();
  expect(body.length).toBeGreaterThan(WHOLE_BODY_BYTES);
  const mail = await h.enqueue({ to: ['user@dest.test'], body });
  const tx = await rx.until(() => rx.transactions.find((t) => t.complete || (gate.asked.length > 0 && t.bytes >= body.length - 4)), 15_000);
  expect(tx.complete, 'the final "." was sent before stillWanted() was asked').toBe(false);
  expect(gate.asked).toEqual([mail.id]);
  expect(tx.bytes).toBeLessThan(body.length);
  expect(tx.data.equals(body.subarray(0, tx.bytes))).toBe(true);
  expect(rx.openConnections).toBe(1);
  return { rx, gate, h, mail, body, tx };
}

async function stateOf(h: SchedulerHarness, id: string): Promise<string | undefined> {
  return (await h.queue.get(id))?.state;
}

describe('scheduler: delivery through MX from a real DNS server', () => {
  it('delivers byte for byte, and a null MX gives a 5.1.10 DSN to the sender with a null reverse path', async () => {
    const mx = await receiver();
    const senderMx = await receiver({ dsn: true });
    const dns = await dnsServer({
      'dest.test': { mx: [{ preference: 10, exchange: 'mx.dest.test' }] },
      'mx.dest.test': { a: ['127.0.0.1'] },
      'null.test': { mx: NULL_MX },
    });
    const h = await scheduler({
      delivery: { port: mx.port, dns: { servers: [dns.address], timeout: '2s' }, routes: { 'origin.test': senderMx.address } },
    });
    const body = Buffer.from(makeMessage({ body: 'Line one.\r\n.A line that starts with a dot\r\n..two dots\r\n\r\nend\r\n' }));
    const good = await h.enqueue({ to: ['user@dest.test'], body });
    const nullMx = await h.enqueue({ to: ['someone@null.test'], dsn: { envid: 'ENV-7' } });

    const [tx] = await mx.waitForCompleted(1);
    expect(tx!.data.equals(body)).toBe(true);
    expect(tx!.mailFrom.address).toBe('sender@origin.test');
    expect(tx!.rcptTo.map((r) => r.address)).toEqual(['user@dest.test']);
    await waitFor('delivered state', async () => (await stateOf(h, good.id)) === 'delivered');
    const delivered = (await h.queue.get(good.id))!;
    expect(delivered.history.at(-1)).toMatchObject({ outcome: 'delivered', recipients: ['user@dest.test'] });
    expect(delivered.history.at(-1)!.host).toBeTruthy();

    const [dsnTx] = await senderMx.waitForCompleted(1);
    expect(dsnTx!.mailFrom.address).toBe('');
    expect(dsnTx!.rcptTo.map((r) => r.address)).toEqual(['sender@origin.test']);
    const dsn = await parseDsn(dsnTx!.data);
    expect(dsn.blocks[0]).toMatchObject({ 'original-envelope-id': 'ENV-7', 'reporting-mta': 'dns; mx.spoolhouse.test' });
    expect(dsn.blocks[1]).toMatchObject({ 'final-recipient': 'rfc822; someone@null.test', action: 'failed', status: '5.1.10' });
    expect(await stateOf(h, nullMx.id)).toBe('bounced');
    const total = async (c: { get(): Promise<{ values: { value: number; labels: Record<string, unknown> }[] }> }) =>
      (await c.get()).values.reduce((n, v) => n + v.value, 0);
    await waitFor('metrics', async () => (await total(h.metrics.deliveredTotal)) >= 2); // the mail and the DSN
    expect(await total(h.metrics.bouncedTotal)).toBe(1);
    expect((await h.metrics.deliveredTotal.get()).values.find((v) => v.labels.via === 'mx')?.value).toBe(1);
    expect((await h.metrics.deliverySeconds.get()).values.find((v) => v.metricName?.endsWith('_count'))?.value).toBeGreaterThanOrEqual(1);
  });
});

describe('scheduler: retries and bounces', () => {
  it('4xx then 2xx: delivered on the retry, with both attempts in the history', async () => {
    let tries = 0;
    const rx = await receiver({ script: { rcpt: () => (++tries === 1 ? '451 4.3.0 Try again later' : undefined) } });
    const lines: string[] = [];
    const h = await scheduler({ delivery: { routes: { 'dest.test': rx.address } } }, { logLines: lines });
    const body = Buffer.from(makeMessage());
    const mail = await h.enqueue({ to: ['user@dest.test'], body });
    const [tx] = await rx.waitForCompleted(1);
    expect(tx!.data.equals(body)).toBe(true);
    const done = await waitFor('delivered', async () => {
      const m = await h.queue.get(mail.id);
      return m?.state === 'delivered' ? m : undefined;
    });
    expect(tries).toBe(2);
    expect(done.attempts).toBe(2);
    expect(done.history.map((a) => a.outcome)).toEqual(['deferred', 'delivered']);
    expect(done.history[0]!.reply).toMatchObject({ code: 451 });
    const gap = done.history[1]!.at - done.history[0]!.at;
    expect(gap).toBeGreaterThanOrEqual(150); // retry.min 200ms less jitter margin: it did wait
    // One info line per attempt, naming each recipient's outcome, the host and its reply.
    const logged = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.mailId === mail.id);
    const attempts = logged.filter((l) => l.msg === 'delivery attempt recorded');
    expect(attempts.map((l) => l.state)).toEqual(['queued', 'delivered']);
    expect(attempts[0]!.recipients).toEqual([{ to: 'user@dest.test', outcome: 'deferred', relay: expect.stringContaining(String(rx.port)), reply: '451 4.3.0 Try again later' }]);
    expect(attempts[1]!.recipients).toEqual([{ to: 'user@dest.test', outcome: 'delivered', relay: expect.stringContaining(String(rx.port)), reply: expect.stringMatching(/^250 /) }]);
    expect(logged.filter((l) => l.msg === 'delivery transaction done')).toEqual([]);
  });

  it('5xx: one DSN for every failed recipient, parsed by mailparser, sent with a null reverse path', async () => {
    const rx = await receiver({ script: { rcpt: { 'bad@dest.test': '550 5.1.1 No such user here', 'worse@dest.test': '553 5.1.3 Bad address' } } });
    const senderMx = await receiver();
    const h = await scheduler({ delivery: { routes: { 'dest.test': rx.address, 'origin.test': senderMx.address } } });
    const mail = await h.enqueue({
      to: [],
      recipients: [{ address: 'good@dest.test' }, { address: 'bad@dest.test', orcpt: 'rfc822;Bad@Dest.Test' }, { address: 'worse@dest.test' }],
      dsn: { ret: 'FULL' },
    });
    const [dsnTx] = await senderMx.waitForCompleted(1);
    expect(dsnTx!.mailFrom.address).toBe('');
    const dsn = await parseDsn(dsnTx!.data);
    expect(dsn.parsed.subject).toBe('Undelivered Mail Returned to Sender');
    expect(dsn.partTypes).toEqual(['text/plain', 'message/delivery-status', 'message/rfc822']);
    expect(dsn.blocks.slice(1)).toEqual([
      expect.objectContaining({ 'final-recipient': 'rfc822; bad@dest.test', 'original-recipient': 'rfc822; Bad@Dest.Test', action: 'failed', status: '5.1.1', 'diagnostic-code': expect.stringMatching(/^smtp; 550 5\.1\.1 No such user here/) }),
      expect.objectContaining({ 'final-recipient': 'rfc822; worse@dest.test', action: 'failed', status: '5.1.3' }),
    ]);
    expect(dsn.blocks[1]!['remote-mta']).toMatch(/^dns; /);
    expect((await rx.waitForCompleted(1))[0]!.rcptTo.map((r) => r.address)).toEqual(['good@dest.test']);
    await waitFor('bounced', async () => (await stateOf(h, mail.id)) === 'bounced');
    await sleep(300);
    expect(senderMx.completed()).toHaveLength(1); // one DSN, not one per recipient
  });

  it('expiry: still deferred past the lifetime gives a 4.4.7 DSN', async () => {
    const rx = await receiver({ script: { rcpt: () => '451 4.7.1 Greylisted, try later' } });
    const senderMx = await receiver();
    const h = await scheduler({
      delivery: { routes: { 'dest.test': rx.address, 'origin.test': senderMx.address }, retry: { min: '200ms', max: '400ms', lifetime: '2s' } },
    });
    const mail = await h.enqueue({ to: ['user@dest.test'] });
    const [dsnTx] = await senderMx.waitForCompleted(1, 15_000);
    // Not before the lifetime (a lower bound: a loaded machine can only make it later).
    expect(Date.now() - mail.receivedAt).toBeGreaterThanOrEqual(2_000);
    const dsn = await parseDsn(dsnTx!.data);
    expect(dsn.blocks[1]).toMatchObject({ 'final-recipient': 'rfc822; user@dest.test', action: 'failed', status: '4.4.7' });
    expect(dsn.blocks[1]!['diagnostic-code']).toMatch(/451 4\.7\.1 Greylisted/);
    const expired = (await h.queue.get(mail.id))!;
    expect(expired.state).toBe('expired');
    // Retried meanwhile (how often depends on the machine's speed: about 5 times here, at least
    // the first try and the one moved to the expiry moment), every try deferred by the 451.
    expect(expired.attempts).toBeGreaterThanOrEqual(2);
    expect(rx.connections.flatMap((c) => c.refusedRecipients)).toHaveLength(expired.attempts);
    expect(expired.recipients[0]!.status).toBe('expired');
  });

  it('sends one delay warning (Action delayed) after delivery.delayWarning, and records it', async () => {
    const rx = await receiver({ script: { rcpt: () => '450 4.2.0 Mailbox busy' } });
    const senderMx = await receiver();
    const h = await scheduler({
      delivery: { routes: { 'dest.test': rx.address, 'origin.test': senderMx.address }, delayWarning: '300ms', retry: { min: '150ms', max: '200ms', lifetime: '1h' } },
    });
    const mail = await h.enqueue({ to: ['user@dest.test'], dsn: { envid: 'ENV-DELAY' } });
    const [dsnTx] = await senderMx.waitForCompleted(1);
    const dsn = await parseDsn(dsnTx!.data);
    expect(dsn.parsed.subject).toBe('Delayed Mail (still being retried)');
    expect(dsn.blocks[1]).toMatchObject({ 'final-recipient': 'rfc822; user@dest.test', action: 'delayed', status: '4.2.0' });
    expect(dsn.blocks[1]!['will-retry-until']).toBeTruthy();
    await waitFor('more retries', async () => ((await h.queue.get(mail.id))?.attempts ?? 0) >= 5);
    const m = (await h.queue.get(mail.id))!;
    expect(m.delayWarnedAt).toBeGreaterThan(m.receivedAt);
    expect(m.state === 'queued' || m.state === 'active').toBe(true);
    expect(senderMx.completed()).toHaveLength(1); // once per mail
  });

  it('a failed mail with the null sender is not bounced', async () => {
    const rx = await receiver({ script: { rcpt: () => '550 5.1.1 No such user' } });
    const h = await scheduler({ delivery: { routes: { 'dest.test': rx.address } } });
    const bounce = await h.enqueue({ to: ['gone@dest.test'], sender: '' });
    await waitFor('bounced', async () => (await stateOf(h, bounce.id)) === 'bounced');
    await sleep(300);
    const nullSender = (await h.mails()).filter((m) => m.sender === '');
    expect(nullSender.map((m) => m.id)).toEqual([bounce.id]);
  });

  it('a bounce (null sender) expires after delivery.retry.bounceLifetime, other mail after lifetime', async () => {
    const rx = await receiver({ script: { rcpt: () => '451 4.3.0 Try later' } });
    const h = await scheduler({ delivery: { routes: { 'dest.test': rx.address }, retry: { min: '200ms', max: '300ms', lifetime: '1h', bounceLifetime: '1s' } } });
    const bounce = await h.enqueue({ to: ['someone@dest.test'], sender: '' });
    const mail = await h.enqueue({ to: ['other@dest.test'] });
    await waitFor('the bounce expired', async () => (await stateOf(h, bounce.id)) === 'expired', 15_000);
    const expired = (await h.queue.get(bounce.id))!;
    expect(expired.recipients[0]!.status).toBe('expired');
    expect(expired.updatedAt - expired.receivedAt).toBeGreaterThanOrEqual(1_000);
    // The ordinary mail is still being retried; and no DSN was made of the expired bounce.
    expect(['queued', 'active']).toContain(await stateOf(h, mail.id));
    expect((await h.mails()).filter((m) => m.sender === '').map((m) => m.id)).toEqual([bounce.id]);
  });
});

describe('scheduler: traffic shaping and order', () => {
  it('never opens more connections to a destination than its limit, nor more messages per connection', async () => {
    const rx = await receiver();
    const h = await scheduler({
      delivery: { routes: { 'dest.test': rx.address }, limits: { default: { connections: 10 }, domains: { 'dest.test': { connections: 2, messagesPerConnection: 3 } } } },
    }, { start: false });
    const count = 40;
    for (let i = 0; i < count; i++) await h.enqueue({ to: [`u${i}@dest.test`] });
    h.scheduler.start();
    await rx.waitForCompleted(count, 30_000);
    expect(rx.maxConcurrency).toBeLessThanOrEqual(2);
    expect(rx.connections.every((c) => c.transactions.length <= 3)).toBe(true);
    expect(rx.acceptedConnections).toBeGreaterThanOrEqual(Math.ceil(count / 3));
    await waitFor('all delivered', async () => (await h.mails()).every((m) => m.state === 'delivered'));
  });

  it('respects a rate limit (token bucket: burst of one second, then the rate)', async () => {
    const times: number[] = [];
    const rx = await receiver({ script: { dataEnd: () => { times.push(Date.now()); return undefined; } } });
    const handovers = recordHandovers();
    const h = await scheduler({
      delivery: { routes: { 'dest.test': rx.address }, limits: { domains: { 'dest.test': { rate: '5/s' } } } },
    }, { start: false, wrapDelivery: handovers.wrap });
    const count = 15;
    for (let i = 0; i < count; i++) await h.enqueue({ to: [`u${i}@dest.test`] });
    h.scheduler.start();
    await rx.waitForCompleted(count, 30_000);
    // Between the i-th and j-th hand-over to delivery (each takes a token, at that moment) at most
    // burst (5) + rate × elapsed messages may go; +1 for the millisecond clock. Checked on the
    // hand-overs rather than on arrival times, which a loaded machine bunches up at random.
    const at = handovers.handed.map((x) => x.at);
    expect(at).toHaveLength(count);
    for (let i = 0; i < at.length; i++) {
      for (let j = i; j < at.length; j++) {
        expect(j - i + 1).toBeLessThanOrEqual(5 + Math.ceil((5 * (at[j]! - at[i]!)) / 1000) + 1);
      }
    }
    // What the remote sees: 15 at 5/s after a burst of 5 end no sooner than 2 s after the first
    // token was taken (measured from the first hand-over, so a slow first connection cannot eat
    // into it; 100 ms for timer and clock granularity).
    expect(times).toHaveLength(count);
    expect(times.at(-1)! - at[0]!).toBeGreaterThanOrEqual(1900);
  });

  it('applies a hot reload of the limits to mail already waiting', async () => {
    const rx = await receiver();
    const h = await scheduler({
      delivery: { routes: { 'dest.test': rx.address }, limits: { domains: { 'dest.test': { rate: '1/s', connections: 1 } } } },
    }, { start: false });
    for (let i = 0; i < 12; i++) await h.enqueue({ to: [`u${i}@dest.test`] });
    h.scheduler.start();
    await rx.waitForCompleted(1);
    await sleep(500);
    expect(rx.completed().length).toBeLessThan(4); // 1/s: the backlog waits
    h.store.update({ delivery: { limits: { domains: { 'dest.test': { rate: null, connections: 4 } } } } });
    await rx.waitForCompleted(12, 5_000); // at 1/s this would take 11 s more
  });

  it('renews leases of mail waiting longer than the lease time: no mail is taken twice', async () => {
    const rx = await receiver();
    const h = await scheduler({
      // Leases are renewed every quarter lease time once past half of it, so a lease lapses only if
      // the process stalls for more than ~lease/4: 2 s leaves 500 ms of margin on a loaded machine
      // (800 ms left 200 ms), while the last mails still wait two lease times.
      delivery: { leaseTime: '2s', routes: { 'dest.test': rx.address }, limits: { domains: { 'dest.test': { rate: '2/s', connections: 1 } } } },
    }, { start: false });
    const count = 10;
    for (let i = 0; i < count; i++) await h.enqueue({ to: [`u${i}@dest.test`] });
    h.scheduler.start();
    await rx.waitForCompleted(count, 20_000); // a burst of 2, then 8 at 2/s: ≈ 4 s of waiting
    await waitFor('all delivered', async () => (await h.mails()).every((m) => m.state === 'delivered'));
    await sleep(300);
    // Without renewal the leases lapse, the mails are reserved again, and the first attempts are
    // abandoned before their final "." (incomplete transactions at the receiver).
    expect(rx.transactions.filter((tx) => !tx.complete)).toHaveLength(0);
    const rcpts = rx.completed().map((tx) => tx.rcptTo[0]!.address);
    expect(rcpts).toHaveLength(count);
    expect(new Set(rcpts).size).toBe(count);
    expect((await h.mails()).every((m) => m.attempts === 1)).toBe(true);
  });

  it('with a backlog, higher-priority mail is handed to delivery first, and delivered first', async () => {
    const order: string[] = [];
    const rx = await receiver({ script: { dataEnd: (tx) => { order.push(tx.rcptTo[0]!.address); return undefined; } } });
    const handovers = recordHandovers();
    const h = await scheduler({
      delivery: { concurrency: 1, routes: { 'dest.test': rx.address }, limits: { default: { connections: 1, messagesPerConnection: 1 } } },
    }, { start: false, wrapDelivery: handovers.wrap });
    const { bulk, urgent } = h.store.current.priorities.classes;
    const bulkRcpts = Array.from({ length: 15 }, (_, i) => `bulk${i}@dest.test`);
    const urgentRcpts = Array.from({ length: 4 }, (_, i) => `urgent${i}@dest.test`);
    for (const to of bulkRcpts) await h.enqueue({ to: [to], priority: bulk! });
    for (const to of urgentRcpts) await h.enqueue({ to: [to], priority: urgent! });
    h.scheduler.start();
    await rx.waitForCompleted(19, 30_000);
    await waitFor('all delivered', async () => (await h.mails()).every((m) => m.state === 'delivered'));

    // The scheduler's order, whatever the network did: every urgent mail goes to delivery before
    // any bulk mail (enqueued earlier) does.
    const firsts = handovers.firsts();
    expect(firsts.slice(0, 4).sort()).toEqual([...urgentRcpts].sort());
    expect(firsts.slice(4).sort()).toEqual([...bulkRcpts].sort());
    // And so the order of arrival — when each urgent mail got through on its first try. (Under a
    // heavily loaded machine a try can fail, e.g. a connect timeout; the mail is then retried
    // after retry.min and a bulk mail may rightly arrive before it.)
    const urgentTries = (await h.mails()).filter((m) => m.priority === urgent).map((m) => m.attempts);
    if (urgentTries.every((n) => n === 1)) expect(order.slice(0, 4).sort()).toEqual([...urgentRcpts].sort());
    expect(new Set(order)).toEqual(new Set([...bulkRcpts, ...urgentRcpts]));
  });
});

describe('scheduler: priority of mail arriving while a backlog waits', () => {
  it('urgent mail enqueued while bulk mail waits for a connection goes to delivery next', async () => {
    const rx = await receiver();
    const handovers = recordHandovers();
    const gate = pauseBeforeTheDot();
    const h = await scheduler({
      delivery: { concurrency: 1, routes: { 'dest.test': rx.address }, limits: { default: { connections: 1, messagesPerConnection: 1 } } },
    }, { start: false, wrapDelivery: deliveryWith((m) => gate.each(handovers.each(m))) });
    const { bulk, urgent } = h.store.current.priorities.classes;
    for (let i = 0; i < 8; i++) await h.enqueue({ to: [`bulk${i}@dest.test`], priority: bulk! });
    h.scheduler.start();
    // One bulk mail is on the wire, held before its "."; the other seven wait in the scheduler.
    await waitFor('the first bulk mail at its final "."', () => gate.asked.length === 1);
    for (let i = 0; i < 2; i++) await h.enqueue({ to: [`urgent${i}@dest.test`], priority: urgent! });
    await waitFor('the urgent mails reserved too', () => h.scheduler.inFlight === 10);
    gate.open();
    await rx.waitForCompleted(10, 30_000);
    const firsts = handovers.firsts();
    expect(firsts[0]).toMatch(/^bulk/);
    expect(firsts.slice(1, 3).sort()).toEqual(['urgent0@dest.test', 'urgent1@dest.test']);
    expect(firsts.slice(3).every((a) => a.startsWith('bulk'))).toBe(true);
  });
});

describe('scheduler: wake-ups', () => {
  it('mail arriving held does not wake it to reserve; mail arriving queued does, and is delivered', async () => {
    const rx = await receiver();
    const h = await scheduler({ delivery: { routes: { 'dest.test': rx.address } } }, { start: false });
    // The real queue, its reserveDue counted (the scheduler calls it through the same object).
    let reserves = 0;
    const reserveDue = h.queue.reserveDue.bind(h.queue);
    h.queue.reserveDue = (o) => {
      reserves++;
      return reserveDue(o);
    };
    h.scheduler.start();
    // Its first round finds nothing and sleeps until an event (nothing due at all).
    await waitFor('the first round', () => reserves >= 1);
    await sleep(100);
    const idle = reserves;
    for (let i = 0; i < 40; i++) {
      await h.enqueue({ to: ['user@dest.test'], hold: { reason: 'held at the door' } });
      if (i % 10 === 9) await sleep(15); // beyond the scheduler's 10 ms gap between two reserves
    }
    await sleep(100);
    expect(reserves - idle, 'reserveDue calls after held mail arrived').toBe(0);

    const mail = await h.enqueue({ to: ['user@dest.test'] });
    await rx.waitForCompleted(1);
    expect(reserves).toBeGreaterThan(idle);
    await waitFor('delivered', async () => (await h.queue.get(mail.id))?.state === 'delivered');
    expect(rx.completed()).toHaveLength(1);
  });
});

describe('scheduler: in-flow control (smtp.inFlowDelay)', () => {
  it('while delivery holds its limit of reserved mail, inFlow waits for a delivery to finish or its maximum; below the limit it does not wait', async () => {
    // Every delivery stalls at the final "." until the data timeout: nothing finishes for 8 s
    // (time enough to reach the limit and look, on a loaded machine too).
    const rx = await receiver({ script: { dataEnd: 'stall' } });
    const h = await scheduler({ delivery: { concurrency: 10, routes: { 'dest.test': rx.address }, timeouts: { connect: '10s', greeting: '10s', command: '10s', data: '8s' } } });
    // heldMailLimit: max(100, 4 × concurrency) = 100.
    expect(h.scheduler.inFlow(1_000), 'nothing held: no wait').toBeUndefined();
    await Promise.all(Array.from({ length: 120 }, () => h.enqueue({ to: ['user@dest.test'] })));
    await waitFor('delivery holding its limit', () => h.scheduler.inFlight >= 100);
    expect(h.scheduler.inFlow(0), 'turned off').toBeUndefined();

    // No delivery can finish yet: the wait ends at its maximum.
    let t0 = Date.now();
    const capped = h.scheduler.inFlow(200);
    expect(capped).toBeDefined();
    await capped;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(Date.now() - t0).toBeLessThan(1_500);

    // A long wait ends when the first delivery finishes (its data timeout), long before its maximum.
    t0 = Date.now();
    const token = h.scheduler.inFlow(40_000);
    expect(token).toBeDefined();
    await token;
    const waited = Date.now() - t0;
    expect(waited).toBeLessThan(20_000);
    expect(await h.metrics.registry.getSingleMetricAsString('spoolhouse_in_flow_waits_total')).toMatch(/spoolhouse_in_flow_waits_total 2$/m);
  });
});

describe('scheduler: removal and shutdown', () => {
  it('a mail removed when the receiver has its whole body but no final "." is never delivered', async () => {
    const { rx, gate, h, mail, tx } = await deliveryAtTheDot();
    await h.queue.remove(mail.id, 'removed by the test mid-DATA');
    gate.open();

    // The check said no: the connection is dropped and the "." never comes.
    await rx.until(() => rx.openConnections === 0 || tx.complete);
    expect(tx.complete, 'the final "." was sent for a removed mail').toBe(false);
    expect(tx.reply).toBeUndefined();
    expect(rx.accepted()).toEqual([]);
    await waitFor('the attempt handed back', () => h.scheduler.inFlight === 0);
    const removed = (await h.queue.get(mail.id))!;
    expect(removed.state).toBe('removed');
    expect(removed.history.some((a) => a.outcome === 'delivered')).toBe(false);
    // Nothing comes back later either (retry.min is 200 ms).
    await sleep(800);
    expect(rx.transactions).toHaveLength(1);
    expect(rx.completed()).toEqual([]);
    expect(gate.asked).toEqual([mail.id]);
  });

  it('a mail held at that moment is not finished, and is delivered once after release', async () => {
    const { rx, gate, h, mail, body, tx: first } = await deliveryAtTheDot();
    await h.queue.hold(mail.id, 'held by the test mid-DATA');
    gate.open();
    await rx.until(() => rx.openConnections === 0 || first.complete);
    expect(first.complete, 'the final "." was sent for a held mail').toBe(false);
    await waitFor('the attempt handed back', () => h.scheduler.inFlight === 0);
    await sleep(500);
    expect(rx.completed()).toEqual([]);
    expect(await stateOf(h, mail.id)).toBe('held');

    await h.queue.release(mail.id);
    const [delivered] = await rx.waitForCompleted(1);
    expect(delivered!.data.equals(body)).toBe(true);
    await waitFor('delivered', async () => (await stateOf(h, mail.id)) === 'delivered');
    expect(rx.accepted()).toHaveLength(1);
    expect(gate.asked).toEqual([mail.id, mail.id]);
  });

  it('graceful stop: waiting mail is handed back at once, a stalled delivery at the timeout', async () => {
    const rx = await receiver({ script: { dataEnd: 'stall' } });
    const h = await scheduler({
      delivery: { routes: { 'dest.test': rx.address }, limits: { default: { connections: 1, messagesPerConnection: 1 } } },
    }, { start: false });
    const mails = [];
    for (let i = 0; i < 3; i++) mails.push(await h.enqueue({ to: [`u${i}@dest.test`] }));
    h.scheduler.start();
    await rx.waitForCompleted(1);
    const started = Date.now();
    await h.scheduler.stop(500);
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    expect(h.scheduler.inFlight).toBe(0);
    for (const m of mails) {
      const now = (await h.queue.get(m.id))!;
      expect(now.state).toBe('queued');
      expect(now.lease).toBeUndefined();
    }
    expect(rx.completed()).toHaveLength(1);
  });
});
