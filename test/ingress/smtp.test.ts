/**
 * The SMTP ingress over loopback with real clients (nodemailer and the raw socket client) and
 * the real spool queue: EHLO, relay control, limits and their codes, RFC 5321 paths and
 * parameters, DSN, header additions, smuggling, disconnects, rules, MT-PRIORITY, FUTURERELEASE.
 */
import net from 'node:net';
import nodemailer from 'nodemailer';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SmtpClient, makeMessage } from '../helpers/smtp-client.js';
import { counter, greetedClient, startIngress, type Harness } from './harness.js';

const ready = (port: number, host?: string) => greetedClient(port, host ? { host } : {});

async function waitFor<T>(fn: () => Promise<T | undefined>, timeoutMs = 5000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('ingress with default policy (loopback trusted)', () => {
  let h: Harness;
  const clients: SmtpClient[] = [];
  const open = async () => {
    const c = await ready(h.port);
    clients.push(c);
    return c;
  };
  beforeAll(async () => {
    h = await startIngress({
      smtp: { maxMessageSize: 20_000, maxRecipients: 3, maxFutureRelease: '1h' },
      relay: { domains: ['local.example'] },
      rules: [
        { name: 'newsletters', match: { header: { name: 'Precedence', value: 'bulk' } }, priority: 'bulk', delay: '10m' },
        { name: 'alerts', match: { sender: 'alerts@*' }, priority: 'urgent' },
        { name: 'quarantine', match: { senderDomain: 'suspicious.example' }, hold: true },
        { name: 'invoice-scam', match: { header: { name: 'Subject', value: '*invoice overdue*' } }, reject: '550 5.7.1 Message content rejected' },
        { name: 'phish-url', match: { body: '*phish.example/login*' }, reject: '554 5.7.1 Phishing link' },
      ],
    });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h.close();
  });

  it('advertises every EHLO feature', async () => {
    const c = await SmtpClient.connect({ port: h.port });
    clients.push(c);
    expect((await c.read()).code).toBe(220);
    const ehlo = await c.ehlo();
    const features = ehlo.lines.slice(1);
    for (const f of ['PIPELINING', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'DSN', 'SIZE 20000', 'MT-PRIORITY']) expect(features).toContain(f);
    const fr = features.find((f) => f.startsWith('FUTURERELEASE '));
    expect(fr).toMatch(/^FUTURERELEASE 3600 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    // No TLS and no users configured: neither STARTTLS nor AUTH is offered.
    expect(features.some((f) => f.startsWith('STARTTLS') || f.startsWith('AUTH'))).toBe(false);
  });

  it('accepts a mail from nodemailer and answers 250 with the queue id after it is stored', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: h.port, secure: false, ignoreTLS: true });
    const info = await transport.sendMail({ from: 'alice@example.org', to: ['bob@example.net', 'carol@example.com'], subject: 'Grüße =?', text: 'hello' });
    transport.close();
    const m = /^250 2\.0\.0 Ok: queued as (\w{26})$/.exec(info.response);
    expect(m).not.toBeNull();
    const mail = await h.queue.get(m![1]!);
    expect(mail).toMatchObject({ sender: 'alice@example.org', state: 'queued', subject: 'Grüße =?', classification: { priority: { source: 'default' } } });
    expect(mail!.recipients.map((r) => r.address)).toEqual(['bob@example.net', 'carol@example.com']);
    expect(mail!.client).toMatchObject({ address: '127.0.0.1', tls: false });
    const body = await h.body(mail!.id);
    expect(body).toMatch(new RegExp(`^Received: from \\S+ \\(.*\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby mx\\.test\\.example \\(Spoolhouse\\) with ESMTP id ${mail!.id}\\r\\n`));
    expect(body).toContain('hello');
    expect(mail!.size).toBe(Buffer.byteLength(body));
    expect(await counter(h.metrics, 'acceptedTotal', { listener: `127.0.0.1:${h.port}` })).toBeGreaterThanOrEqual(1);
  });

  it('adds a Message-ID when missing and keeps the one given', async () => {
    const c = await open();
    const r1 = await c.sendMail('a@example.org', ['b@example.net'], makeMessage({ messageId: null, subject: 'no id' }));
    expect(r1.code).toBe(250);
    const id1 = r1.text.split(' ').pop()!;
    expect(await h.body(id1)).toContain(`Message-ID: <${id1}@mx.test.example>\r\n`);
    expect((await h.queue.get(id1))!.messageId).toBe(`<${id1}@mx.test.example>`);
    const r2 = await c.sendMail('a@example.org', ['b@example.net'], makeMessage({ messageId: '<given@example.org>' }));
    const id2 = r2.text.split(' ').pop()!;
    const body2 = await h.body(id2);
    expect(body2.match(/^Message-ID:/gim)).toHaveLength(1);
    expect((await h.queue.get(id2))!.messageId).toBe('<given@example.org>');
  });

  it('keeps DSN parameters with the mail', async () => {
    const c = await open();
    expect((await c.command('MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ314159+2B1')).code).toBe(250);
    expect((await c.command('RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.net')).code).toBe(250);
    expect((await c.command('RCPT TO:<c@example.net> NOTIFY=NEVER')).code).toBe(250);
    expect((await c.command('DATA')).code).toBe(354);
    c.write(makeMessage() + '\r\n.\r\n');
    const r = await c.read();
    expect(r.code).toBe(250);
    const mail = await h.queue.get(r.text.split(' ').pop()!);
    expect(mail!.dsn).toEqual({ ret: 'HDRS', envid: 'QQ314159+2B1' });
    expect(mail!.recipients[0]).toMatchObject({ address: 'b@example.net', notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;b+2Bx@example.net' });
    expect(mail!.recipients[1]).toMatchObject({ address: 'c@example.net', notify: ['NEVER'] });
  });

  it('rejects bad DSN values with 501', async () => {
    const c = await open();
    expect((await c.command('MAIL FROM:<a@example.org> RET=ALL')).code).toBe(501);
    const env = await c.command('MAIL FROM:<a@example.org> ENVID=a+zz');
    expect([env.code, env.enhanced]).toEqual([501, '5.5.4']);
    expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    expect((await c.command('RCPT TO:<b@example.net> NOTIFY=SOMETIMES')).code).toBe(501);
    expect((await c.command('RCPT TO:<b@example.net> NOTIFY=NEVER,SUCCESS')).code).toBe(501);
    const orcpt = await c.command('RCPT TO:<b@example.net> ORCPT=rfc822');
    expect(orcpt.code).toBe(501);
  });

  it('parses RFC 5321 paths: quoted local parts, address literals, source routes, 256-octet paths', async () => {
    const c = await open();
    expect((await c.command('MAIL FROM:<"john doe"@example.org>')).code).toBe(250);
    expect((await c.command('RCPT TO:<"a\\"b c"@example.net>')).code).toBe(250);
    expect((await c.command('RCPT TO:<@relay.example,@r2.example:user@[192.0.2.1]>')).code).toBe(250);
    expect((await c.command('RCPT TO:<user@[IPv6:2001:db8::1]>')).code).toBe(250);
    expect((await c.command('DATA')).code).toBe(354);
    c.write(makeMessage() + '\r\n.\r\n');
    const r = await c.read();
    expect(r.code).toBe(250);
    const mail = await h.queue.get(r.text.split(' ').pop()!);
    expect(mail!.sender).toBe('"john doe"@example.org');
    expect(mail!.recipients.map((x) => x.address)).toEqual(['"a\\"b c"@example.net', 'user@[192.0.2.1]', 'user@[IPv6:2001:db8::1]']);
    // A path of exactly 256 octets, angle brackets included (smtp-server alone stops at 253 + 2).
    const domain = `${'d'.repeat(60)}.${'e'.repeat(60)}.${'f'.repeat(60)}.example`;
    const local = 'l'.repeat(254 - 1 - domain.length);
    expect(`<${local}@${domain}>`.length).toBe(256);
    expect((await c.command(`MAIL FROM:<${local}@${domain}>`)).code).toBe(250);
    const tooLong = await c.command(`RCPT TO:<${local}x@${domain}>`);
    expect(tooLong.code).toBe(501);
    expect((await c.command(`RCPT TO:<${local}@${domain}>`)).code).toBe(250);
  });

  it('answers syntax errors with 500/501 and enhanced codes', async () => {
    const c = await open();
    const unknown = await c.command('FROBNICATE');
    expect([unknown.code, unknown.enhanced]).toEqual([500, '5.5.2']);
    for (const bad of ['MAIL FROM:a@example.org', 'MAIL FROM:<a b@example.org>', 'MAIL FROM:<a@@example.org>', 'MAIL FROM:<a@exa mple.org>', 'MAIL FROM:<a@-bad.example>']) {
      const r = await c.command(bad);
      expect(r.code, bad).toBe(501);
      expect(r.enhanced, bad).toMatch(/^5\.\d\.\d+$/);
    }
    const rcptFirst = await c.command('RCPT TO:<b@example.net>');
    expect([rcptFirst.code, rcptFirst.enhanced]).toEqual([503, '5.5.1']);
  });

  it('refuses unknown MAIL/RCPT parameters with 555 5.5.4', async () => {
    const c = await open();
    const m = await c.command('MAIL FROM:<a@example.org> FROB=1');
    expect([m.code, m.enhanced]).toEqual([555, '5.5.4']);
    const rt = await c.command('MAIL FROM:<a@example.org> REQUIRETLS');
    expect(rt.code).toBe(555);
    expect((await c.command('MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME')).code).toBe(250);
    const r = await c.command('RCPT TO:<b@example.net> XFOO');
    expect([r.code, r.enhanced]).toEqual([555, '5.5.4']);
  });

  it('refuses non-ASCII addresses without SMTPUTF8 (553 5.6.7) and accepts them with it', async () => {
    const c = await open();
    const m = await c.command('MAIL FROM:<jörg@exämple.org>');
    expect([m.code, m.enhanced]).toEqual([553, '5.6.7']);
    expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    const r = await c.command('RCPT TO:<用户@例子.广告>');
    expect([r.code, r.enhanced]).toEqual([553, '5.6.7']);
    expect((await c.command('RSET')).code).toBe(250);
    const resp = await c.sendMail('jörg@exämple.org', ['用户@例子.广告'], makeMessage({ subject: 'Grüße' }), 'SMTPUTF8');
    expect(resp.code).toBe(250);
    const mail = await h.queue.get(resp.text.split(' ').pop()!);
    expect(mail).toMatchObject({ sender: 'jörg@exämple.org', smtputf8: true, bodyType: '8BITMIME' });
    expect(await h.body(mail!.id)).toContain('with UTF8SMTP id');
  });

  it('detects 8BITMIME bodies and plain 7-bit mail', async () => {
    const c = await open();
    const r1 = await c.sendMail('a@example.org', ['b@example.net'], makeMessage({ body: 'caf\u00e9' }), 'BODY=8BITMIME');
    const m1 = await h.queue.get(r1.text.split(' ').pop()!);
    expect(m1).toMatchObject({ bodyType: '8BITMIME', smtputf8: false });
    const r2 = await c.sendMail('a@example.org', ['b@example.net'], makeMessage());
    expect((await h.queue.get(r2.text.split(' ').pop()!))).toMatchObject({ bodyType: '7BIT', smtputf8: false });
  });

  it('enforces the size limit at MAIL FROM when declared (552 5.3.4)', async () => {
    const c = await open();
    const r = await c.command('MAIL FROM:<a@example.org> SIZE=20001');
    expect([r.code, r.enhanced]).toEqual([552, '5.3.4']);
  });

  it('enforces the size limit at the end of DATA when not declared (552 5.3.4), nothing queued', async () => {
    const c = await open();
    const r = await c.sendMail('too-big@example.org', ['b@example.net'], makeMessage({ body: 'x'.repeat(76) + '\r\n'.repeat(1) + ('y'.repeat(76) + '\r\n').repeat(300) }));
    expect([r.code, r.enhanced]).toEqual([552, '5.3.4']);
    expect((await h.mails()).filter((m) => m.sender === 'too-big@example.org')).toEqual([]);
    // The session goes on.
    expect((await c.sendMail('a@example.org', ['b@example.net'], makeMessage())).code).toBe(250);
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'size' })).toBeGreaterThanOrEqual(1);
  });

  it('limits recipients (452 4.5.3)', async () => {
    const c = await open();
    expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    for (const n of [1, 2, 3]) expect((await c.command(`RCPT TO:<r${n}@example.net>`)).code).toBe(250);
    const r = await c.command('RCPT TO:<r4@example.net>');
    expect([r.code, r.enhanced]).toEqual([452, '4.5.3']);
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'recipients' })).toBeGreaterThanOrEqual(1);
  });

  it('leaves nothing queued when the client disconnects before the final dot', async () => {
    const c = await open();
    expect((await c.command('MAIL FROM:<gone-before-dot@example.org>')).code).toBe(250);
    expect((await c.command('RCPT TO:<b@example.net>')).code).toBe(250);
    expect((await c.command('DATA')).code).toBe(354);
    c.write(makeMessage({ body: 'partial\r\n.' }));
    await new Promise((r) => setTimeout(r, 100));
    c.destroy();
    await new Promise((r) => setTimeout(r, 300));
    // By its sender: a mail of an earlier test may become visible meanwhile (its 250 comes first).
    expect((await h.mails()).filter((m) => m.sender === 'gone-before-dot@example.org')).toEqual([]);
  });

  it('closes the connection right after 221 to QUIT: nothing the client sends afterwards is read', async () => {
    // Half-open on our side, so that the client can still write once the server's FIN is in.
    const socket = net.connect({ port: h.port, host: '127.0.0.1', allowHalfOpen: true });
    let text = '';
    socket.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; });
    const ended = new Promise<void>((resolve) => socket.once('end', resolve));
    const failed = new Promise<string>((resolve) => socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message)));
    await waitFor(async () => (text.includes('220 ') ? true : undefined), 5000);
    socket.write('EHLO client.example\r\nQUIT\r\n');
    await ended;
    expect(text).toMatch(/\r\n221 [^\r]*\r\n$/);
    // A server that only half-closed (smtp-server's own QUIT) would read and drop this.
    socket.write('NOOP\r\n');
    setTimeout(() => socket.write('NOOP\r\n'), 100).unref();
    expect(await Promise.race([failed, new Promise<string>((r) => setTimeout(() => r('no reset'), 3000))])).toMatch(/^(ECONNRESET|EPIPE)$/);
    socket.destroy();
  });

  it('goes on after two whole messages sent in one write, without waiting for 354 (smtp-server hung there)', async () => {
    const socket = net.connect({ port: h.port, host: '127.0.0.1' });
    let text = '';
    socket.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; });
    let closed = false;
    socket.once('close', () => { closed = true; });
    await waitFor(async () => (text.includes('220 ') ? true : undefined), 5000);
    socket.write('EHLO client.example\r\n');
    await waitFor(async () => (/\r\n250 [^\r]*\r\n$/.test(text) ? true : undefined), 5000);
    const message = (n: number): string => `MAIL FROM:<eager-${n}@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n${makeMessage({ subject: `eager ${n}` })}\r\n.\r\n`;
    socket.write(message(1) + message(2) + message(3) + 'QUIT\r\n');
    // smtp-server answered the first two messages and then read nothing more, QUIT included.
    await waitFor(async () => (closed ? true : undefined), 5000).catch(() => { throw new Error(`no close after QUIT; got:\n${text}`); });
    const queued = [...text.matchAll(/^250 2\.0\.0 Ok: queued as (\S+)/gm)].map((m) => m[1]!);
    expect(queued).toHaveLength(3);
    expect(text).toMatch(/\r\n221 [^\r]*\r\n$/);
    for (const [i, id] of queued.entries()) expect((await h.queue.get(id))?.sender).toBe(`eager-${i + 1}@example.org`);
  });

  const smuggling: [string, string][] = [
    ['\\n.\\n', '\n.\n'],
    ['\\r.\\r', '\r.\r'],
    ['\\n.\\r\\n', '\n.\r\n'],
    ['\\r\\n.\\n', '\r\n.\n'],
    ['\\r.\\r\\n', '\r.\r\n'],
  ];
  for (const [name, seq] of smuggling) {
    it(`never ends DATA at ${name}: the smuggled commands stay inside one message`, async () => {
      // Counted by sender: a mail of an earlier test may become visible meanwhile (its 250 comes first).
      const outer = `outer-${smuggling.findIndex(([n]) => n === name)}@example.org`;
      const ours = async () => (await h.mails()).filter((m) => m.sender === outer || m.sender === 'admin@example.org');
      expect(await ours()).toEqual([]);
      const c = await open();
      expect((await c.command(`MAIL FROM:<${outer}>`)).code).toBe(250);
      expect((await c.command('RCPT TO:<b@example.net>')).code).toBe(250);
      expect((await c.command('DATA')).code).toBe(354);
      const smuggled = `MAIL FROM:<admin@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil`;
      c.write(makeMessage({ subject: 'outer', body: `first${seq}${smuggled}` }) + '\r\n.\r\n');
      const r = await c.read();
      expect(r.code).toBe(250);
      // The 250 comes once the mail is durable; get() waits for it to be indexed, browse does not.
      expect(await h.queue.get(r.text.split(' ').pop()!)).toBeDefined();
      const after = await ours();
      expect(after).toHaveLength(1);
      const mail = after[0]!;
      expect(mail.sender).toBe(outer);
      expect(mail.subject).toBe('outer');
      expect(mail.recipients.map((x) => x.address)).toEqual(['b@example.net']);
      const body = await h.body(mail.id);
      expect(body).toContain('RCPT TO:<victim@example.net>');
      // Normalized: no bare CR or LF is stored.
      expect(/\r(?!\n)|(?<!\r)\n/.test(body)).toBe(false);
      // The connection is still in a clean command state.
      expect((await c.command('NOOP')).code).toBe(250);
    });
  }

  it('refuses a mail loop (50 Received: headers) with 554 5.4.6', async () => {
    const c = await open();
    const headers: Record<string, string> = {};
    const loop = Array.from({ length: 50 }, (_, i) => `Received: from hop${i}.example by hop${i + 1}.example; Wed, 25 Nov 2026 06:00:00 +0000`).join('\r\n');
    const r = await c.sendMail('a@example.org', ['b@example.net'], `${loop}\r\n${makeMessage({ headers })}`);
    expect([r.code, r.enhanced]).toEqual([554, '5.4.6']);
    const ok = await c.sendMail('a@example.org', ['b@example.net'], `${loop.split('\r\n').slice(1).join('\r\n')}\r\n${makeMessage()}`);
    expect(ok.code).toBe(250);
  });

  it('undoes dot-stuffing (RFC 5321 §4.5.2) and stores the rest byte for byte', async () => {
    const c = await open();
    const r = await c.sendMail('a@example.org', ['b@example.net'], makeMessage({ subject: 'dots', body: '..leading dot\r\n.\r\n...\r\nend' }).replace('\r\n.\r\n', '\r\n..\r\n'));
    expect(r.code).toBe(250);
    const body = await h.body(r.text.split(' ').pop()!);
    expect(body.endsWith('\r\n\r\n.leading dot\r\n.\r\n..\r\nend\r\n')).toBe(true);
  });

  it('relays for trusted networks; accepts our domains from anyone', async () => {
    const c = await open();
    expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    expect((await c.command('RCPT TO:<x@anywhere.example>')).code).toBe(250);
    expect((await c.command('RCPT TO:<x@LOCAL.example>')).code).toBe(250);
  });

  it('applies rules: priority, delay and hold reach the queue', async () => {
    const c = await open();
    const t0 = Date.now();
    const bulk = await c.sendMail('news@example.org', ['b@example.net'], makeMessage({ headers: { Precedence: 'bulk' } }));
    const alert = await c.sendMail('alerts@example.org', ['b@example.net'], makeMessage());
    const held = await c.sendMail('x@suspicious.example', ['b@example.net'], makeMessage());
    const mBulk = (await h.queue.get(bulk.text.split(' ').pop()!))!;
    const mAlert = (await h.queue.get(alert.text.split(' ').pop()!))!;
    const mHeld = (await h.queue.get(held.text.split(' ').pop()!))!;
    expect(mBulk.priority).toBe(0);
    expect(mBulk.notBefore).toBeGreaterThanOrEqual(t0 + 600_000);
    expect(mBulk.classification).toEqual({ priority: { source: 'rule', rule: 'newsletters' }, delay: { source: 'rule', rule: 'newsletters' } });
    expect(mAlert.priority).toBe(30);
    expect(mAlert.classification.priority).toEqual({ source: 'rule', rule: 'alerts' });
    expect(mHeld.state).toBe('held');
    expect(mHeld.classification.hold).toEqual({ source: 'rule', rule: 'quarantine' });
  });

  it('a rule that rejects refuses the mail at the end of DATA, queues nothing, and counts it', async () => {
    const before = (await h.mails()).length;
    const refused = await counter(h.metrics, 'rejectedTotal', { reason: 'rule' });
    const c = await open();
    const r = await c.sendMail('billing@example.org', ['b@example.net'], makeMessage({ subject: 'URGENT: Invoice overdue #1234' }));
    expect([r.code, r.enhanced, r.text]).toEqual([550, '5.7.1', 'Message content rejected']);
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'rule' })).toBe(refused + 1);
    // By the body: the rule sees the body as sent.
    const phish = await c.sendMail('it@example.org', ['b@example.net'], makeMessage({ subject: 'Password expiry', body: 'Renew it at https://phish.example/login today.' }));
    expect([phish.code, phish.text]).toEqual([554, 'Phishing link']);
    // The session goes on; the next mail is taken.
    const ok = await c.sendMail('billing@example.org', ['b@example.net'], makeMessage({ subject: 'Your receipt' }));
    expect(ok.code).toBe(250);
    // get() waits until the 250'd mail is indexed; then the count shows that only it was queued.
    expect((await h.queue.get(ok.text.split(' ').pop()!))?.subject).toBe('Your receipt');
    expect((await h.mails()).length).toBe(before + 1);
  });

  it('honours MT-PRIORITY from a trusted client, after the rules', async () => {
    const c = await open();
    const r = await c.sendMail('news@example.org', ['b@example.net'], makeMessage({ headers: { Precedence: 'bulk' } }), 'MT-PRIORITY=4');
    const m = (await h.queue.get(r.text.split(' ').pop()!))!;
    expect(m.priority).toBe(20); // high: threshold 2 <= 4 < 6
    expect(m.mtPriority).toBe(4);
    expect(m.classification.priority).toMatchObject({ source: 'mt-priority' });
    expect(m.classification.delay).toEqual({ source: 'rule', rule: 'newsletters' });
    const r2 = await c.sendMail('a@example.org', ['b@example.net'], makeMessage(), 'MT-PRIORITY=-9');
    expect((await h.queue.get(r2.text.split(' ').pop()!))!.priority).toBe(0);
    const bad = await c.command('MAIL FROM:<a@example.org> MT-PRIORITY=10');
    expect([bad.code, bad.enhanced]).toEqual([501, '5.5.4']);
  });

  it('honours FUTURERELEASE HOLDFOR/HOLDUNTIL from a trusted client within smtp.maxFutureRelease', async () => {
    const c = await open();
    const t0 = Date.now();
    const r = await c.sendMail('a@example.org', ['b@example.net'], makeMessage(), 'HOLDFOR=600');
    const m = (await h.queue.get(r.text.split(' ').pop()!))!;
    expect(m.notBefore).toBeGreaterThanOrEqual(t0 + 600_000);
    expect(m.notBefore).toBeLessThan(Date.now() + 600_000 + 1000);
    expect(m.classification.delay).toEqual({ source: 'futurerelease', detail: 'HOLDFOR=600' });
    const until = new Date(Math.ceil((Date.now() + 1_800_000) / 1000) * 1000).toISOString().replace('.000Z', 'Z');
    const r2 = await c.sendMail('a@example.org', ['b@example.net'], makeMessage(), `HOLDUNTIL=${until}`);
    expect((await h.queue.get(r2.text.split(' ').pop()!))!.notBefore).toBe(Date.parse(until));
    const tooFar = await c.command('MAIL FROM:<a@example.org> HOLDFOR=3601');
    expect([tooFar.code, tooFar.enhanced]).toEqual([501, '5.5.4']);
    const both = await c.command('MAIL FROM:<a@example.org> HOLDFOR=1 HOLDUNTIL=2030-01-01T00:00:00Z');
    expect(both.code).toBe(501);
  });

  it('hot-reloads: a new session sees the changed rules and size', async () => {
    h.update({ smtp: { maxMessageSize: 30_000 }, rules: [{ name: 'everything-bulk', match: { senderDomain: '*' }, priority: 'bulk' }] });
    try {
      const c = await open();
      const ehlo = await c.ehlo();
      expect(ehlo.lines).toContain('SIZE 30000');
      const r = await c.sendMail('a@example.org', ['b@example.net'], makeMessage());
      const m = (await h.queue.get(r.text.split(' ').pop()!))!;
      expect(m.classification.priority).toEqual({ source: 'rule', rule: 'everything-bulk' });
    } finally {
      h.update({ smtp: { maxMessageSize: 20_000 }, rules: [] });
    }
  });
});

describe('ingress with an untrusted client (relay.networks excludes loopback)', () => {
  let h: Harness;
  const clients: SmtpClient[] = [];
  beforeAll(async () => {
    h = await startIngress({ relay: { networks: ['10.0.0.0/8'], domains: ['local.example'] }, smtp: { earlyTalkerDelay: '300ms' } });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h.close();
  });

  it('denies relaying to outside domains with 554 5.7.1 and accepts local domains', async () => {
    const c = await ready(h.port);
    clients.push(c);
    expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    const denied = await c.command('RCPT TO:<x@outside.example>');
    expect([denied.code, denied.enhanced]).toEqual([554, '5.7.1']);
    expect((await c.command('RCPT TO:<x@local.example>')).code).toBe(250);
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'relay' })).toBeGreaterThanOrEqual(1);
  });

  it('nodemailer gets the relay refusal too', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: h.port, secure: false, ignoreTLS: true });
    await expect(transport.sendMail({ from: 'a@example.org', to: 'x@outside.example', text: 'x' })).rejects.toMatchObject({ responseCode: 554 });
    transport.close();
  });

  it('refuses MT-PRIORITY and FUTURERELEASE from untrusted clients with 550 5.7.1', async () => {
    const c = await ready(h.port);
    clients.push(c);
    const p = await c.command('MAIL FROM:<a@example.org> MT-PRIORITY=5');
    expect([p.code, p.enhanced]).toEqual([550, '5.7.1']);
    expect(p.text).toMatch(/trusted/);
    const f = await c.command('MAIL FROM:<a@example.org> HOLDFOR=60');
    expect([f.code, f.enhanced]).toEqual([550, '5.7.1']);
  });

  it('makes untrusted clients wait before the greeting and drops early talkers', async () => {
    const c = await SmtpClient.connect({ port: h.port });
    clients.push(c);
    c.write('EHLO early.example\r\n');
    const r = await c.read();
    expect(r.code).toBe(421);
    await c.waitClosed();
  });
});

describe('connection limits and idle timeout', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startIngress({ smtp: { maxConnections: 3, maxConnectionsPerClient: 2, idleTimeout: '400ms' } });
  });
  afterAll(async () => {
    await h.close();
  });

  it('refuses connections over maxConnectionsPerClient with 421 4.7.0', async () => {
    const a = await ready(h.port);
    const b = await ready(h.port);
    const c = await SmtpClient.connect({ port: h.port });
    const r = await c.read();
    expect([r.code, r.enhanced]).toEqual([421, '4.7.0']);
    await c.waitClosed();
    await a.quit();
    await b.quit();
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'connections' })).toBeGreaterThanOrEqual(1);
  });

  it('refuses connections over maxConnections with 421 4.7.0', async () => {
    // Three different client addresses on loopback: 127.0.0.1, 127.0.0.2, 127.0.0.3.
    const held: SmtpClient[] = [];
    for (const local of ['127.0.0.1', '127.0.0.2', '127.0.0.3']) {
      const c = await SmtpClient.connect({ port: h.port, localAddress: local });
      expect((await c.read()).code).toBe(220);
      held.push(c);
    }
    const extra = await SmtpClient.connect({ port: h.port, localAddress: '127.0.0.4' });
    const r = await extra.read();
    expect([r.code, r.enhanced]).toEqual([421, '4.7.0']);
    await Promise.all(held.map((c) => c.quit()));
  });

  it('closes idle sessions with 421 4.4.2', async () => {
    const c = await ready(h.port);
    const r = await c.read(5000);
    expect([r.code, r.enhanced]).toEqual([421, '4.4.2']);
    await c.waitClosed();
  });
});

describe('bare line endings in reject mode', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startIngress({ smtp: { bareLineEndings: 'reject' }, relay: { networks: ['10.0.0.0/8'], domains: ['local.example'] } });
  });
  afterAll(async () => {
    await h.close();
  });

  it('refuses a message with bare LF or bare CR with 550 5.5.2 and queues nothing', async () => {
    const c = await ready(h.port);
    for (const seq of ['\n.\n', '\r.\r', '\n.\r\n']) {
      const r = await c.sendMail('a@example.org', ['b@local.example'], makeMessage({ body: `one${seq}MAIL FROM:<x@example.org>` }));
      expect([r.code, r.enhanced]).toEqual([550, '5.5.2']);
    }
    expect(await h.mails()).toHaveLength(0);
    expect((await c.sendMail('a@example.org', ['b@local.example'], makeMessage())).code).toBe(250);
    await c.quit();
    await waitFor(async () => ((await h.mails()).length === 1 ? true : undefined));
  });
});

describe('250 only after the queue has the mail', () => {
  let h: Harness;
  let release: (() => void) | undefined;
  let enqueueStarted: (() => void) | undefined;
  beforeAll(async () => {
    // The real spool, with a gate in front of enqueue so the test decides when it may proceed.
    h = await startIngress({}, {
      queue: async (o) => {
        const { defaultQueue } = await import('./harness.js');
        const real = await defaultQueue(o);
        const enqueue: typeof real.enqueue = async (req) => {
          enqueueStarted?.();
          await new Promise<void>((r) => { release = r; });
          return real.enqueue(req);
        };
        return new Proxy(real, {
          get(target, prop) {
            if (prop === 'enqueue') return enqueue;
            const v: unknown = Reflect.get(target, prop, target);
            return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
          },
        });
      },
    });
  });
  afterAll(async () => {
    await h.close();
  });

  it('does not answer the final dot before enqueue resolved', async () => {
    const c = await ready(h.port);
    expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    expect((await c.command('RCPT TO:<b@example.net>')).code).toBe(250);
    expect((await c.command('DATA')).code).toBe(354);
    const started = new Promise<void>((r) => { enqueueStarted = r; });
    c.write(makeMessage() + '\r\n.\r\n');
    await started;
    await expect(c.read(300)).rejects.toThrow(/no SMTP reply/);
    release!();
    const r = await c.read();
    expect(r.code, r.raw).toBe(250);
    expect(await h.queue.get(r.text.split(' ').pop()!)).toBeDefined();
    await c.quit();
  });
});

describe('early-talker wait', () => {
  it('is skipped for relay.networks clients however long it is', async () => {
    const h = await startIngress({ smtp: { earlyTalkerDelay: '30s' } });
    try {
      const c = await SmtpClient.connect({ port: h.port });
      // The greeting comes at once, not after 30 s.
      const greeting = await c.read(5000);
      expect(greeting.code).toBe(220);
      expect((await c.ehlo()).code).toBe(250);
      await c.quit();
    } finally {
      await h.close();
    }
  });
});
