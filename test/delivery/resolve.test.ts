/**
 * Destination resolution against a real DNS server on loopback (UDP/TCP, dns-packet): MX order
 * by preference, randomness among equals, implicit MX, null MX, NXDOMAIN, SERVFAIL, timeouts,
 * shared MX keys, routes and smarthost precedence.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Destination } from '../../src/delivery/types.js';
import { NULL_MX, startDnsServer, type DnsServer } from '../helpers/dns-server.js';
import { makeDeliverer, testConfig } from './harness.js';

let dns: DnsServer;

beforeAll(async () => {
  dns = await startDnsServer({
    'pref.test': { mx: [{ preference: 20, exchange: 'mx2.pref.test' }, { preference: 10, exchange: 'mx1.pref.test' }, { preference: 30, exchange: 'mx3.pref.test' }] },
    'mx1.pref.test': { a: ['127.0.0.11'] },
    'mx2.pref.test': { a: ['127.0.0.12'], aaaa: ['::1'] },
    'mx3.pref.test': { a: ['127.0.0.13'] },
    'equal.test': { mx: [{ preference: 10, exchange: 'a.equal.test' }, { preference: 10, exchange: 'b.equal.test' }, { preference: 10, exchange: 'c.equal.test' }] },
    'a.equal.test': { a: ['127.0.0.21'] },
    'b.equal.test': { a: ['127.0.0.22'] },
    'c.equal.test': { a: ['127.0.0.23'] },
    'implicit.test': { a: ['127.0.0.31'] },
    'nullmx.test': { mx: NULL_MX },
    'servfail.test': 'servfail',
    'mxservfail.test': { mx: 'servfail', a: ['127.0.0.1'] },
    'slow.test': 'drop',
    'noaddr.test': { mx: [{ preference: 10, exchange: 'gone.noaddr.test' }] },
    'halfbroken.test': { mx: [{ preference: 10, exchange: 'gone.noaddr.test' }, { preference: 20, exchange: 'mx1.pref.test' }] },
    'lameexchanger.test': { mx: [{ preference: 10, exchange: 'sf.lame.test' }] },
    'sf.lame.test': 'servfail',
    'nodata.test': {},
    'shared-a.test': { mx: [{ preference: 10, exchange: 'mx1.pref.test' }, { preference: 20, exchange: 'mx2.pref.test' }] },
    'shared-b.test': { mx: [{ preference: 5, exchange: 'MX2.pref.test' }, { preference: 50, exchange: 'mx1.pref.test' }] },
  });
});

afterAll(async () => {
  await dns.close();
});

function dnsConfig(extra: Record<string, unknown> = {}, timeout = '2s') {
  return testConfig({ delivery: { dns: { servers: [dns.address], timeout }, port: 2525, ...extra } });
}

function hostsOf(d: Destination): { host: string; port: number; preference?: number; address?: string }[] {
  if (d.kind !== 'hosts') throw new Error(`expected hosts, got ${JSON.stringify(d)}`);
  return d.hosts;
}

describe('MX resolution (RFC 5321 §5.1)', () => {
  it('orders exchangers by preference and resolves their addresses, A before AAAA', async () => {
    const d = await makeDeliverer(dnsConfig()).resolve('pref.test');
    expect(d).toMatchObject({ kind: 'hosts', via: 'mx', domain: 'pref.test' });
    expect(hostsOf(d).map((h) => [h.host, h.address, h.preference, h.port])).toEqual([
      ['mx1.pref.test', '127.0.0.11', 10, 2525],
      ['mx2.pref.test', '127.0.0.12', 20, 2525],
      ['mx2.pref.test', '::1', 20, 2525],
      ['mx3.pref.test', '127.0.0.13', 30, 2525],
    ]);
  });

  it('orders equal preferences by the injected randomness', async () => {
    const first = await makeDeliverer(dnsConfig(), { random: () => 0 }).resolve('equal.test');
    const last = await makeDeliverer(dnsConfig(), { random: () => 0.999 }).resolve('equal.test');
    const a = hostsOf(first).map((h) => h.host);
    const b = hostsOf(last).map((h) => h.host);
    expect(new Set(a)).toEqual(new Set(['a.equal.test', 'b.equal.test', 'c.equal.test']));
    expect(new Set(b)).toEqual(new Set(a));
    // Fisher–Yates with random()=0 rotates, with ~1 keeps the order: the injected source decides.
    expect(a).toEqual(['b.equal.test', 'c.equal.test', 'a.equal.test']);
    expect(b).toEqual(['a.equal.test', 'b.equal.test', 'c.equal.test']);
    // Same set of hosts whatever the order: same key (one pool).
    expect(first.key).toBe(last.key);
  });

  it('gives domains served by the same MX hosts the same key', async () => {
    const deliverer = makeDeliverer(dnsConfig());
    const a = await deliverer.resolve('shared-a.test');
    const b = await deliverer.resolve('Shared-B.test.');
    expect(a.key).toBe('mx1.pref.test,mx2.pref.test');
    expect(b.key).toBe(a.key);
    expect(b.domain).toBe('shared-b.test');
    expect((await deliverer.resolve('pref.test')).key).not.toBe(a.key);
  });

  it('falls back to the domain\'s own address when there is no MX (implicit MX)', async () => {
    const d = await makeDeliverer(dnsConfig()).resolve('implicit.test');
    expect(d).toMatchObject({ kind: 'hosts', via: 'implicit-mx', key: 'implicit.test' });
    expect(hostsOf(d)).toEqual([{ host: 'implicit.test', port: 2525, preference: 0, address: '127.0.0.31' }]);
  });

  it('fails permanently with 5.1.10 on a null MX (RFC 7505)', async () => {
    const d = await makeDeliverer(dnsConfig()).resolve('nullmx.test');
    expect(d).toMatchObject({ kind: 'failure', permanent: true, reply: { code: 556, enhanced: '5.1.10', message: 'Recipient address has null MX' } });
  });

  it('fails permanently with 5.1.2 on NXDOMAIN', async () => {
    const d = await makeDeliverer(dnsConfig()).resolve('no-such-domain.test');
    expect(d).toMatchObject({ kind: 'failure', permanent: true, reply: { code: 550, enhanced: '5.1.2' } });
  });

  it('fails permanently when neither MX nor address records exist', async () => {
    const d = await makeDeliverer(dnsConfig()).resolve('nodata.test');
    expect(d).toMatchObject({ kind: 'failure', permanent: true, reply: { enhanced: '5.4.4' } });
  });

  it('defers with 4.4.3 on SERVFAIL (of the domain, or of its MX query alone)', async () => {
    for (const domain of ['servfail.test', 'mxservfail.test']) {
      const d = await makeDeliverer(dnsConfig()).resolve(domain);
      expect(d, domain).toMatchObject({ kind: 'failure', permanent: false, reply: { code: 451, enhanced: '4.4.3' } });
    }
  });

  it('defers with 4.4.3 when the DNS server does not answer (delivery.dns.timeout)', async () => {
    const d = await makeDeliverer(dnsConfig({}, '200ms')).resolve('slow.test');
    expect(d).toMatchObject({ kind: 'failure', permanent: false, reply: { code: 451, enhanced: '4.4.3' } });
    expect((d as { reply: { message: string } }).reply.message).toMatch(/timed out/);
  });

  it('skips exchangers without addresses, and fails only when none is left', async () => {
    const half = await makeDeliverer(dnsConfig()).resolve('halfbroken.test');
    expect(hostsOf(half).map((h) => h.host)).toEqual(['mx1.pref.test']);
    const none = await makeDeliverer(dnsConfig()).resolve('noaddr.test');
    expect(none).toMatchObject({ kind: 'failure', permanent: true });
    // An exchanger whose lookup fails temporarily makes the whole thing temporary.
    const lame = await makeDeliverer(dnsConfig()).resolve('lameexchanger.test');
    expect(lame).toMatchObject({ kind: 'failure', permanent: false, reply: { enhanced: '4.4.3' } });
  });
});

describe('mail loops', () => {
  it('uses only exchangers more preferred than ourselves, and fails with 5.4.6 when none is left', async () => {
    // We listen on 127.0.0.12:2525, which is mx2.pref.test on delivery.port 2525.
    const ours = (listen: string[]) => makeDeliverer(testConfig({ smtp: { listen }, delivery: { dns: { servers: [dns.address], timeout: '2s' }, port: 2525 } }));
    const d = await ours(['127.0.0.12:2525']).resolve('pref.test');
    expect(hostsOf(d).map((h) => h.host)).toEqual(['mx1.pref.test']);
    const loop = await ours(['127.0.0.11:2525']).resolve('pref.test');
    expect(loop).toMatchObject({ kind: 'failure', permanent: true, reply: { code: 554, enhanced: '5.4.6' } });
    // A wildcard listener covers every local address; another port is not us.
    expect(await ours(['0.0.0.0:2525']).resolve('implicit.test')).toMatchObject({ kind: 'failure', reply: { enhanced: '5.4.6' } });
    expect(hostsOf(await ours(['0.0.0.0:2526']).resolve('implicit.test'))).toHaveLength(1);
  });
});

describe('routes and smarthost', () => {
  it('uses a route (transport map) before DNS, with its own port', async () => {
    const before = dns.queries.length;
    const d = await makeDeliverer(dnsConfig({ routes: { 'pref.test': '127.0.0.5:2626' } })).resolve('PREF.test');
    expect(d).toEqual({ kind: 'hosts', domain: 'pref.test', key: '127.0.0.5:2626', via: 'route', hosts: [{ host: '127.0.0.5', port: 2626, address: '127.0.0.5' }] });
    expect(dns.queries.length).toBe(before);
    // Other domains still go by DNS.
    expect(await makeDeliverer(dnsConfig({ routes: { 'pref.test': '127.0.0.5:2626' } })).resolve('implicit.test')).toMatchObject({ via: 'implicit-mx' });
  });

  it('sends everything to the smarthost, before routes and DNS', async () => {
    const deliverer = makeDeliverer(dnsConfig({ routes: { 'pref.test': '127.0.0.5:2626' }, smarthost: { host: 'relay.test:587' } }));
    const before = dns.queries.length;
    for (const domain of ['pref.test', 'nullmx.test', 'no-such-domain.test']) {
      const d = await deliverer.resolve(domain);
      expect(d).toMatchObject({ kind: 'hosts', via: 'smarthost', key: 'relay.test:587', hosts: [{ host: 'relay.test', port: 587 }] });
    }
    expect(dns.queries.length).toBe(before);
  });

  it('defaults the smarthost port to 25, or 465 for implicit TLS', async () => {
    expect((await makeDeliverer(dnsConfig({ smarthost: { host: '127.0.0.9' } })).resolve('x.test')).key).toBe('127.0.0.9:25');
    expect((await makeDeliverer(dnsConfig({ smarthost: { host: '127.0.0.9', tls: 'implicit' } })).resolve('x.test')).key).toBe('127.0.0.9:465');
  });
});
