/**
 * smtp.helo against the real server and a real DNS server on loopback: the HELO/EHLO name of a
 * client outside relay.networks that did not authenticate (named by a PROXY header) is checked at
 * RCPT, as Postfix's reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname and
 * reject_unknown_helo_hostname.
 */
import { describe, expect, it } from 'vitest';
import { heloKind } from '../../src/ingress/helo.js';
import type { SmtpClient } from '../helpers/smtp-client.js';
import { balancedIngressPerFile, counter } from './harness.js';

describe('heloKind', () => {
  it('tells address literals, bare addresses, host names and the rest apart', () => {
    for (const n of ['[192.0.2.1]', '[IPv6:2001:db8::1]']) expect(heloKind(n), n).toBe('literal');
    for (const n of ['192.0.2.1', '2001:db8::1']) expect(heloKind(n), n).toBe('ip');
    for (const n of ['mail.example.org', 'mail.example.org.', 'localhost', 'desktop_7', 'a-b.c', `${'a'.repeat(63)}.example`]) expect(heloKind(n), n).toBe('hostname');
    for (const n of ['', '.', 'foo..bar', '-foo.example', 'foo-.example', 'foo!.example', 'a b', '[192.0.2.999]', '[not a literal', '1.2.3', '123', `${'a'.repeat(64)}.example`, `${'a.'.repeat(128)}example`]) {
      expect(heloKind(n), n).toBe('invalid');
    }
  });
});

describe('ingress with smtp.helo', () => {
  const t = balancedIngressPerFile({
    'mail.known.example': { a: ['192.0.2.1'] },
    'v6.known.example': { aaaa: ['2001:db8::1'] },
    'mx-only.example': { mx: [{ preference: 10, exchange: 'mail.known.example' }] },
    'nothing.example': {},
    'broken.example': 'servfail',
  }, { smtp: { helo: { rejectInvalid: true, rejectNonFqdn: true, rejectUnknown: true } } });

  const from = (client: string, helo: string, auth?: { user: string; pass: string }) => t.from(client, { helo, ...(auth ? { auth } : {}) });
  /** MAIL FROM (always taken: the name is judged at RCPT), then one RCPT whose reply is returned. */
  async function rcpt(c: SmtpClient) {
    expect((await c.command('MAIL FROM:<someone@sender.example>')).code).toBe(250);
    const r = await c.command('RCPT TO:<user@local.example>');
    await c.command('RSET');
    return r;
  }

  it('takes names with an address or an MX, and address literals', async () => {
    for (const helo of ['mail.known.example', 'MAIL.Known.Example.', 'v6.known.example', 'mx-only.example', '[192.0.2.60]', '[IPv6:2001:db8::60]']) {
      expect((await rcpt(await from('192.0.2.60', helo))).code, helo).toBe(250);
    }
  });

  it('refuses a malformed name (501 5.5.2), a name that is not fully qualified (504 5.5.2), at RCPT, counted as helo', async () => {
    const before = await counter(t.h.metrics, 'rejectedTotal', { reason: 'helo' });
    const bad = await rcpt(await from('192.0.2.61', 'foo..bar'));
    expect([bad.code, bad.enhanced, bad.text]).toEqual([501, '5.5.2', '<foo..bar>: Helo command rejected: Invalid name']);
    const local = await rcpt(await from('192.0.2.61', 'localhost'));
    expect([local.code, local.enhanced, local.text]).toEqual([504, '5.5.2', '<localhost>: Helo command rejected: need fully-qualified hostname']);
    // A bare IP address is a valid name for old clients, but not a fully qualified one.
    expect((await rcpt(await from('192.0.2.61', '192.0.2.61'))).code).toBe(504);
    expect(await counter(t.h.metrics, 'rejectedTotal', { reason: 'helo' })).toBe(before + 3);
  });

  it('defers a name with neither address nor MX (450 4.7.1), and a failed lookup (451 4.4.3), never a 5xx for DNS', async () => {
    const gone = await rcpt(await from('192.0.2.62', 'host.gone.example'));
    expect([gone.code, gone.enhanced, gone.text]).toEqual([450, '4.7.1', '<host.gone.example>: Helo command rejected: Host not found']);
    expect((await rcpt(await from('192.0.2.62', 'nothing.example'))).code).toBe(450);
    const broken = await rcpt(await from('192.0.2.62', 'broken.example'));
    expect([broken.code, broken.enhanced]).toEqual([451, '4.4.3']);
  });

  it('judges the latest name of a session: a new EHLO with a good name is taken', async () => {
    const c = await from('192.0.2.63', 'localhost');
    expect((await rcpt(c)).code).toBe(504);
    expect((await c.ehlo('mail.known.example')).code).toBe(250);
    expect((await rcpt(c)).code).toBe(250);
  });

  it('does not check relay.networks or authenticated clients, and asks DNS once per name', async () => {
    const asked = t.dns.queries.length;
    expect((await rcpt(await from('10.0.0.8', 'localhost'))).code).toBe(250);
    expect((await rcpt(await from('192.0.2.64', 'laptop', { user: 'roamer', pass: 'pw-roamer' }))).code).toBe(250);
    expect(t.dns.queries.length).toBe(asked);
    await rcpt(await from('192.0.2.65', 'once.gone.example'));
    await rcpt(await from('192.0.2.66', 'once.gone.example'));
    expect(t.dns.queriesFor('once.gone.example', 'A')).toHaveLength(1);
  });
});
