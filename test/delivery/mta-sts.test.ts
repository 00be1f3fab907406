/**
 * MTA-STS (RFC 8461) with real parts on loopback: a DNS server publishing `_mta-sts` TXT records
 * and MX hosts, an HTTPS server serving the policy with a certificate of a test CA (trusted
 * through delivery.tls.caFile), and receiving SMTP servers with certificates of that CA. The
 * policy host's port is the one thing moved off 443 (the Deliverer's mtaStsPort).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Deliverer, destinationView } from '../../src/delivery/deliverer.js';
import { mxMatches, parseStsPolicy } from '../../src/delivery/mta-sts.js';
import { silentLogger } from '../../src/logger.js';
import { DnsServer } from '../helpers/dns-server.js';
import { outbound, receiversPerTest, testConfig } from './harness.js';

describe('parseStsPolicy and mxMatches', () => {
  it('reads a policy, and refuses what RFC 8461 does not allow', () => {
    expect(parseStsPolicy('version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n'))
      .toEqual({ mode: 'enforce', mx: ['mx1.example.com', '*.example.net'], maxAgeSeconds: 604800 });
    expect(parseStsPolicy('version: STSv1\nmode: none\nmax_age: 86400\n')).toEqual({ mode: 'none', mx: [], maxAgeSeconds: 86400 });
    expect(parseStsPolicy('version: STSv1\nmode: testing\nmx: a.example\nmax_age: 9999999999\n').maxAgeSeconds).toBe(31_557_600);
    expect(() => parseStsPolicy('version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n')).toThrow(/version/);
    expect(() => parseStsPolicy('version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n')).toThrow(/mode/);
    expect(() => parseStsPolicy('version: STSv1\nmode: enforce\nmax_age: 1\n')).toThrow(/no mx/);
    expect(() => parseStsPolicy('version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n')).toThrow(/max_age/);
    expect(() => parseStsPolicy('<html>not a policy</html>')).toThrow(/key: value/);
  });

  it('matches MX names exactly, or one label under a wildcard', () => {
    expect(mxMatches('MX1.Example.com.', ['mx1.example.com'])).toBe(true);
    expect(mxMatches('a.example.net', ['*.example.net'])).toBe(true);
    expect(mxMatches('a.b.example.net', ['*.example.net'])).toBe(false);
    expect(mxMatches('example.net', ['*.example.net'])).toBe(false);
    expect(mxMatches('evil-example.net', ['*.example.net'])).toBe(false);
  });
});

describe('MX delivery under an MTA-STS policy', () => {
  const rxs = receiversPerTest();
  let dir: string;
  let dns: DnsServer;
  let policyServer: https.Server;
  let policyPort: number;
  let policy = '';
  let policyFetches = 0;
  const pem = (name: string) => readFileSync(join(dir, name), 'utf8');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-sts-'));
    const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
    ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
      '-subj', '/CN=Spoolhouse test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
    const leaf = (name: string, sans: string) => {
      ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
      writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${sans}\n`);
      ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`);
    };
    leaf('good', 'DNS:mta-sts.sts.test,DNS:mx1.sts.test');
    leaf('wrong', 'DNS:somebody-else.test');
    dns = await DnsServer.start({
      'sts.test': { mx: [{ preference: 10, exchange: 'mx1.sts.test' }, { preference: 20, exchange: 'mx2.elsewhere.test' }] },
      'mx1.sts.test': { a: ['127.0.0.1'] },
      'mx2.elsewhere.test': { a: ['127.0.0.2'] },
      '_mta-sts.sts.test': { txt: ['v=STSv1; id=20261204a'] },
      'mta-sts.sts.test': { a: ['127.0.0.1'] },
      'plain.test': { mx: [{ preference: 10, exchange: 'mx2.elsewhere.test' }] },
    });
    policyServer = https.createServer({ key: pem('good.key'), cert: pem('good.pem') }, (req, res) => {
      policyFetches++;
      if (req.url !== '/.well-known/mta-sts.txt' || req.headers.host !== 'mta-sts.sts.test') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end(policy);
    });
    await new Promise<void>((resolve) => policyServer.listen(0, '127.0.0.1', resolve));
    policyPort = (policyServer.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise((resolve) => policyServer?.close(resolve));
    await dns?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const enforce = (mx = 'mx1.sts.test') => `version: STSv1\nmode: enforce\nmx: ${mx}\nmax_age: 86400\n`;

  function deliverer(port: number, o: { caFile?: boolean; now?: () => number; mtaSts?: boolean; spool?: string } = {}): Deliverer {
    const config = testConfig({
      // Each deliverer its own cache file, unless a test shares one on purpose.
      spool: { dir: o.spool ?? mkdtempSync(join(dir, 'spool-')) },
      delivery: {
        port,
        dns: { servers: [dns.address], timeout: '500ms' },
        tls: { opportunistic: true, verify: false, mtaSts: o.mtaSts ?? true, caFile: o.caFile === false ? null : join(dir, 'ca.pem') },
      },
    });
    return new Deliverer({ config: () => config, logger: silentLogger(), mtaStsPort: policyPort, ...(o.now ? { now: o.now } : {}) });
  }

  it('enforce: only the MX hosts the policy names, over verified TLS; the others are never tried', async () => {
    policy = enforce();
    const [good, other] = await rxs.receiversOn({ starttls: true, certificate: { key: pem('good.key'), cert: pem('good.pem') } }, {});
    const d = deliverer(good!.port);
    const dest = await d.resolve('sts.test');
    expect(dest).toMatchObject({ kind: 'hosts', via: 'mx', tlsPolicy: 'verify', mtaSts: true });
    if (dest.kind !== 'hosts') throw new Error('no hosts');
    expect(dest.hosts.map((h) => h.host)).toEqual(['mx1.sts.test']);
    expect(dest.key).toBe('mx1.sts.test,mx2.elsewhere.test mta-sts');
    // As GET /api/destinations/sts.test shows it.
    expect(destinationView(dest)).toEqual({
      domain: 'sts.test', via: 'mx', hosts: [{ host: 'mx1.sts.test', port: good!.port, preference: 10, address: '127.0.0.1' }], tlsPolicy: 'verify', mtaSts: true,
    });
    const [result] = await d.deliver(dest, [outbound({ to: ['bob@sts.test'] })]);
    expect(result!.recipients[0]!.outcome).toBe('delivered');
    expect(good!.connections[0]!.secure).toBe(true);
    expect(other!.acceptedConnections).toBe(0);
    // The policy is cached: a second resolve asks nothing new.
    const fetches = policyFetches;
    await d.resolve('sts.test');
    expect(policyFetches).toBe(fetches);
    await d.close();
  });

  it('enforce: a certificate not valid for the MX name defers with 4.7.5, never a plaintext retry', async () => {
    policy = enforce();
    const [bad] = await rxs.receiversOn({ starttls: true, certificate: { key: pem('wrong.key'), cert: pem('wrong.pem') } });
    const d = deliverer(bad!.port);
    const dest = await d.resolve('sts.test');
    if (dest.kind !== 'hosts') throw new Error('no hosts');
    const [result] = await d.deliver(dest, [outbound({ to: ['bob@sts.test'] })]);
    expect(result!.recipients[0]!.outcome).toBe('deferred');
    expect(result!.recipients[0]!.reply.enhanced).toBe('4.7.5');
    expect(bad!.completed()).toEqual([]);
    await d.close();
  });

  it('enforce: no MX host in the policy is a temporary failure naming the policy; testing and none change nothing', async () => {
    policy = enforce('mx.nowhere.test');
    const d = deliverer(25);
    const none = await d.resolve('sts.test');
    expect(none).toMatchObject({
      kind: 'failure', permanent: false, reply: { code: 451, enhanced: '4.7.5', message: 'MTA-STS policy of sts.test allows no MX host it has (mx: mx.nowhere.test)' },
    });
    expect(destinationView(none)).toMatchObject({ domain: 'sts.test', via: 'none', hosts: [], failure: { permanent: false, reply: { code: 451 } } });
    for (const mode of ['testing', 'none']) {
      policy = `version: STSv1\nmode: ${mode}\nmx: mx.nowhere.test\nmax_age: 86400\n`;
      dns.set('_mta-sts.sts.test', { txt: [`v=STSv1; id=${mode}`] });
      const dest = await deliverer(25).resolve('sts.test');
      expect(dest).toMatchObject({ kind: 'hosts', key: 'mx1.sts.test,mx2.elsewhere.test' });
      expect(dest.kind === 'hosts' && dest.tlsPolicy).toBeFalsy();
    }
    dns.set('_mta-sts.sts.test', { txt: ['v=STSv1; id=20261204a'] });
  });

  it('a domain without a policy, an untrusted policy host, or mtaSts off: delivery as before', async () => {
    policy = enforce();
    const plain = await deliverer(25).resolve('plain.test');
    expect(plain).toMatchObject({ kind: 'hosts', key: 'mx2.elsewhere.test' });
    expect(dns.queriesFor('_mta-sts.plain.test', 'TXT').length).toBeGreaterThan(0);
    // Without the test CA the policy host's certificate does not verify: no policy is taken from it.
    const untrusted = await deliverer(25, { caFile: false }).resolve('sts.test');
    expect(untrusted).toMatchObject({ kind: 'hosts', key: 'mx1.sts.test,mx2.elsewhere.test' });
    const asked = dns.queriesFor('_mta-sts.sts.test', 'TXT').length;
    const off = await deliverer(25, { mtaSts: false }).resolve('sts.test');
    expect(off).toMatchObject({ kind: 'hosts', key: 'mx1.sts.test,mx2.elsewhere.test' });
    expect(dns.queriesFor('_mta-sts.sts.test', 'TXT').length).toBe(asked);
  });

  it('a restart keeps the cached policy (the cache file in spool.dir): a policy host blocked since cannot turn it off', async () => {
    policy = enforce();
    const spool = mkdtempSync(join(dir, 'spool-'));
    const first = deliverer(25, { spool });
    expect(await first.resolve('sts.test')).toMatchObject({ mtaSts: true });
    await first.close();
    expect(JSON.parse(readFileSync(join(spool, 'mta-sts.json'), 'utf8'))['sts.test']).toMatchObject({ id: '20261204a', policy: { mode: 'enforce', mx: ['mx1.sts.test'] } });
    policy = '';
    const fetches = policyFetches;
    const restarted = deliverer(25, { spool });
    const dest = await restarted.resolve('sts.test');
    expect(dest).toMatchObject({ mtaSts: true });
    // The TXT id is asked again at once after a start; unchanged, the saved policy is used without a fetch.
    expect(policyFetches).toBe(fetches);
    // A fresh spool knows nothing: the broken host gives no policy.
    expect(await deliverer(25).resolve('sts.test')).not.toHaveProperty('mtaSts');
  });

  it('a cached policy still applies when the TXT record or the policy host goes away, until it expires; a new id fetches it again', async () => {
    policy = enforce();
    let now = Date.now();
    const d = deliverer(25, { now: () => now });
    expect(await d.resolve('sts.test')).toMatchObject({ mtaSts: true });
    // An attacker (or an outage) removes the TXT record and the policy host, an hour and more later.
    dns.delete('_mta-sts.sts.test');
    policy = '';
    now += 2 * 3_600_000;
    expect(await d.resolve('sts.test')).toMatchObject({ mtaSts: true });
    dns.set('_mta-sts.sts.test', { txt: ['v=STSv1; id=20261204a'] });
    // The policy's max_age (a day) runs out: with the host still broken, no policy is left.
    now += 23 * 3_600_000;
    expect(await d.resolve('sts.test')).not.toHaveProperty('mtaSts');
    // A new id with a new policy is fetched at once.
    policy = enforce('*.sts.test');
    dns.set('_mta-sts.sts.test', { txt: ['v=STSv1; id=20261205b'] });
    const fresh = await d.resolve('sts.test');
    expect(fresh).toMatchObject({ mtaSts: true });
    expect(fresh.kind === 'hosts' && fresh.hosts.map((h) => h.host)).toEqual(['mx1.sts.test']);
  });
});
