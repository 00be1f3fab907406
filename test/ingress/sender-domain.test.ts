/**
 * relay.checkSenderDomain against a real DNS server on loopback: MAIL FROM of an untrusted,
 * unauthenticated client (named by a PROXY header) must name a domain that can receive mail.
 */
import { describe, expect, it } from 'vitest';
import { NULL_MX } from '../helpers/dns-server.js';
import type { SmtpClient } from '../helpers/smtp-client.js';
import { balancedIngressPerFile, counter } from './harness.js';

describe('ingress with relay.checkSenderDomain', () => {
  const t = balancedIngressPerFile({
    'mx.example': { mx: [{ preference: 10, exchange: 'mail.mx.example' }] },
    'a-only.example': { a: ['192.0.2.1'] },
    'v6-only.example': { aaaa: ['2001:db8::1'] },
    'nullmx.example': { mx: NULL_MX },
    'nothing.example': {},
    'broken.example': 'servfail',
  }, { relay: { checkSenderDomain: true } });

  const from = (client: string, auth?: { user: string; pass: string }) => t.from(client, auth ? { auth } : {});
  async function mailFrom(c: SmtpClient, sender: string) {
    const r = await c.command(`MAIL FROM:<${sender}>`);
    if (r.code === 250) await c.command('RSET');
    return r;
  }

  it('takes senders whose domain has an MX, or an A or AAAA record as its implicit MX', async () => {
    const c = await from('192.0.2.50');
    for (const sender of ['a@mx.example', 'a@a-only.example', 'a@v6-only.example', 'a@[192.0.2.9]', '']) {
      expect((await mailFrom(c, sender)).code, sender).toBe(250);
    }
  });

  it('defers a domain that does not exist or has no address (450 4.1.8), refuses a null MX (550 5.7.27)', async () => {
    const before = await counter(t.h.metrics, 'rejectedTotal', { reason: 'sender_domain' });
    const c = await from('192.0.2.51');
    const gone = await mailFrom(c, 'someone@gone.example');
    expect([gone.code, gone.enhanced, gone.text]).toEqual([450, '4.1.8', '<someone@gone.example>: Sender address rejected: Domain not found']);
    expect((await mailFrom(c, 'x@nothing.example')).code).toBe(450);
    const nullMx = await mailFrom(c, 'noreply@nullmx.example');
    expect([nullMx.code, nullMx.enhanced]).toEqual([550, '5.7.27']);
    expect(nullMx.text).toContain('Domain nullmx.example does not accept mail (null MX)');
    expect(await counter(t.h.metrics, 'rejectedTotal', { reason: 'sender_domain' })).toBe(before + 3);
  });

  it('defers with 451 4.4.3 when the lookup fails, never a 5xx', async () => {
    const r = await mailFrom(await from('192.0.2.52'), 'a@broken.example');
    expect([r.code, r.enhanced]).toEqual([451, '4.4.3']);
  });

  it('does not check relay.networks or authenticated clients, and asks once per domain', async () => {
    const asked = t.dns.queries.length;
    expect((await mailFrom(await from('10.0.0.7'), 'a@gone2.example')).code).toBe(250);
    expect((await mailFrom(await from('192.0.2.53', { user: 'roamer', pass: 'pw-roamer' }), 'a@gone2.example')).code).toBe(250);
    expect(t.dns.queries.length).toBe(asked);
    const c = await from('192.0.2.54');
    expect((await mailFrom(c, 'a@mx.example')).code).toBe(250);
    expect((await mailFrom(c, 'b@MX.example')).code).toBe(250);
    expect(t.dns.queries.filter((q) => q.name === 'mx.example')).toHaveLength(1);
  });
});
