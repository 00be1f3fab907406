/**
 * MX delivery end to end over loopback: a real DNS server says where mail goes, real receiving
 * SMTP servers (on 127.0.0.1, 127.0.0.2, … sharing one port, as delivery.port is one port) are
 * scripted to refuse, greet with 4xx/5xx, drop or accept. Proves host order and fail-over.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDnsServer, type DnsServer, type DnsZone } from '../helpers/dns-server.js';
import { destinationView } from '../../src/delivery/deliverer.js';
import { hostsFor, makeDeliverer, outbound, receiversPerTest, testConfig } from './harness.js';

let dns: DnsServer;
const { receiversOn } = receiversPerTest();

beforeAll(async () => {
  dns = await startDnsServer();
});
afterAll(async () => {
  await dns.close();
});

function world(zone: DnsZone, port: number, random?: () => number, delivery: Record<string, unknown> = {}) {
  dns.setZone(zone);
  const config = testConfig({ delivery: { port, dns: { servers: [dns.address], timeout: '2s' }, timeouts: { connect: '3s', greeting: '3s', command: '3s', data: '3s' }, ...delivery } });
  return makeDeliverer(config, random ? { random } : {});
}

describe('MX delivery and host fail-over', () => {
  it('delivers to the preferred MX, and skips a host that refuses the connection', async () => {
    const [rx] = await receiversOn({});
    const deliverer = world({
      'dest.test': { mx: [{ preference: 20, exchange: 'mx2.dest.test' }, { preference: 10, exchange: 'mx1.dest.test' }] },
      'mx1.dest.test': { a: ['127.0.0.3'] }, // nothing listens there: connection refused
      'mx2.dest.test': { a: ['127.0.0.1'] },
    }, rx!.port);
    const dest = await hostsFor(deliverer, 'dest.test');
    const [result] = await deliverer.deliver(dest, [outbound({ to: ['u@dest.test'] })]);
    expect(result!.recipients).toEqual([expect.objectContaining({ address: 'u@dest.test', outcome: 'delivered', remoteHost: `mx2.dest.test[127.0.0.1]:${rx!.port}` })]);
    expect(result!.hosts.map((h) => h.host)).toEqual([`mx1.dest.test[127.0.0.3]:${rx!.port}`, `mx2.dest.test[127.0.0.1]:${rx!.port}`]);
    expect(result!.hosts[0]!.reply).toMatchObject({ enhanced: '4.4.1', message: expect.stringMatching(/Connection refused/) });
    expect(rx!.accepted()).toHaveLength(1);
  });

  it('moves on to the next MX when the first greets with 4xx', async () => {
    const [good, busy] = await receiversOn({}, { script: { greeting: '421 4.3.2 Too busy, try later' } });
    const deliverer = world({
      'dest.test': { mx: [{ preference: 10, exchange: 'busy.dest.test' }, { preference: 20, exchange: 'good.dest.test' }] },
      'busy.dest.test': { a: ['127.0.0.2'] },
      'good.dest.test': { a: ['127.0.0.1'] },
    }, good!.port);
    const [result] = await deliverer.deliver(await hostsFor(deliverer, 'dest.test'), [outbound({ to: ['u@dest.test'] })]);
    expect(result!.recipients[0]).toMatchObject({ outcome: 'delivered' });
    expect(result!.hosts[0]).toMatchObject({ host: expect.stringContaining('busy.dest.test'), reply: { code: 421, enhanced: '4.3.2' } });
    expect(busy!.acceptedConnections).toBe(1);
    expect(busy!.transactions).toHaveLength(0);
    expect(good!.accepted()).toHaveLength(1);
  });

  it('moves on after a 5xx greeting too, and defers (never bounces) when every host refuses to talk', async () => {
    const [a, b] = await receiversOn({ script: { greeting: '554 5.3.2 No SMTP service here' } }, { script: { greeting: '554 5.7.1 Go away' } });
    const deliverer = world({
      'dest.test': { mx: [{ preference: 10, exchange: 'a.dest.test' }, { preference: 20, exchange: 'b.dest.test' }] },
      'a.dest.test': { a: ['127.0.0.1'] },
      'b.dest.test': { a: ['127.0.0.2'] },
    }, a!.port);
    const [result] = await deliverer.deliver(await hostsFor(deliverer, 'dest.test'), [outbound({ to: ['u@dest.test', 'v@dest.test'] })]);
    expect(result!.hosts).toHaveLength(2);
    expect(result!.recipients.map((r) => r.outcome)).toEqual(['deferred', 'deferred']);
    expect(result!.recipients[0]!.reply.code).toBeGreaterThanOrEqual(400);
    expect(result!.recipients[0]!.reply.code).toBeLessThan(500);
    expect(result!.recipients[0]!.reply.message).toMatch(/554 5\.7\.1 Go away/);
    expect(a!.acceptedConnections + b!.acceptedConnections).toBe(2);
  });

  it('moves on when a host answers MAIL FROM with 4xx or drops the connection mid-envelope', async () => {
    const [good, tempfail, dropper] = await receiversOn({}, { script: { mailFrom: '451 4.3.0 Temporary local problem' } }, { script: { rcpt: () => 'drop' } });
    const deliverer = world({
      'dest.test': { mx: [{ preference: 10, exchange: 'drop.dest.test' }, { preference: 20, exchange: 'temp.dest.test' }, { preference: 30, exchange: 'good.dest.test' }] },
      'good.dest.test': { a: ['127.0.0.1'] },
      'temp.dest.test': { a: ['127.0.0.2'] },
      'drop.dest.test': { a: ['127.0.0.3'] },
    }, good!.port);
    const results = await deliverer.deliver(await hostsFor(deliverer, 'dest.test'), [outbound({ to: ['u@dest.test'] }), outbound({ to: ['v@dest.test'] })]);
    for (const r of results) expect(r.recipients).toEqual([expect.objectContaining({ outcome: 'delivered' })]);
    expect(results[0]!.hosts.map((h) => h.reply?.code)).toEqual([421, 451, 250]);
    expect(results[0]!.hosts[0]!.reply).toMatchObject({ enhanced: '4.4.2', message: expect.stringMatching(/lost connection/) });
    expect(tempfail!.transactions).toHaveLength(0);
    expect(dropper!.completed()).toHaveLength(0);
    // Both messages went over one connection to the good host.
    expect(good!.accepted()).toHaveLength(2);
    expect(good!.acceptedConnections).toBe(1);
  });

  it('moves on when a host refuses both EHLO and HELO', async () => {
    const [good, rude] = await receiversOn({}, { script: { ehlo: '554 5.7.1 You are not welcome' } });
    const deliverer = world({
      'dest.test': { mx: [{ preference: 10, exchange: 'rude.dest.test' }, { preference: 20, exchange: 'good.dest.test' }] },
      'rude.dest.test': { a: ['127.0.0.2'] },
      'good.dest.test': { a: ['127.0.0.1'] },
    }, good!.port);
    const [result] = await deliverer.deliver(await hostsFor(deliverer, 'dest.test'), [outbound({ to: ['u@dest.test'] })]);
    expect(result!.recipients[0]!.outcome).toBe('delivered');
    expect(result!.hosts[0]!.reply).toMatchObject({ code: 554, enhanced: '5.7.1' });
    expect(rude!.connections[0]!.commands.map((c) => c.split(' ')[0])).toEqual(['EHLO', 'HELO']);
  });

  it('fails every recipient on a 5xx to MAIL FROM, without trying other hosts', async () => {
    const [rx, other] = await receiversOn({ script: { mailFrom: '553 5.7.1 Sender rejected' } }, {});
    const deliverer = world({
      'dest.test': { mx: [{ preference: 10, exchange: 'a.dest.test' }, { preference: 20, exchange: 'b.dest.test' }] },
      'a.dest.test': { a: ['127.0.0.1'] },
      'b.dest.test': { a: ['127.0.0.2'] },
    }, rx!.port);
    const [result] = await deliverer.deliver(await hostsFor(deliverer, 'dest.test'), [outbound({ to: ['u@dest.test', 'v@dest.test'] })]);
    expect(result!.recipients.map((r) => [r.outcome, r.reply.code, r.reply.enhanced])).toEqual([['failed', 553, '5.7.1'], ['failed', 553, '5.7.1']]);
    expect(other!.acceptedConnections).toBe(0);
  });

  it('picks among equal-preference MX hosts with the injected randomness', async () => {
    const [one, two] = await receiversOn({}, {});
    const zone: DnsZone = {
      'dest.test': { mx: [{ preference: 10, exchange: 'one.dest.test' }, { preference: 10, exchange: 'two.dest.test' }] },
      'one.dest.test': { a: ['127.0.0.1'] },
      'two.dest.test': { a: ['127.0.0.2'] },
    };
    // Fisher–Yates over [one, two]: random() = 0 swaps them, random() ≈ 1 keeps them.
    const swap = world(zone, one!.port, () => 0);
    await swap.deliver(await hostsFor(swap, 'dest.test'), [outbound({ to: ['u@dest.test'] })]);
    expect([one!.accepted().length, two!.accepted().length]).toEqual([0, 1]);
    const keep = world(zone, one!.port, () => 0.999);
    await keep.deliver(await hostsFor(keep, 'dest.test'), [outbound({ to: ['u@dest.test'] })]);
    expect([one!.accepted().length, two!.accepted().length]).toEqual([1, 1]);
  });

  it('delivers to the domain itself when it has no MX (implicit MX)', async () => {
    const [rx] = await receiversOn({});
    const deliverer = world({ 'bare.test': { a: ['127.0.0.1'] } }, rx!.port);
    const dest = await hostsFor(deliverer, 'bare.test');
    expect(dest.via).toBe('implicit-mx');
    const [result] = await deliverer.deliver(dest, [outbound({ to: ['u@bare.test'] })]);
    expect(result!.recipients[0]).toMatchObject({ outcome: 'delivered', remoteHost: `bare.test[127.0.0.1]:${rx!.port}` });
    expect(rx!.accepted()[0]!.rcptTo.map((r) => r.address)).toEqual(['u@bare.test']);
  });

  it('defers everything with the last host\'s reply when no host can be reached', async () => {
    const [rx] = await receiversOn({});
    const port = rx!.port;
    await rx!.close(); // closing again after the test is harmless
    const deliverer = world({ 'dest.test': { mx: [{ preference: 10, exchange: 'mx.dest.test' }] }, 'mx.dest.test': { a: ['127.0.0.1'] } }, port);
    const results = await deliverer.deliver(await hostsFor(deliverer, 'dest.test'), [outbound({ to: ['u@dest.test'] }), outbound({ to: ['v@dest.test', 'w@dest.test'] })]);
    for (const r of results) {
      expect(r.aborted).toBe(false);
      for (const rcpt of r.recipients) expect(rcpt).toMatchObject({ outcome: 'deferred', reply: { code: 421, enhanced: '4.4.1' } });
      expect(r.hosts).toHaveLength(1);
    }
    expect(results[1]!.recipients).toHaveLength(2);
  });
});

describe('delivery.fallbackRelay (Postfix\'s smtp_fallback_relay)', () => {
  // The MX (127.0.0.1) and the relay (127.0.0.2, by name through DNS) share the port.
  const zone: DnsZone = {
    'dest.test': { mx: [{ preference: 10, exchange: 'mx.dest.test' }] },
    'mx.dest.test': { a: ['127.0.0.1'] },
    'relay.test': { a: ['127.0.0.2'] },
  };

  it('takes the mail when no MX host can be used, after them', async () => {
    const [mx, relay] = await receiversOn({ script: { greeting: '421 4.3.2 Down for maintenance' } }, {});
    const deliverer = world(zone, mx!.port, undefined, { fallbackRelay: ['relay.test'] });
    const dest = await hostsFor(deliverer, 'dest.test');
    // Where its mail goes, as the API shows it: the MX, then the relay.
    expect(destinationView(dest, testConfig({ delivery: { port: mx!.port, fallbackRelay: ['relay.test'] } })).fallbackRelay).toEqual([{ host: 'relay.test', port: mx!.port }]);
    const [result] = await deliverer.deliver(dest, [outbound({ to: ['u@dest.test', 'v@dest.test'] })]);
    expect(result!.recipients.map((r) => [r.outcome, r.remoteHost])).toEqual([
      ['delivered', `relay.test[127.0.0.2]:${mx!.port}`], ['delivered', `relay.test[127.0.0.2]:${mx!.port}`],
    ]);
    expect(result!.hosts.map((h) => h.host)).toEqual([`mx.dest.test[127.0.0.1]:${mx!.port}`, `relay.test[127.0.0.2]:${mx!.port}`]);
    expect(result!.unreachable).toBeUndefined();
    expect(relay!.accepted()[0]!.rcptTo.map((r) => r.address)).toEqual(['u@dest.test', 'v@dest.test']);
  });

  it('is not used while an MX host takes the mail, nor for what an MX host decided (a 4xx to RCPT)', async () => {
    const [mx, relay] = await receiversOn({ script: { rcpt: { 'grey@dest.test': '450 4.2.0 Greylisted, try again later' } } }, {});
    const deliverer = world(zone, mx!.port, undefined, { fallbackRelay: ['relay.test'] });
    const [result] = await deliverer.deliver(await hostsFor(deliverer, 'dest.test'), [outbound({ to: ['u@dest.test', 'grey@dest.test'] })]);
    expect(result!.recipients.map((r) => r.outcome)).toEqual(['delivered', 'deferred']);
    expect(relay!.acceptedConnections).toBe(0);
  });

  it('is not used for a route, nor for a domain whose mail must reach its own hosts over verified TLS', async () => {
    const [mx, relay] = await receiversOn({ script: { greeting: '421 4.3.2 Down for maintenance' } }, {});
    const routed = world(zone, mx!.port, undefined, { fallbackRelay: ['relay.test'], routes: { 'dest.test': `127.0.0.1:${mx!.port}` } });
    const routedDest = await hostsFor(routed, 'dest.test');
    expect(destinationView(routedDest, testConfig({ delivery: { fallbackRelay: ['relay.test'] } })).fallbackRelay).toBeUndefined();
    const [viaRoute] = await routed.deliver(routedDest, [outbound({ to: ['u@dest.test'] })]);
    expect(viaRoute!.recipients[0]!.outcome).toBe('deferred');
    const strict = world(zone, mx!.port, undefined, { fallbackRelay: ['relay.test'], tls: { opportunistic: true, verify: false, policy: { 'dest.test': 'encrypt' } } });
    const [encrypted] = await strict.deliver(await hostsFor(strict, 'dest.test'), [outbound({ to: ['u@dest.test'] })]);
    expect(encrypted!.recipients[0]!.outcome).toBe('deferred');
    expect(encrypted!.hosts).toHaveLength(1);
    expect(relay!.acceptedConnections).toBe(0);
  });

});
