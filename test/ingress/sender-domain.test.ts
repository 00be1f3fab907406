/**
 * relay.checkSenderDomain against a real DNS server on loopback: MAIL FROM of an untrusted,
 * unauthenticated client (named by a PROXY header) must name a domain that can receive mail.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NULL_MX, startDnsServer, type DnsServer } from '../helpers/dns-server.js';
import type { SmtpClient } from '../helpers/smtp-client.js';
import { counter, greetedClient, startIngress, writeUsersFile, type Harness } from './harness.js';

describe('ingress with relay.checkSenderDomain', () => {
  let dns: DnsServer;
  let h: Harness;
  let dir: string;
  const clients: SmtpClient[] = [];

  const from = (client: string, auth?: { user: string; pass: string }) => greetedClient(h.port, { proxyFrom: client, track: clients, ...(auth ? { auth } : {}) });
  async function mailFrom(c: SmtpClient, sender: string) {
    const r = await c.command(`MAIL FROM:<${sender}>`);
    if (r.code === 250) await c.command('RSET');
    return r;
  }

  beforeAll(async () => {
    dns = await startDnsServer({
      'mx.example': { mx: [{ preference: 10, exchange: 'mail.mx.example' }] },
      'a-only.example': { a: ['192.0.2.1'] },
      'v6-only.example': { aaaa: ['2001:db8::1'] },
      'nullmx.example': { mx: NULL_MX },
      'nothing.example': {},
      'broken.example': 'servfail',
    });
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-senderdomain-'));
    const users = writeUsersFile(dir, { roamer: 'pw-roamer' });
    h = await startIngress({
      smtp: { listen: [{ address: '127.0.0.1:0', proxyProtocol: ['127.0.0.0/8'] }] },
      relay: { networks: ['127.0.0.0/8', '10.0.0.0/8'], domains: ['local.example'], checkSenderDomain: true },
      auth: { users, allowInsecure: true },
      delivery: { dns: { servers: [dns.address], timeout: '500ms' } },
    });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h.close();
    await dns.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes senders whose domain has an MX, or an A or AAAA record as its implicit MX', async () => {
    const c = await from('192.0.2.50');
    for (const sender of ['a@mx.example', 'a@a-only.example', 'a@v6-only.example', 'a@[192.0.2.9]', '']) {
      expect((await mailFrom(c, sender)).code, sender).toBe(250);
    }
  });

  it('defers a domain that does not exist or has no address (450 4.1.8), refuses a null MX (550 5.7.27)', async () => {
    const before = await counter(h.metrics, 'rejectedTotal', { reason: 'sender_domain' });
    const c = await from('192.0.2.51');
    const gone = await mailFrom(c, 'someone@gone.example');
    expect([gone.code, gone.enhanced, gone.text]).toEqual([450, '4.1.8', '<someone@gone.example>: Sender address rejected: Domain not found']);
    expect((await mailFrom(c, 'x@nothing.example')).code).toBe(450);
    const nullMx = await mailFrom(c, 'noreply@nullmx.example');
    expect([nullMx.code, nullMx.enhanced]).toEqual([550, '5.7.27']);
    expect(nullMx.text).toContain('Domain nullmx.example does not accept mail (null MX)');
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'sender_domain' })).toBe(before + 3);
  });

  it('defers with 451 4.4.3 when the lookup fails, never a 5xx', async () => {
    const r = await mailFrom(await from('192.0.2.52'), 'a@broken.example');
    expect([r.code, r.enhanced]).toEqual([451, '4.4.3']);
  });

  it('does not check relay.networks or authenticated clients, and asks once per domain', async () => {
    const asked = dns.queries.length;
    expect((await mailFrom(await from('10.0.0.7'), 'a@gone2.example')).code).toBe(250);
    expect((await mailFrom(await from('192.0.2.53', { user: 'roamer', pass: 'pw-roamer' }), 'a@gone2.example')).code).toBe(250);
    expect(dns.queries.length).toBe(asked);
    const c = await from('192.0.2.54');
    expect((await mailFrom(c, 'a@mx.example')).code).toBe(250);
    expect((await mailFrom(c, 'b@MX.example')).code).toBe(250);
    expect(dns.queries.filter((q) => q.name === 'mx.example')).toHaveLength(1);
  });
});
