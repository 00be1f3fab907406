/**
 * Smarthost delivery against a real receiver: AUTH over STARTTLS, the tls modes
 * (none/starttls/required/implicit), refused credentials, and no password in any log line.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { hostsFor, makeDeliverer, outbound, receiversPerTest, testConfig } from './harness.js';

const SECRET = 'pa55-w0rd-never-logged';
const { receiver } = receiversPerTest();

/** A deliverer with `smarthost` and a logger that keeps every line (trace: the SMTP transcript too). */
async function viaSmarthost(smarthost: Record<string, unknown>, delivery: Record<string, unknown> = {}) {
  const lines: string[] = [];
  const sink = new Writable({ write(chunk, _enc, cb) { lines.push(String(chunk)); cb(); } });
  const deliverer = makeDeliverer(testConfig({ delivery: { smarthost, ...delivery } }), { logger: pino({ level: 'trace' }, sink) });
  const dest = await hostsFor(deliverer, 'anywhere.example');
  expect(dest.via).toBe('smarthost');
  return { deliverer, dest, lines };
}

describe('smarthost', () => {
  it('relays everything with AUTH after STARTTLS (tls "starttls"), logging no password', async () => {
    const rx = await receiver({ starttls: true, auth: { user: 'relay-user', pass: SECRET } });
    const { deliverer, dest, lines } = await viaSmarthost({ host: `127.0.0.1:${rx.port}`, tls: 'starttls', auth: { user: 'relay-user', pass: SECRET } });
    const results = await deliverer.deliver(dest, [outbound({ to: ['x@one.example', 'y@two.example'] }), outbound({ to: ['z@three.example'] })]);
    expect(results.flatMap((r) => r.recipients.map((x) => x.outcome))).toEqual(['delivered', 'delivered', 'delivered']);
    const c = rx.connections[0]!;
    expect(c.secure).toBe(true);
    expect(c.authUser).toBe('relay-user');
    expect(rx.acceptedConnections).toBe(1);
    expect(c.commands.indexOf('STARTTLS')).toBeLessThan(c.commands.findIndex((x) => x.startsWith('AUTH')));
    expect(lines.length).toBeGreaterThan(0);
    const log = lines.join('');
    expect(log).toContain('MAIL FROM:<a@sender.test>'); // the transcript is there…
    expect(log).not.toContain(SECRET); // …but no password, plain or base64 (AUTH PLAIN/LOGIN)
    expect(log).not.toContain(Buffer.from(`\u0000relay-user\u0000${SECRET}`).toString('base64'));
    expect(log).not.toContain(Buffer.from(SECRET).toString('base64'));
    const perMail = lines.map((l) => JSON.parse(l) as { mailId?: string; msg: string }).filter((l) => l.msg === 'delivery transaction done');
    expect(perMail.map((l) => l.mailId)).toEqual(results.map((r) => r.id)); // lines about a mail carry its id
  });

  it('defers with 4.7.0 when the smarthost refuses the credentials (and logs no password)', async () => {
    const rx = await receiver({ starttls: true, auth: { user: 'relay-user', pass: 'the-right-one' } });
    const { deliverer, dest, lines } = await viaSmarthost({ host: `127.0.0.1:${rx.port}`, tls: 'starttls', auth: { user: 'relay-user', pass: SECRET } });
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['x@one.example'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { code: 421, enhanced: '4.7.0', message: expect.stringMatching(/535/) } });
    expect(rx.transactions).toHaveLength(0);
    expect(lines.join('')).not.toContain(SECRET);
  });

  it('defers with 4.7.4 when tls "starttls" is asked for and the smarthost does not offer it', async () => {
    const rx = await receiver({ starttls: false });
    const { deliverer, dest } = await viaSmarthost({ host: `127.0.0.1:${rx.port}`, tls: 'starttls' });
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['x@one.example'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.7.4' } });
    expect(rx.transactions).toHaveLength(0);
  });

  it('never sends credentials in plaintext unless tls is "none"', async () => {
    const rx = await receiver({ starttls: false, auth: { user: 'u', pass: SECRET } });
    const refused = await viaSmarthost({ host: `127.0.0.1:${rx.port}`, auth: { user: 'u', pass: SECRET } }, { tls: { opportunistic: true, verify: false } });
    const [r1] = await refused.deliverer.deliver(refused.dest, [outbound({ to: ['x@one.example'] })]);
    expect(r1!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.7.0', message: expect.stringMatching(/without TLS/) } });
    expect(rx.connections[0]!.commands.some((c) => c.startsWith('AUTH'))).toBe(false);

    const plain = await viaSmarthost({ host: `127.0.0.1:${rx.port}`, tls: 'none', auth: { user: 'u', pass: SECRET } });
    const [r2] = await plain.deliverer.deliver(plain.dest, [outbound({ to: ['x@one.example'] })]);
    expect(r2!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.connections[1]!.authUser).toBe('u');
    expect(rx.connections[1]!.secure).toBe(false);
  });

  it('tls "none" never uses STARTTLS even when offered', async () => {
    const rx = await receiver({ starttls: true });
    const { deliverer, dest } = await viaSmarthost({ host: `127.0.0.1:${rx.port}`, tls: 'none' });
    await deliverer.deliver(dest, [outbound({ to: ['x@one.example'] })]);
    expect(rx.accepted()[0]!.secure).toBe(false);
  });

  it('tls "required" insists on a verified certificate (a self-signed one defers)', async () => {
    const rx = await receiver({ starttls: true });
    const { deliverer, dest } = await viaSmarthost({ host: `127.0.0.1:${rx.port}`, tls: 'required' });
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['x@one.example'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.7.5' } });
    expect(rx.transactions).toHaveLength(0);
  });

  it('tls "implicit" speaks TLS from the first byte', async () => {
    const rx = await receiver({ implicitTls: true, auth: { user: 'u', pass: SECRET } });
    const { deliverer, dest } = await viaSmarthost({ host: `127.0.0.1:${rx.port}`, tls: 'implicit', auth: { user: 'u', pass: SECRET } });
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['x@one.example'] })]);
    expect(r!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.accepted()[0]!.secure).toBe(true);
    expect(rx.connections[0]!.authUser).toBe('u');
  });

  it('resolves a smarthost given by name', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await viaSmarthost({ host: `localhost:${rx.port}` });
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['x@one.example'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'delivered', remoteHost: expect.stringMatching(/^localhost\[/) });
  });
});

describe('delivery.bindAddress', () => {
  it('connects from the configured local address of the remote\'s family, and defers clearly when it is not this host\'s', async () => {
    const rx = await receiver();
    const bound = makeDeliverer(testConfig({ delivery: { smarthost: { host: `127.0.0.1:${rx.port}`, tls: 'none' }, bindAddress: { ipv4: '127.0.0.2', ipv6: null } } }));
    const [ok] = await bound.deliver(await hostsFor(bound, 'anywhere.example'), [outbound({ to: ['x@one.example'] })]);
    expect(ok!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.connections.map((c) => c.remoteAddress.replace(/^::ffff:/, ''))).toEqual(['127.0.0.2']);

    // An address this host does not have (TEST-NET-1): the connection cannot be made; deferred.
    const foreign = makeDeliverer(testConfig({ delivery: { smarthost: { host: `127.0.0.1:${rx.port}`, tls: 'none' }, bindAddress: { ipv4: '192.0.2.1', ipv6: null } } }));
    const [r] = await foreign.deliver(await hostsFor(foreign, 'anywhere.example'), [outbound({ to: ['y@one.example'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { code: 421, message: expect.stringMatching(/EADDRNOTAVAIL/) } });
    expect(rx.connections).toHaveLength(1);
  });
});
