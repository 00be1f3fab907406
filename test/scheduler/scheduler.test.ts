/**
 * The scheduler with real parts over loopback: the real SpoolQueue on a temp dir, the real
 * Deliverer, scripted receiving SMTP servers and a real DNS server. Retry timings are compressed
 * through config (retry.min "200ms", lifetime "2s"), never by mocking time.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startDnsServer, NULL_MX, type DnsServer } from '../helpers/dns-server.js';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { parseDsn } from '../bounce/parse-dsn.js';
import { makeMessage, startScheduler, waitFor, type SchedulerHarness } from './harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function receiver(...args: Parameters<typeof startReceiver>): Promise<Receiver> {
  const rx = await startReceiver(...args);
  cleanups.push(() => rx.close());
  return rx;
}

async function scheduler(overlay: Record<string, unknown>, o: { start?: boolean } = {}): Promise<SchedulerHarness> {
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
    const h = await scheduler({ delivery: { routes: { 'dest.test': rx.address } } });
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
    const dsn = await parseDsn(dsnTx!.data);
    expect(dsn.blocks[1]).toMatchObject({ 'final-recipient': 'rfc822; user@dest.test', action: 'failed', status: '4.4.7' });
    expect(dsn.blocks[1]!['diagnostic-code']).toMatch(/451 4\.7\.1 Greylisted/);
    const expired = (await h.queue.get(mail.id))!;
    expect(expired.state).toBe('expired');
    expect(expired.attempts).toBeGreaterThanOrEqual(3);
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
    const h = await scheduler({
      delivery: { routes: { 'dest.test': rx.address }, limits: { domains: { 'dest.test': { rate: '5/s' } } } },
    }, { start: false });
    const count = 15;
    for (let i = 0; i < count; i++) await h.enqueue({ to: [`u${i}@dest.test`] });
    h.scheduler.start();
    await rx.waitForCompleted(count, 30_000);
    // Between the i-th and j-th receipt at most burst (5) + rate × elapsed messages may arrive.
    for (let i = 0; i < times.length; i++) {
      for (let j = i; j < times.length; j++) {
        expect(j - i + 1).toBeLessThanOrEqual(5 + Math.ceil((5 * (times[j]! - times[i]!)) / 1000) + 1);
      }
    }
    expect(times.at(-1)! - times[0]!).toBeGreaterThanOrEqual(1500); // 15 at 5/s after a burst of 5: ≥ 2 s
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
      delivery: { leaseTime: '800ms', routes: { 'dest.test': rx.address }, limits: { domains: { 'dest.test': { rate: '3/s', connections: 1 } } } },
    }, { start: false });
    const count = 10;
    for (let i = 0; i < count; i++) await h.enqueue({ to: [`u${i}@dest.test`] });
    h.scheduler.start();
    await rx.waitForCompleted(count, 15_000); // ≈ 2.5 s of waiting, three lease times
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

  it('with a backlog, higher-priority mail is delivered first', async () => {
    const order: string[] = [];
    const rx = await receiver({ script: { dataEnd: (tx) => { order.push(tx.rcptTo[0]!.address); return undefined; } } });
    const h = await scheduler({
      delivery: { concurrency: 1, routes: { 'dest.test': rx.address }, limits: { default: { connections: 1, messagesPerConnection: 1 } } },
    }, { start: false });
    const { bulk, urgent } = h.store.current.priorities.classes;
    for (let i = 0; i < 15; i++) await h.enqueue({ to: [`bulk${i}@dest.test`], priority: bulk! });
    for (let i = 0; i < 4; i++) await h.enqueue({ to: [`urgent${i}@dest.test`], priority: urgent! });
    h.scheduler.start();
    await rx.waitForCompleted(19, 30_000);
    const firstFour = order.slice(0, 4);
    expect(firstFour.filter((a) => a.startsWith('urgent'))).toHaveLength(4);
  });
});

describe('scheduler: removal and shutdown', () => {
  it('a mail removed while its delivery is stalled is never delivered', async () => {
    let stall = true;
    const rx = await receiver({ script: { rcpt: () => (stall ? 'stall' : undefined) } });
    const h = await scheduler({
      delivery: { routes: { 'dest.test': rx.address }, timeouts: { connect: '2s', greeting: '2s', command: '1500ms', data: '5s' } },
    });
    const mail = await h.enqueue({ to: ['user@dest.test'] });
    await waitFor('RCPT sent', () => rx.connections.some((c) => c.commands.some((cmd) => /^RCPT/i.test(cmd))));
    await h.queue.remove(mail.id);
    stall = false;
    await sleep(2_500); // the stalled command times out; a retry would come 200 ms later
    expect(rx.completed()).toHaveLength(0);
    expect(await stateOf(h, mail.id)).toBe('removed');
    await waitFor('lease handed back', async () => h.scheduler.inFlight === 0);
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
