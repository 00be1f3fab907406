/**
 * smtp.dkim: outgoing mail (from relay.networks or authenticated) is stored with a DKIM-Signature
 * that an independent verifier (mailauth, with the key published through its resolver) accepts;
 * a subdomain's mail is signed by its parent's key; other domains and inbound mail are not signed;
 * a key that is not RSA is refused by name.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DkimSigner } from '../../src/ingress/dkim.js';
import { SmtpClient } from '../helpers/smtp-client.js';
import { startIngress, type Harness } from './harness.js';

let dir: string;
let keyFile: string;
let publicKey: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'spoolhouse-dkim-'));
  const pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
  keyFile = join(dir, 'example.org.pem');
  writeFileSync(keyFile, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  publicKey = pair.publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** mailauth's DKIM check, with sel._domainkey.example.org published as our key. */
async function verify(message: string): Promise<{ domain: string; selector: string; result: string }[]> {
  const resolver = async (name: string, type: string) => {
    if (name === 'sel._domainkey.example.org' && type === 'TXT') return [[`v=DKIM1; k=rsa; p=${publicKey}`]];
    throw Object.assign(new Error(`queryTxt ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
  };
  const r = await dkimVerify(Buffer.from(message), { resolver } as never);
  return r.results.map((x) => ({ domain: String(x.signingDomain), selector: String(x.selector), result: String(x.status.result) }));
}

const message = (from: string, subject: string) =>
  `From: Sender <${from}>\r\nTo: friend@elsewhere.example\r\nSubject: ${subject}\r\nDate: Fri, 04 Dec 2026 06:00:00 +0000\r\n\r\nHello,\r\n\r\n.leading dot and trailing spaces   \r\nbye\r\n`;

async function send(h: Harness, from: string, to: string, subject: string): Promise<string> {
  const c = await SmtpClient.connect({ port: h.port });
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.ehlo()).code).toBe(250);
    // Dot-stuffed for the wire: the stored (and signed) line starts with one dot.
    const r = await c.sendMail(from, [to], message(from, subject).replace(/\r\n\./g, '\r\n..'));
    expect(r.code).toBe(250);
    return h.body(r.text.split(' ').pop()!);
  } finally {
    await c.quit();
  }
}

describe('DKIM signing of outgoing mail', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startIngress({ smtp: { dkim: [{ domain: 'example.org', selector: 'sel', privateKey: keyFile }] } });
  });
  afterAll(async () => {
    await h.close();
  });

  it('signs mail from a trusted client in the key\'s domain, and the signature verifies', async () => {
    const stored = await send(h, 'alice@example.org', 'friend@elsewhere.example', 'signed');
    expect(stored.startsWith('DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;')).toBe(true);
    expect(stored).toMatch(/\r\nMessage-ID: </);
    expect(await verify(stored)).toEqual([{ domain: 'example.org', selector: 'sel', result: 'pass' }]);
    // Changed after signing, it no longer verifies: the check is real.
    expect((await verify(stored.replace('Subject: signed', 'Subject: altered')))[0]!.result).toBe('fail');
  });

  it('signs a subdomain\'s mail with its parent\'s key, and leaves other domains unsigned', async () => {
    const sub = await send(h, 'news@news.example.org', 'friend@elsewhere.example', 'from a subdomain');
    expect(await verify(sub)).toEqual([{ domain: 'example.org', selector: 'sel', result: 'pass' }]);
    const other = await send(h, 'bob@other.example', 'friend@elsewhere.example', 'not ours');
    expect(other).not.toContain('DKIM-Signature');
  });
});

describe('DKIM and inbound mail', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startIngress({
      smtp: { dkim: [{ domain: 'example.org', selector: 'sel', privateKey: keyFile }] },
      relay: { networks: ['10.0.0.0/8'], domains: ['local.example'] },
    });
  });
  afterAll(async () => {
    await h.close();
  });

  it('never signs mail from an untrusted, unauthenticated client, whatever its From: says', async () => {
    const stored = await send(h, 'ceo@example.org', 'someone@local.example', 'spoofed');
    expect(stored).not.toContain('DKIM-Signature');
  });
});

describe('DKIM keys', () => {
  it('refuses a key that is not RSA, naming the domain and file', () => {
    const ed = join(dir, 'ed.pem');
    writeFileSync(ed, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    expect(() => DkimSigner.load([{ domain: 'example.org', selector: 's', privateKey: ed }])).toThrow(`example.org: ${ed}: an RSA private key is needed, not ed25519`);
    expect(() => DkimSigner.load([{ domain: 'example.org', selector: 's', privateKey: join(dir, 'missing.pem') }])).toThrow(/example\.org: .*missing\.pem: ENOENT/);
  });
});
