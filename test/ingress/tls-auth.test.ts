/**
 * STARTTLS and implicit TLS with a self-signed certificate made by openssl in the test, AUTH on
 * a submission listener (users file with bcrypt hashes, reloaded on config change), relay by
 * authenticated users, and relay control for IPv6 (::1) and IPv4-mapped clients.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SmtpClient, makeMessage } from '../helpers/smtp-client.js';
import { counter, startIngress, type Harness } from './harness.js';

let certDir: string;
let keyFile: string;
let certFile: string;
let usersFile: string;

beforeAll(() => {
  certDir = mkdtempSync(join(tmpdir(), 'spoolhouse-tls-'));
  keyFile = join(certDir, 'key.pem');
  certFile = join(certDir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile,
    '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost'], { stdio: 'ignore' });
  usersFile = join(certDir, 'users');
  writeFileSync(usersFile, [
    '# test users',
    `alice:${bcrypt.hashSync('wonderland', 4)}`,
    `php:${bcrypt.hashSync('legacy', 4).replace(/^\$2b\$/, '$2y$')}`,
    '',
  ].join('\n'));
});

afterAll(() => {
  rmSync(certDir, { recursive: true, force: true });
});

function b64(text: string): string {
  return Buffer.from(text).toString('base64');
}

describe('STARTTLS, implicit TLS and AUTH', () => {
  let h: Harness;
  let mta: number;
  let submission: number;
  let smtps: number;

  beforeAll(async () => {
    h = await startIngress({
      smtp: {
        listen: ['127.0.0.1:0', { address: '127.0.0.1:0', submission: true }, { address: '127.0.0.1:0', submission: true, implicitTls: true }],
        tls: { cert: certFile, key: keyFile },
      },
      relay: { networks: ['10.0.0.0/8'], domains: ['local.example'] },
      auth: { users: usersFile, allowInsecure: false },
    });
    [mta, submission, smtps] = h.listeners.map((l) => l.port) as [number, number, number];
    expect(h.listeners.map((l) => [l.submission, l.implicitTls])).toEqual([[false, false], [true, false], [true, true]]);
  });
  afterAll(async () => {
    await h.close();
  });

  it('offers STARTTLS but not AUTH before TLS, and refuses AUTH there with 538 5.7.11', async () => {
    const c = await SmtpClient.connect({ port: submission });
    await c.read();
    const ehlo = await c.ehlo();
    expect(ehlo.lines).toContain('STARTTLS');
    expect(ehlo.lines.some((l) => l.startsWith('AUTH'))).toBe(false);
    const auth = await c.command(`AUTH PLAIN ${b64('\0alice\0wonderland')}`);
    expect([auth.code, auth.enhanced]).toEqual([538, '5.7.11']);
    await c.quit();
  });

  it('after STARTTLS offers AUTH PLAIN LOGIN, and the submission port needs AUTH before MAIL (530 5.7.0)', async () => {
    const c = await SmtpClient.connect({ port: submission });
    await c.read();
    await c.ehlo();
    const ehlo = await c.starttls({ ca: readFileSync(certFile) });
    expect(c.isTls).toBe(true);
    expect(ehlo.lines).toContain('AUTH PLAIN LOGIN');
    expect(ehlo.lines).not.toContain('STARTTLS');
    // Neither offered nor available once TLS is on (RFC 3207 §4.2): the session's disabled
    // commands changed at STARTTLS, and what the connection knew about them went with the change.
    const again = await c.command('STARTTLS');
    expect([again.code, again.text]).toEqual([500, 'Error: command not recognized']);
    const mail = await c.command('MAIL FROM:<alice@example.org>');
    expect([mail.code, mail.enhanced]).toEqual([530, '5.7.0']);
    const bad = await c.command(`AUTH PLAIN ${b64('\0alice\0wrong')}`);
    expect([bad.code, bad.enhanced]).toEqual([535, '5.7.8']);
    const login = await c.command('AUTH LOGIN');
    expect(login.code).toBe(334);
    expect((await c.command(b64('alice'))).code).toBe(334);
    const ok = await c.command(b64('wonderland'));
    expect([ok.code, ok.enhanced]).toEqual([235, '2.7.0']);
    // Authenticated: relaying to any domain is allowed.
    const r = await c.sendMail('alice@example.org', ['someone@outside.example'], makeMessage());
    expect(r.code).toBe(250);
    const m = (await h.queue.get(r.text.split(' ').pop()!))!;
    expect(m.client).toMatchObject({ authUser: 'alice', tls: true });
    const body = await h.body(m.id);
    expect(body).toMatch(/\(using TLSv1\.[23] with cipher [\w-]+\)/);
    expect(body).toContain('with ESMTPSA id');
    await c.quit();
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'auth' })).toBeGreaterThanOrEqual(2);
  });

  it('nodemailer submits with STARTTLS and AUTH; a $2y$ hash works too', async () => {
    const transport = nodemailer.createTransport({
      host: '127.0.0.1', port: submission, secure: false, requireTLS: true,
      tls: { ca: readFileSync(certFile), servername: 'localhost' },
      auth: { user: 'php', pass: 'legacy' },
    });
    const info = await transport.sendMail({ from: 'php@example.org', to: 'x@outside.example', subject: 'submitted', text: 'hi' });
    transport.close();
    expect(info.response).toMatch(/^250 2\.0\.0 Ok: queued as/);
    const m = (await h.queue.get(info.response.split(' ').pop()!))!;
    expect(m.client.authUser).toBe('php');
  });

  it('nodemailer submits over implicit TLS (SMTPS)', async () => {
    const transport = nodemailer.createTransport({
      host: '127.0.0.1', port: smtps, secure: true, tls: { ca: readFileSync(certFile), servername: 'localhost' }, auth: { user: 'alice', pass: 'wonderland' },
    });
    const info = await transport.sendMail({ from: 'alice@example.org', to: 'x@outside.example', text: 'hi' });
    transport.close();
    expect(info.response).toMatch(/^250 /);
  });

  it('refuses a wrong password from nodemailer and relay without AUTH on the MTA port', async () => {
    const transport = nodemailer.createTransport({
      host: '127.0.0.1', port: submission, secure: false, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user: 'alice', pass: 'nope' },
    });
    await expect(transport.sendMail({ from: 'a@example.org', to: 'x@outside.example', text: 'x' })).rejects.toMatchObject({ responseCode: 535 });
    transport.close();
    const c = await SmtpClient.connect({ port: mta });
    await c.read();
    await c.ehlo();
    await c.starttls();
    expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
    const r = await c.command('RCPT TO:<x@outside.example>');
    expect([r.code, r.enhanced]).toEqual([554, '5.7.1']);
    await c.quit();
  });

  it('closes the session with 421 4.7.0 at the auth.maxFailures-th failed AUTH (3 by default)', async () => {
    const c = await SmtpClient.connect({ port: submission });
    await c.read();
    await c.ehlo();
    await c.starttls({ ca: readFileSync(certFile) });
    for (let i = 0; i < 2; i++) {
      const bad = await c.command(`AUTH PLAIN ${b64('\0alice\0guess' + i)}`);
      expect([bad.code, bad.enhanced]).toEqual([535, '5.7.8']);
    }
    const last = await c.command(`AUTH PLAIN ${b64('\0alice\0guess2')}`);
    expect([last.code, last.enhanced]).toEqual([421, '4.7.0']);
    await c.waitClosed(5_000);
    expect(c.closed).toBe(true);
    // A fresh session starts counting again, and the right password still works there.
    const d = await SmtpClient.connect({ port: submission });
    await d.read();
    await d.ehlo();
    await d.starttls({ ca: readFileSync(certFile) });
    expect((await d.command(`AUTH PLAIN ${b64('\0alice\0wrong')}`)).code).toBe(535);
    expect((await d.command(`AUTH PLAIN ${b64('\0alice\0wonderland')}`)).code).toBe(235);
    await d.quit();
  });

  it('re-reads the users file when the configuration changes', async () => {
    const second = join(certDir, 'users2');
    writeFileSync(second, `bob:${bcrypt.hashSync('builder', 4)}\n`);
    h.update({ auth: { users: second, allowInsecure: true } });
    try {
      // allowInsecure: AUTH is offered and works without TLS (new sessions see the new config).
      const c = await SmtpClient.connect({ port: submission });
      await c.read();
      const ehlo = await c.ehlo();
      expect(ehlo.lines).toContain('AUTH PLAIN LOGIN');
      expect((await c.command(`AUTH PLAIN ${b64('\0alice\0wonderland')}`)).code).toBe(535);
      expect((await c.command(`AUTH PLAIN ${b64('\0bob\0builder')}`)).code).toBe(235);
      await c.quit();
    } finally {
      h.update({ auth: { users: usersFile, allowInsecure: false } });
    }
  });

  // Last in this block: it leaves 127.0.0.1's bucket of failures empty.
  it('refuses every AUTH of a client over auth.failuresPerClient with 454 4.7.0, across its sessions, without checking it', async () => {
    const session = async () => {
      const c = await SmtpClient.connect({ port: submission });
      await c.read();
      await c.ehlo();
      await c.starttls({ ca: readFileSync(certFile) });
      return c;
    };
    h.update({ auth: { failuresPerClient: '3/h' } });
    try {
      const before = await counter(h.metrics, 'rejectedTotal', { reason: 'auth_rate' });
      const a = await session();
      for (let i = 0; i < 2; i++) expect((await a.command(`AUTH PLAIN ${b64(`\0alice\0guess${i}`)}`)).code).toBe(535);
      await a.quit();
      const b = await session();
      expect((await b.command(`AUTH PLAIN ${b64('\0alice\0guess2')}`)).code).toBe(535);
      // The right password now: refused all the same, so guessing teaches nothing.
      const refused = await b.command(`AUTH PLAIN ${b64('\0alice\0wonderland')}`);
      expect([refused.code, refused.enhanced]).toEqual([454, '4.7.0']);
      expect(refused.text).toContain('Too many failed authentication attempts from [127.0.0.1]');
      expect(await counter(h.metrics, 'rejectedTotal', { reason: 'auth_rate' })).toBe(before + 1);
      await b.quit();
      // relay.networks are never limited.
      h.update({ relay: { networks: ['10.0.0.0/8', '127.0.0.0/8'] } });
      const c = await session();
      expect((await c.command(`AUTH PLAIN ${b64('\0alice\0wonderland')}`)).code).toBe(235);
      await c.quit();
    } finally {
      h.update({ auth: { failuresPerClient: '30/h' }, relay: { networks: ['10.0.0.0/8'] } });
    }
  });
});

describe('relay control over IPv6 and IPv4-mapped addresses', () => {
  it('trusts ::1 only when relay.networks lists it', async () => {
    const trusted = await startIngress({ smtp: { listen: ['[::1]:0'] }, relay: { networks: ['::1/128'], domains: [] } });
    const untrusted = await startIngress({ smtp: { listen: ['[::1]:0'] }, relay: { networks: ['127.0.0.0/8'], domains: ['local.example'] } });
    try {
      for (const [h, expected] of [[trusted, 250], [untrusted, 554]] as const) {
        const c = await SmtpClient.connect({ host: '::1', port: h.port });
        expect((await c.read()).code).toBe(220);
        await c.ehlo();
        expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
        expect((await c.command('RCPT TO:<x@outside.example>')).code).toBe(expected);
        await c.quit();
      }
      const c = await SmtpClient.connect({ host: '::1', port: trusted.port });
      await c.read();
      await c.ehlo();
      const r = await c.sendMail('a@example.org', ['x@outside.example'], makeMessage());
      const m = (await trusted.queue.get(r.text.split(' ').pop()!))!;
      expect(m.client.address).toBe('::1');
      expect(await trusted.body(m.id)).toContain('[IPv6:::1]');
      await c.quit();
    } finally {
      await trusted.close();
      await untrusted.close();
    }
  });

  it('matches IPv4-mapped clients of a dual-stack listener against IPv4 networks', async () => {
    const h = await startIngress({ smtp: { listen: ['[::]:0'] }, relay: { networks: ['127.0.0.1/32'], domains: [] } });
    const other = await startIngress({ smtp: { listen: ['[::]:0'] }, relay: { networks: ['192.0.2.0/24'], domains: [] } });
    try {
      const c = await SmtpClient.connect({ host: '127.0.0.1', port: h.port });
      await c.read();
      await c.ehlo();
      expect((await c.command('MAIL FROM:<a@example.org>')).code).toBe(250);
      expect((await c.command('RCPT TO:<x@outside.example>')).code).toBe(250);
      await c.quit();
      const d = await SmtpClient.connect({ host: '127.0.0.1', port: other.port });
      await d.read();
      await d.ehlo();
      expect((await d.command('MAIL FROM:<a@example.org>')).code).toBe(250);
      expect((await d.command('RCPT TO:<x@outside.example>')).code).toBe(554);
      await d.quit();
    } finally {
      await h.close();
      await other.close();
    }
  });
});
