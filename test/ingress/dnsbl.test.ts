/**
 * smtp.dnsbl against a real DNS server on loopback: clients (named by a PROXY header from the
 * balancer on loopback, so that they can have any address) listed in a zone are refused at RCPT
 * with 554 5.7.1; unlisted, trusted and authenticated clients are not; a list that does not
 * answer lists nobody; lookups are cached per client.
 */
import { describe, expect, it } from 'vitest';
import { DnsblChecker, dnsblName } from '../../src/ingress/dnsbl.js';
import { makeResolver } from '../../src/delivery/resolve.js';
import type { SmtpClient } from '../helpers/smtp-client.js';
import { balancedIngressPerFile, counter } from './harness.js';

describe('dnsblName', () => {
  it('reverses an IPv4 address by octet and an IPv6 address by nibble under the zone', () => {
    expect(dnsblName('192.0.2.7', 'bl.test')).toBe('7.2.0.192.bl.test');
    expect(dnsblName('::ffff:192.0.2.7', 'bl.test')).toBe('7.2.0.192.bl.test');
    expect(dnsblName('2001:db8::1', 'bl.test')).toBe(`1.${'0.'.repeat(23)}8.b.d.0.1.0.0.2.bl.test`);
    expect(dnsblName('not-an-ip', 'bl.test')).toBeUndefined();
  });
});

describe('ingress with smtp.dnsbl', () => {
  const t = balancedIngressPerFile({
    '7.2.0.192.bl.test': { a: ['127.0.0.2'] },
    '8.2.0.192.bl.test': { a: ['127.0.0.10'] }, // listed, but not with an answer the second zone counts
    '8.2.0.192.picky.test': { a: ['127.0.0.10'] },
    '9.2.0.192.picky.test': { a: ['127.0.0.4'] },
    '10.2.0.192.bl.test': 'drop',
  }, { smtp: { dnsbl: [{ zone: 'picky.test', answers: ['127.0.0.4'] }, 'bl.test'] }, dnsTimeout: '300ms' });

  /** A session from `client` through the balancer, with MAIL FROM given. */
  async function from(client: string, auth?: { user: string; pass: string }): Promise<SmtpClient> {
    const c = await t.from(client, auth ? { auth } : {});
    expect((await c.command('MAIL FROM:<someone@example.org>')).code).toBe(250);
    return c;
  }

  it('refuses a listed client at RCPT with 554 5.7.1 naming the zone, and counts it', async () => {
    const before = await counter(t.h.metrics, 'rejectedTotal', { reason: 'dnsbl' });
    const c = await from('192.0.2.7');
    const r = await c.command('RCPT TO:<x@local.example>');
    expect([r.code, r.enhanced]).toEqual([554, '5.7.1']);
    expect(r.text).toBe('Service unavailable; Client host [192.0.2.7] blocked using bl.test');
    expect(await counter(t.h.metrics, 'rejectedTotal', { reason: 'dnsbl' })).toBe(before + 1);
    // The second zone listed it with an answer it does not count; the first any A record lists.
    const picky = await from('192.0.2.9');
    expect((await picky.command('RCPT TO:<x@local.example>')).text).toContain('blocked using picky.test');
  });

  it('takes mail from unlisted clients, and counts only the answers a zone names', async () => {
    expect((await (await from('192.0.2.1')).command('RCPT TO:<x@local.example>')).code).toBe(250);
    // 127.0.0.10 in picky.test is not one of its answers; in bl.test any answer lists.
    const c = await from('192.0.2.8');
    expect((await c.command('RCPT TO:<x@local.example>')).text).toContain('blocked using bl.test');
  });

  it('never asks for relay.networks, and spares an authenticated client', async () => {
    const asked = t.dns.queries.length;
    expect((await (await from('10.1.2.3')).command('RCPT TO:<x@elsewhere.example>')).code).toBe(250);
    expect(t.dns.queries.length).toBe(asked);
    const roamer = await from('192.0.2.7', { user: 'roamer', pass: 'pw-roamer' });
    expect((await roamer.command('RCPT TO:<x@elsewhere.example>')).code).toBe(250);
  });

  it('fails open: a list that does not answer lists nobody', async () => {
    const c = await from('192.0.2.10');
    expect((await c.command('RCPT TO:<x@local.example>')).code).toBe(250);
  });

  it('looks a client up once per zone, however many connections it opens', async () => {
    for (let i = 0; i < 3; i++) expect((await (await from('192.0.2.77')).command('RCPT TO:<x@local.example>')).code).toBe(250);
    expect(t.dns.queries.filter((q) => q.name === '77.2.0.192.bl.test')).toHaveLength(1);
    expect(t.dns.queries.filter((q) => q.name === '77.2.0.192.picky.test')).toHaveLength(1);
  });

  it('the checker caches for a minute, then asks again', async () => {
    let now = 1_000_000;
    const checker = new DnsblChecker(() => makeResolver({ servers: [t.dns.address], timeout: 300 }), () => now);
    const zones = [{ zone: 'bl.test', answers: null }];
    expect((await checker.check('192.0.2.7', zones)).listed).toEqual({ zone: 'bl.test', answer: '127.0.0.2' });
    const asked = t.dns.queries.length;
    now += 59_000;
    await checker.check('192.0.2.7', zones);
    expect(t.dns.queries.length).toBe(asked);
    now += 2_000;
    await checker.check('192.0.2.7', zones);
    expect(t.dns.queries.length).toBe(asked + 1);
  });
});
