/**
 * The door's refusal log (smtp.refusalsKept) against the real server, clients named by a PROXY
 * balancer so each test has addresses of its own: what each refusal records (client, HELO name,
 * user, sender, the command answered, the reply, the reason), that credentials never appear,
 * the filters and the cursor, and that only the newest are kept.
 */
import { describe, expect, it } from 'vitest';
import { BadClientFilter, RefusalLog } from '../../src/ingress/refusals.js';
import { balancedIngressPerFile } from './harness.js';

const PASSWORD = 'pw-roamer';

describe('the refusal log of a running ingress', () => {
  const t = balancedIngressPerFile({}, {
    smtp: { refusalsKept: 50 },
    relay: { reject: [{ sender: '*@blocked.example', reply: '550 5.7.1 Not from you' }] },
  });
  const refusals = (q: Parameters<RefusalLog['page']>[0] = {}) => t.h.ingress.refusals.page(q).items;

  it('records a relay denial at RCPT with the client, HELO name, sender, command, reply and reason', async () => {
    const c = await t.from('192.0.2.80', { helo: 'mx.outside.example' });
    expect((await c.command('MAIL FROM:<someone@outside.example>')).code).toBe(250);
    const denied = await c.command('RCPT TO:<victim@elsewhere.example>');
    expect(denied.code).toBe(554);
    const [r, ...rest] = refusals({ client: '192.0.2.80' });
    expect(rest).toEqual([]);
    expect(r).toMatchObject({
      client: '192.0.2.80', helo: 'mx.outside.example', sender: 'someone@outside.example',
      command: 'RCPT TO:<victim@elsewhere.example>', reason: 'relay',
      reply: { code: 554, enhanced: '5.7.1', text: denied.text },
    });
    expect(r!.user).toBeUndefined();
    expect(r!.listener).toBe(`127.0.0.1:${t.h.port}`);
    expect(Math.abs(r!.at - Date.now())).toBeLessThan(5_000);
  });

  it('records a refused MAIL FROM (no sender yet: the command says it) and a syntax error', async () => {
    const c = await t.from('192.0.2.81', { helo: 'mail.blocked.example' });
    expect((await c.command('MAIL FROM:<spam@blocked.example>')).code).toBe(550);
    expect((await c.command('MAIL FROM:<broken')).code).toBe(501);
    const [syntax, blocked] = refusals({ client: '192.0.2.81' });
    expect(blocked).toMatchObject({ command: 'MAIL FROM:<spam@blocked.example>', reply: { code: 550, enhanced: '5.7.1', text: 'Not from you' } });
    expect(blocked!.sender).toBeUndefined();
    expect(syntax).toMatchObject({ command: 'MAIL FROM:<broken', reason: 'syntax', reply: { code: 501 } });
  });

  it('never records credentials: a failed AUTH PLAIN shows the mechanism only, a LOGIN response is not shown', async () => {
    const c = await t.from('192.0.2.82', { helo: 'laptop.example' });
    const secret = Buffer.from(`\0roamer\0wrong-${PASSWORD}`).toString('base64');
    expect((await c.command(`AUTH PLAIN ${secret}`)).code).toBe(535);
    expect((await c.command('AUTH LOGIN')).code).toBe(334);
    expect((await c.command(Buffer.from('roamer').toString('base64'))).code).toBe(334);
    const loginSecret = Buffer.from(`also-wrong-${PASSWORD}`).toString('base64');
    expect((await c.command(loginSecret)).code).toBe(535);
    const kept = refusals({ client: '192.0.2.82' });
    expect(kept.map((r) => r.command)).toEqual(['AUTH (response)', 'AUTH PLAIN']);
    expect(kept.map((r) => r.reason)).toEqual(['auth', 'auth']);
    const everything = JSON.stringify(t.h.ingress.refusals.page({ limit: 1000 }));
    expect(everything).not.toContain(secret);
    expect(everything).not.toContain(loginSecret);
    expect(everything).not.toContain(PASSWORD);
  });

  it('records the user of an authenticated session and a refusal at the end of the data', async () => {
    t.h.update({ rules: [{ name: 'no-phish', match: { body: '*phish.example*' }, reject: '550 5.7.1 Looks like phishing' }] });
    try {
      const c = await t.from('192.0.2.83', { helo: 'laptop.example', auth: { user: 'roamer', pass: PASSWORD } });
      expect((await c.command('MAIL FROM:<roamer@local.example>')).code).toBe(250);
      expect((await c.command('RCPT TO:<friend@far.example>')).code).toBe(250);
      expect((await c.command('DATA')).code).toBe(354);
      const end = await c.command('Subject: hi\r\n\r\nclick https://phish.example/now\r\n.');
      expect(end.code).toBe(550);
      const [r] = refusals({ client: '192.0.2.83' });
      expect(r).toMatchObject({
        user: 'roamer', sender: 'roamer@local.example', command: 'DATA (end of data)',
        reply: { code: 550, enhanced: '5.7.1', text: 'Looks like phishing' },
      });
    } finally {
      t.h.update({ rules: [] });
    }
  });

  it('filters by reason, client network and text, newest first, and pages with the cursor', async () => {
    for (const client of ['198.51.100.7', '198.51.100.8', '203.0.113.9']) {
      const c = await t.from(client, { helo: `host-${client.replaceAll('.', '-')}.example` });
      expect((await c.command('MAIL FROM:<x@outside.example>')).code).toBe(250);
      expect((await c.command('RCPT TO:<y@elsewhere.example>')).code).toBe(554);
    }
    const net = refusals({ client: '198.51.100.0/24' });
    expect(net.map((r) => r.client)).toEqual(['198.51.100.8', '198.51.100.7']);
    expect(refusals({ client: '::ffff:198.51.100.7' }).map((r) => r.client)).toEqual(['198.51.100.7']);
    expect(refusals({ text: 'HOST-203-0' }).map((r) => r.client)).toEqual(['203.0.113.9']);
    expect(refusals({ reason: 'relay', client: '203.0.113.0/24' })).toHaveLength(1);
    expect(refusals({ reason: 'auth', client: '203.0.113.0/24' })).toHaveLength(0);
    const first = t.h.ingress.refusals.page({ client: '198.51.100.0/24', limit: 1 });
    expect(first.items.map((r) => r.client)).toEqual(['198.51.100.8']);
    expect(first.nextCursor).toBe(first.items[0]!.seq);
    const second = t.h.ingress.refusals.page({ client: '198.51.100.0/24', limit: 1, before: first.nextCursor! });
    expect(second.items.map((r) => r.client)).toEqual(['198.51.100.7']);
    expect(second.nextCursor).toBeUndefined();
    expect(() => t.h.ingress.refusals.page({ client: 'not-an-address' })).toThrow(BadClientFilter);
    expect(() => t.h.ingress.refusals.page({ client: '198.51.100.0/99' })).toThrow(BadClientFilter);
  });

  it('keeps the newest smtp.refusalsKept, and a smaller value applies at once', async () => {
    const total = t.h.ingress.refusals.page().total;
    t.h.update({ smtp: { refusalsKept: 3 } });
    expect(t.h.ingress.refusals.capacity).toBe(3);
    const c = await t.from('192.0.2.84');
    for (let i = 0; i < 5; i++) expect((await c.command(`MAIL FROM:<bad${i}`)).code).toBe(501);
    const page = t.h.ingress.refusals.page();
    expect(page.items.map((r) => r.command)).toEqual(['MAIL FROM:<bad4', 'MAIL FROM:<bad3', 'MAIL FROM:<bad2']);
    expect(page.total).toBe(total + 5);
    t.h.update({ smtp: { refusalsKept: 0 } });
    expect((await c.command('MAIL FROM:<bad5')).code).toBe(501);
    expect(t.h.ingress.refusals.page().items).toEqual([]);
    expect(t.h.ingress.refusals.page().total).toBe(total + 6);
    t.h.update({ smtp: { refusalsKept: 50 } });
  });
});

describe('RefusalLog', () => {
  const entry = (i: number) => ({ at: i, client: `192.0.2.${i}`, reply: { code: 554, enhanced: '5.7.1', text: `no ${i}` }, reason: 'relay', listener: 'x:25' });

  it('wraps around, keeping the newest in order, and grows and shrinks keeping the newest', () => {
    const log = new RefusalLog(3);
    for (let i = 1; i <= 7; i++) log.add(entry(i));
    expect(log.page().items.map((r) => r.at)).toEqual([7, 6, 5]);
    log.resize(5);
    for (let i = 8; i <= 9; i++) log.add(entry(i));
    expect(log.page().items.map((r) => r.at)).toEqual([9, 8, 7, 6, 5]);
    log.add(entry(10));
    expect(log.page().items.map((r) => r.at)).toEqual([10, 9, 8, 7, 6]);
    log.resize(2);
    expect(log.page().items.map((r) => r.at)).toEqual([10, 9]);
    log.add(entry(11));
    expect(log.page().items.map((r) => r.at)).toEqual([11, 10]);
    expect(log.page().total).toBe(11);
    // `after`: only newer than the newest seen (to follow).
    expect(log.page({ after: 10 }).items.map((r) => r.seq)).toEqual([11]);
    expect(log.page({ after: 11 }).items).toEqual([]);
  });
});
