/**
 * A listener behind a load balancer (`proxyProtocol`): the PROXY protocol v1 header from a
 * trusted balancer names the client, and that client address is what relay control, the
 * per-client connection limit, the Received: header and the stored mail see. Over loopback with
 * raw sockets playing the balancer.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SmtpClient } from '../helpers/smtp-client.js';
import { startIngress, type Harness } from './harness.js';

/** Connects as the balancer would: the PROXY line first, then SMTP. */
async function viaProxy(port: number, client: string): Promise<SmtpClient> {
  const c = await SmtpClient.connect({ port });
  c.write(client.includes(':') ? `PROXY TCP6 ${client} ::1 40000 25\r\n` : `PROXY TCP4 ${client} 127.0.0.1 40000 25\r\n`);
  return c;
}

/**
 * A PROXY protocol v2 header (HAProxy's send-proxy-v2, an AWS NLB): TCP over IPv4 or IPv6 from
 * `source`, LOCAL for the balancer's own health check, and the odd field overridable to break it.
 */
function proxyV2(o: { source?: string; local?: boolean; version?: number; transport?: number; tlv?: Buffer } = {}): Buffer {
  const sig = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
  const tlv = o.tlv ?? Buffer.alloc(0);
  let family = 0;
  let addresses = Buffer.alloc(0);
  if (o.source && net.isIPv4(o.source)) {
    family = 0x10;
    addresses = Buffer.alloc(12);
    o.source.split('.').forEach((b, i) => addresses.writeUInt8(Number(b), i));
    [127, 0, 0, 1].forEach((b, i) => addresses.writeUInt8(b, 4 + i));
    addresses.writeUInt16BE(40000, 8);
    addresses.writeUInt16BE(25, 10);
  } else if (o.source) {
    family = 0x20;
    addresses = Buffer.alloc(36);
    const full = o.source.replace('::', `:${'0:'.repeat(9 - o.source.split(':').length)}`).replace(/^:|:$/g, '');
    full.split(':').forEach((g, i) => addresses.writeUInt16BE(parseInt(g || '0', 16), 2 * i));
    addresses.writeUInt16BE(1, 30); // destination ::1
    addresses.writeUInt16BE(40000, 32);
    addresses.writeUInt16BE(25, 34);
  }
  const head = Buffer.alloc(4);
  head.writeUInt8(((o.version ?? 2) << 4) | (o.local ? 0 : 1), 0);
  head.writeUInt8(family | (o.transport ?? 1), 1);
  head.writeUInt16BE(addresses.length + tlv.length, 2);
  return Buffer.concat([sig, head, addresses, tlv]);
}

/** Everything the server sends until it closes the connection. */
async function sendAndCollect(port: number, data: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const s = net.connect({ host: '127.0.0.1', port }, () => s.write(data));
    s.setEncoding('utf8');
    s.on('data', (d: string) => { text += d; });
    s.on('error', reject);
    s.on('close', () => resolve(text));
    setTimeout(() => { s.destroy(); reject(new Error(`still open; got ${JSON.stringify(text)}`)); }, 5000).unref();
  });
}

describe('a listener with proxyProtocol (the balancer on loopback, which relay.networks trusts)', () => {
  let h: Harness;
  const clients: SmtpClient[] = [];
  const track = (c: SmtpClient) => (clients.push(c), c);
  beforeAll(async () => {
    h = await startIngress({
      smtp: { listen: [{ address: '127.0.0.1:0', proxyProtocol: ['127.0.0.0/8'] }], maxConnectionsPerClient: 1 },
      relay: { networks: ['127.0.0.0/8', '10.0.0.0/8'], domains: ['local.example'] },
    });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h.close();
  });

  it('judges relaying by the client the header names, not by the balancer', async () => {
    const outside = track(await viaProxy(h.port, '192.0.2.7'));
    expect((await outside.read()).code).toBe(220);
    expect((await outside.ehlo()).code).toBe(250);
    expect((await outside.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    // The balancer's own address is trusted; the client behind it is not: no open relay.
    const denied = await outside.command('RCPT TO:<x@elsewhere.example>');
    expect([denied.code, denied.enhanced]).toEqual([554, '5.7.1']);
    expect((await outside.command('RCPT TO:<x@local.example>')).code).toBe(250);

    const inside = track(await viaProxy(h.port, '10.1.2.3'));
    expect((await inside.read()).code).toBe(220);
    expect((await inside.ehlo('client.internal')).code).toBe(250);
    const r = await inside.sendMail('a@example.org', ['x@elsewhere.example'], 'Subject: via the balancer\r\n\r\nhello');
    expect(r.code).toBe(250);
    const id = r.text.split(' ').pop()!;
    expect((await h.queue.get(id))!.client.address).toBe('10.1.2.3');
    const received = (await h.body(id)).split('\r\n')[0]!;
    expect(received).toMatch(/^Received: from client\.internal \(.*\[10\.1\.2\.3\]\)/);
  });

  it('counts connections per client behind the balancer', async () => {
    const first = track(await viaProxy(h.port, '198.51.100.1'));
    expect((await first.read()).code).toBe(220);
    const second = track(await viaProxy(h.port, '198.51.100.1'));
    const refused = await second.read();
    expect([refused.code, refused.enhanced]).toEqual([421, '4.7.0']);
    // Another client through the same balancer is a client of its own.
    const other = track(await viaProxy(h.port, '198.51.100.2'));
    expect((await other.read()).code).toBe(220);
  });

  it('closes a connection from the balancer that does not start with a PROXY header', async () => {
    const text = await sendAndCollect(h.port, 'EHLO sneaky.example\r\n');
    // No greeting: the session never started.
    expect(text).toBe('* BAD Invalid PROXY header\r\n');
  });

  it('refuses a header whose source is not an IP address', async () => {
    const text = await sendAndCollect(h.port, 'PROXY TCP4 evil\r\nhost 127.0.0.1 1 25\r\n');
    expect(text).toBe('* BAD Invalid PROXY header\r\n');
  });

  it('reads a version 2 (binary) header: TCP over IPv4, arriving in pieces, with a TLV', async () => {
    const c = track(await SmtpClient.connect({ port: h.port }));
    // A TLV (type 0x04, NOOP) the reader skips; the header arrives in three writes, the last with EHLO.
    const header = proxyV2({ source: '192.0.2.44', tlv: Buffer.from([0x04, 0x00, 0x02, 0xaa, 0xbb]) });
    c.write(header.subarray(0, 5));
    await new Promise((r) => setTimeout(r, 50));
    c.write(header.subarray(5, 20));
    await new Promise((r) => setTimeout(r, 50));
    c.write(header.subarray(20));
    expect((await c.read()).code).toBe(220);
    expect((await c.ehlo('v2.client')).code).toBe(250);
    expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    const denied = await c.command('RCPT TO:<x@elsewhere.example>');
    expect([denied.code, denied.enhanced]).toEqual([554, '5.7.1']);
    expect((await c.command('RSET')).code).toBe(250);
    const r = await c.sendMail('a@example.org', ['x@local.example'], 'Subject: v2\r\n\r\nhello');
    expect(r.code).toBe(250);
    const id = r.text.split(' ').pop()!;
    expect((await h.queue.get(id))!.client.address).toBe('192.0.2.44');
    expect((await h.body(id)).split('\r\n')[0]).toMatch(/^Received: from v2\.client \(.*\[192\.0\.2\.44\]\)/);
  });

  it('reads a version 2 header for TCP over IPv6, and LOCAL (a health check, SMTP in the same write) as the balancer itself', async () => {
    const six = track(await SmtpClient.connect({ port: h.port }));
    six.write(proxyV2({ source: '2001:db8::7' }));
    expect((await six.read()).code).toBe(220);
    expect((await six.ehlo()).code).toBe(250);
    expect((await six.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    expect((await six.command('RCPT TO:<x@elsewhere.example>')).code).toBe(554);
    // maxConnectionsPerClient is 1: a second connection of that client is refused, by its address.
    const again = track(await SmtpClient.connect({ port: h.port }));
    again.write(proxyV2({ source: '2001:db8::7' }));
    expect((await again.read()).code).toBe(421);

    const local = track(await SmtpClient.connect({ port: h.port }));
    local.write(Buffer.concat([proxyV2({ local: true }), Buffer.from('EHLO balancer\r\n')]));
    expect((await local.read()).code).toBe(220);
    expect((await local.read()).code).toBe(250);
    expect((await local.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    // The balancer (loopback) is in relay.networks.
    expect((await local.command('RCPT TO:<x@elsewhere.example>')).code).toBe(250);
  });

  it('refuses a version 2 header of another version or for UDP, and closes', async () => {
    expect(await sendAndCollect(h.port, proxyV2({ source: '192.0.2.1', version: 3 }))).toBe('* BAD Invalid PROXY header\r\n');
    expect(await sendAndCollect(h.port, proxyV2({ source: '192.0.2.1', transport: 2 }))).toBe('* BAD Invalid PROXY header\r\n');
  });
});

describe('a listener without proxyProtocol', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startIngress({ relay: { networks: ['10.0.0.0/8'], domains: ['local.example'] } });
  });
  afterAll(async () => {
    await h.close();
  });

  it('takes a PROXY line from a client as an unknown command, and the client stays who it is', async () => {
    const c = await SmtpClient.connect({ port: h.port });
    try {
      expect((await c.read()).code).toBe(220);
      expect((await c.command('PROXY TCP4 10.1.2.3 127.0.0.1 40000 25')).code).toBe(500);
      expect((await c.ehlo()).code).toBe(250);
      expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
      expect((await c.command('RCPT TO:<x@elsewhere.example>')).code).toBe(554);
    } finally {
      await c.quit();
    }
  });
});

describe('an implicit-TLS listener with proxyProtocol', () => {
  let h: Harness;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-proxy-tls-'));
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
      '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' });
    h = await startIngress({
      smtp: { listen: [{ address: '127.0.0.1:0', implicitTls: true, proxyProtocol: ['127.0.0.1'] }], tls: { cert, key } },
      relay: { networks: ['10.0.0.0/8'], domains: [] },
    });
  });
  afterAll(async () => {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads the PROXY header in clear before the TLS handshake (HAProxy send-proxy in front of port 465)', async () => {
    const raw = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: h.port }, () => resolve(s));
      s.once('error', reject);
    });
    raw.write('PROXY TCP4 10.9.8.7 127.0.0.1 40000 465\r\n');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' }, () => resolve(s));
      s.once('error', reject);
    });
    secure.setEncoding('utf8');
    const lines: string[] = [];
    let buffered = '';
    const next = () => new Promise<string>((resolve) => {
      const take = () => {
        const i = buffered.indexOf('\r\n');
        if (i < 0) return false;
        lines.push(buffered.slice(0, i));
        buffered = buffered.slice(i + 2);
        resolve(lines[lines.length - 1]!);
        return true;
      };
      if (take()) return;
      const on = (d: string) => { buffered += d; if (take()) secure.off('data', on); };
      secure.on('data', on);
    });
    expect(await next()).toMatch(/^220 /);
    secure.write('HELO client.internal\r\n');
    expect(await next()).toMatch(/^250 /);
    secure.write('MAIL FROM:<a@example.org>\r\n');
    expect(await next()).toMatch(/^250 /);
    // 10.9.8.7 is in relay.networks; the balancer (loopback) is not: the header decided.
    secure.write('RCPT TO:<x@elsewhere.example>\r\n');
    expect(await next()).toMatch(/^250 /);
    secure.destroy();
  });
});

describe('clients counted by network (smtp.clientPrefixLength), their addresses named by the balancer', () => {
  let h: Harness;
  const clients: SmtpClient[] = [];
  const track = (c: SmtpClient) => (clients.push(c), c);
  beforeAll(async () => {
    h = await startIngress({
      smtp: {
        listen: [{ address: '127.0.0.1:0', proxyProtocol: ['127.0.0.0/8'] }],
        maxConnectionsPerClient: 1,
        clientPrefixLength: { ipv4: 24, ipv6: 64 },
        rateLimits: { perClient: '1/h', perUser: null },
      },
      relay: { networks: ['127.0.0.0/8'], domains: ['local.example'] },
    });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h.close();
  });

  it('counts the connections of one IPv6 /64 (one IPv4 /24) together, and of another apart', async () => {
    const first = track(await viaProxy(h.port, '2001:db8:1:2::10'));
    expect((await first.read()).code).toBe(220);
    // Another address of the same /64: the same client.
    const same = await track(await viaProxy(h.port, '2001:db8:1:2:ffff:ffff:ffff:fffe')).read();
    expect([same.code, same.enhanced]).toEqual([421, '4.7.0']);
    expect((await track(await viaProxy(h.port, '2001:db8:1:3::10')).read()).code).toBe(220);
    expect((await track(await viaProxy(h.port, '192.0.2.7')).read()).code).toBe(220);
    expect((await track(await viaProxy(h.port, '192.0.2.200')).read()).code).toBe(421);
    expect((await track(await viaProxy(h.port, '192.0.3.7')).read()).code).toBe(220);
  });

  it('rate-limits the network as one client, naming it', async () => {
    const a = track(await viaProxy(h.port, '2001:db8:5:6::1'));
    expect((await a.read()).code).toBe(220);
    expect((await a.ehlo()).code).toBe(250);
    expect((await a.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    await a.quit();
    const b = track(await viaProxy(h.port, '2001:db8:5:6:1234::2'));
    expect((await b.read()).code).toBe(220);
    expect((await b.ehlo()).code).toBe(250);
    const over = await b.command('MAIL FROM:<b@example.org>');
    expect([over.code, over.enhanced]).toEqual([450, '4.7.1']);
    expect(over.text).toContain('too much mail from [2001:db8:5:6::/64]');
  });
});
