/**
 * smtp.spf against the real server and a real DNS server on loopback (TXT records): the MAIL FROM
 * identity of an untrusted, unauthenticated client (named by a PROXY header) is evaluated by
 * mailauth's SPF evaluator; each checked mail carries Received-SPF above our Received:, and the
 * results listed in smtp.spf.reject are refused at MAIL FROM with RFC 7372's codes.
 */
import { describe, expect, it } from 'vitest';
import { makeMessage, type SmtpClient } from '../helpers/smtp-client.js';
import { balancedIngressPerFile, counter } from './harness.js';

describe('ingress with smtp.spf', () => {
  const t = balancedIngressPerFile({
    'strict.example': { txt: ['v=spf1 ip4:192.0.2.0/24 -all'], mx: [{ preference: 10, exchange: 'mx.strict.example' }] },
    'soft.example': { txt: ['v=spf1 ip4:192.0.2.0/24 ~all'] },
    'nospf.example': { txt: ['some other text'] },
    'broken.example': { txt: 'servfail' },
    'mail.helo.example': { txt: ['v=spf1 ip4:192.0.2.0/24 -all'] },
  }, { smtp: { spf: { check: true, reject: ['fail'] }, hostname: 'mx.local.example' } });

  const from = (client: string, o: { helo?: string; auth?: { user: string; pass: string } } = {}) => t.from(client, o);
  async function mailFrom(c: SmtpClient, sender: string) {
    const r = await c.command(`MAIL FROM:<${sender}>`);
    if (r.code === 250) await c.command('RSET');
    return r;
  }
  /** Sends a whole mail and returns the stored message's header lines above the client's own. */
  async function storedTrace(c: SmtpClient, sender: string, subject: string): Promise<string[]> {
    const r = await c.sendMail(sender, ['user@local.example'], makeMessage({ from: sender || 'mailer@sender.example', to: 'user@local.example', subject }));
    expect(r.code, r.raw).toBe(250);
    const body = await t.h.body(/queued as (\S+)/.exec(r.text)![1]!);
    return body.slice(0, body.indexOf('\r\nFrom:')).split(/\r\n(?![ \t])/);
  }

  it('records a pass in Received-SPF, above our Received:', async () => {
    const trace = await storedTrace(await from('192.0.2.80'), 'alice@strict.example', 'spf pass');
    expect(trace).toHaveLength(2);
    // Folded as RFC 5322 allows: the header's lines after the first start with a blank.
    expect(trace[0]).toMatch(/^Received-SPF: pass \(mx\.local\.example: domain of alice@strict\.example designates 192\.0\.2\.80 as permitted sender\)\s+client-ip=192\.0\.2\.80;\s+envelope-from="alice@strict\.example";\s+helo=client\.example;$/);
    expect(trace[1]).toMatch(/^Received: from client\.example /);
  });

  it('refuses a fail at MAIL FROM with 550 5.7.23, counted as spf; takes a softfail (not in reject) and says so', async () => {
    const before = await counter(t.h.metrics, 'rejectedTotal', { reason: 'spf' });
    const r = await mailFrom(await from('198.51.100.7'), 'alice@strict.example');
    expect([r.code, r.enhanced]).toEqual([550, '5.7.23']);
    expect(r.text).toMatch(/^<alice@strict\.example>: Sender address rejected: SPF fail \(.*198\.51\.100\.7.*\)$/);
    expect(await counter(t.h.metrics, 'rejectedTotal', { reason: 'spf' })).toBe(before + 1);
    const trace = await storedTrace(await from('198.51.100.8'), 'bob@soft.example', 'spf softfail');
    expect(trace[0]).toMatch(/^Received-SPF: softfail /);
    expect((await storedTrace(await from('198.51.100.9'), 'carol@nospf.example', 'spf none'))[0]).toMatch(/^Received-SPF: none /);
  });

  it('checks the HELO identity for the null sender', async () => {
    const bad = await mailFrom(await from('198.51.100.10', { helo: 'mail.helo.example' }), '');
    expect([bad.code, bad.enhanced]).toEqual([550, '5.7.23']);
    expect(bad.text).toMatch(/^<mail\.helo\.example>: Helo command rejected: SPF fail/);
    const trace = await storedTrace(await from('192.0.2.81', { helo: 'mail.helo.example' }), '', 'spf null sender');
    expect(trace[0]).toMatch(/^Received-SPF: pass /);
  });

  it('defers a temperror only when reject lists it (451 4.7.24), and records it otherwise', async () => {
    expect((await storedTrace(await from('192.0.2.82'), 'dan@broken.example', 'spf temperror'))[0]).toMatch(/^Received-SPF: temperror /);
    t.h.update({ smtp: { spf: { check: true, reject: ['fail', 'temperror'] } } });
    try {
      const r = await mailFrom(await from('192.0.2.83'), 'erin@broken.example');
      expect([r.code, r.enhanced]).toEqual([451, '4.7.24']);
    } finally {
      t.h.update({ smtp: { spf: { check: true, reject: ['fail'] } } });
    }
  });

  it('leaves relay.networks and authenticated clients alone: no lookup, no header', async () => {
    const asked = t.dns.queries.length;
    expect((await mailFrom(await from('10.0.0.9'), 'alice@strict.example')).code).toBe(250);
    const trace = await storedTrace(await from('198.51.100.11', { auth: { user: 'roamer', pass: 'pw-roamer' } }), 'alice@strict.example', 'spf authenticated');
    expect(trace).toHaveLength(1);
    expect(trace[0]).toMatch(/^Received: /);
    expect(t.dns.queries.length).toBe(asked);
  });
});
