/**
 * The shared test helpers themselves (other stages' tests rely on them): the DNS server answers
 * over TCP as well as UDP and follows table changes; the receiver counts concurrent connections
 * and records commands and transactions.
 */
import net from 'node:net';
import dnsPacket from 'dns-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { startDnsServer, type DnsServer } from '../helpers/dns-server.js';
import { makeDeliverer, outbound, receiversPerTest, routedTo, testConfig } from './harness.js';

let dns: DnsServer | undefined;
afterEach(async () => {
  await dns?.close();
  dns = undefined;
});
const { receiver } = receiversPerTest();

function queryOverTcp(port: number, name: string, type: 'A' | 'MX'): Promise<dnsPacket.Packet> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let buffered = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) {
        socket.destroy();
        resolve(dnsPacket.streamDecode(buffered));
      }
    });
    socket.on('error', reject);
    socket.write(dnsPacket.streamEncode({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }] }));
  });
}

describe('DNS server helper', () => {
  it('answers over TCP too', async () => {
    dns = await startDnsServer({ 'tcp.test': { a: ['127.0.0.9'], mx: [{ preference: 5, exchange: 'mx.tcp.test' }] } });
    const a = await queryOverTcp(dns.port, 'tcp.test', 'A');
    expect(a.answers?.map((x) => (x as { data: unknown }).data)).toEqual(['127.0.0.9']);
    const mx = await queryOverTcp(dns.port, 'TCP.test.', 'MX');
    expect(mx.answers?.map((x) => (x as { data: unknown }).data)).toEqual([{ preference: 5, exchange: 'mx.tcp.test' }]);
    expect(dns.queries.map((q) => [q.name, q.type, q.transport])).toEqual([['tcp.test', 'A', 'tcp'], ['tcp.test', 'MX', 'tcp']]);
  });

  it('follows changes to the table', async () => {
    dns = await startDnsServer({});
    const config = testConfig({ delivery: { dns: { servers: [dns.address], timeout: '2s' } } });
    const deliverer = makeDeliverer(config);
    expect(await deliverer.resolve('later.test')).toMatchObject({ kind: 'failure', permanent: true });
    dns.set('later.test', { a: ['127.0.0.8'] });
    expect(await deliverer.resolve('later.test')).toMatchObject({ kind: 'hosts', hosts: [{ address: '127.0.0.8' }] });
    dns.set('later.test', 'servfail');
    expect(await deliverer.resolve('later.test')).toMatchObject({ kind: 'failure', permanent: false });
    expect(dns.queriesFor('later.test', 'MX').length).toBe(3);
  });
});

describe('receiver helper', () => {
  it('counts concurrent connections and the most seen at once', async () => {
    const rx = await receiver({ script: { greeting: 'stall' } });
    const { deliverer, dest } = await routedTo(rx, { timeouts: { connect: '1s', greeting: '400ms', command: '400ms', data: '1s' } });
    // Three deliveries at once, each stuck waiting for a greeting: three open connections.
    const results = await Promise.all([1, 2, 3].map((i) => deliverer.deliver(dest, [outbound({ to: [`u${i}@dest.test`] })])));
    expect(results.flat().map((r) => r.recipients[0]!.outcome)).toEqual(['deferred', 'deferred', 'deferred']);
    expect(rx.maxConcurrency).toBe(3);
    expect(rx.acceptedConnections).toBe(3);
    await new Promise((r) => setTimeout(r, 100));
    expect(rx.openConnections).toBe(0);
  });

  it('records commands in order and the message bytes of each transaction', async () => {
    const rx = await receiver({ script: { dataEnd: (tx) => (tx.rcptTo.length > 1 ? '452 4.5.3 Too many recipients' : undefined) } });
    const { deliverer, dest } = await routedTo(rx);
    await deliverer.deliver(dest, [outbound({ to: ['a@dest.test', 'b@dest.test'], body: 'Subject: one\r\n\r\n1\r\n' }), outbound({ to: ['c@dest.test'], body: 'Subject: two\r\n\r\n2\r\n' })]);
    expect(rx.transactions.map((t) => [t.complete, t.reply, t.data.toString()])).toEqual([
      [true, '452 4.5.3 Too many recipients', 'Subject: one\r\n\r\n1\r\n'],
      [true, '250 2.0.0 Ok: queued', 'Subject: two\r\n\r\n2\r\n'],
    ]);
    expect(rx.accepted()).toHaveLength(1);
    expect(rx.connections[0]!.commands.map((c) => c.split(/[ :]/)[0])).toEqual(['EHLO', 'MAIL', 'RCPT', 'RCPT', 'DATA', 'MAIL', 'RCPT', 'DATA', 'QUIT']);
  });
});
