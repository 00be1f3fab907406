/**
 * admin.tls: the API and console over HTTPS only, with certificates made by openssl in the test;
 * new certificate files are served after a reload, a broken one keeps the old; the files are
 * checked as at start (`--check`); the CLI's default URL follows.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkAdminFiles } from '../../src/admin/index.js';
import { urlFromListen } from '../../src/cli/connection.js';
import { OPERATOR, startHarness, type Harness } from './harness.js';

let dir: string;
/** Two certificates for 127.0.0.1 (a renewal), and the files the server is configured with. */
const pairs = { first: { cert: '', key: '' }, second: { cert: '', key: '' } };
const served = { cert: '', key: '' };

function makePair(name: string): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
    '-days', '1', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' });
  return { cert, key };
}

/** One HTTPS GET trusting only `ca`; the status, the JSON body and the certificate the server showed. */
function get(url: string, path: string, ca: string, token: string | null = OPERATOR): Promise<{ status: number; body: any; fingerprint: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(new URL(path, url), { ca: readFileSync(ca), agent: false, headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
      const fingerprint = (res.socket as TLSSocket).getPeerCertificate().fingerprint256;
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString('utf8')), fingerprint }));
    });
    req.on('error', reject);
  });
}

const fingerprintOf = (certFile: string) => new X509Certificate(readFileSync(certFile)).fingerprint256;

describe('admin API over HTTPS (admin.tls)', () => {
  let h: Harness;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-admin-tls-'));
    pairs.first = makePair('first');
    pairs.second = makePair('second');
    served.cert = join(dir, 'served.crt');
    served.key = join(dir, 'served.key');
    copyFileSync(pairs.first.cert, served.cert);
    copyFileSync(pairs.first.key, served.key);
    h = await startHarness({ admin: { listen: '127.0.0.1:0', token: OPERATOR, tls: served } });
  });
  afterAll(async () => {
    await h?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves the API over HTTPS, behind the token as ever, and nothing over plain HTTP', async () => {
    expect(h.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const ok = await get(h.url, '/api/stats', pairs.first.cert);
    expect(ok.status).toBe(200);
    expect(ok.fingerprint).toBe(fingerprintOf(pairs.first.cert));
    const anonymous = await get(h.url, '/api/stats', pairs.first.cert, null);
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.message).toMatch(/token/);
    // A client that does not trust the certificate is refused by its own TLS check.
    await expect(get(h.url, '/api/stats', pairs.second.cert)).rejects.toThrow(/self[- ]signed|unable to verify|certificate/i);
    // Plain HTTP to the same port gets no HTTP answer.
    const plain = await new Promise<string>((resolve) => {
      const req = http.get(h.url.replace('https:', 'http:') + '/health', (res) => resolve(`status ${res.statusCode}`));
      req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    expect(plain).not.toMatch(/^status 2/);
  });

  it('serves renewed certificate files after a reload, and keeps the old one when the new files are broken', async () => {
    copyFileSync(pairs.second.cert, served.cert);
    copyFileSync(pairs.second.key, served.key);
    h.config.reload();
    expect((await get(h.url, '/api/stats', pairs.second.cert)).fingerprint).toBe(fingerprintOf(pairs.second.cert));

    writeFileSync(served.cert, 'not a certificate\n');
    h.config.reload();
    expect(h.logLines.some((l) => l.includes('cannot reload the admin TLS certificate; keeping the old one'))).toBe(true);
    expect((await get(h.url, '/api/stats', pairs.second.cert)).fingerprint).toBe(fingerprintOf(pairs.second.cert));
  });

  it('checks the files as a start would, naming admin.tls', () => {
    const config = h.config.current;
    expect(checkAdminFiles({ ...config, admin: { ...config.admin, tls: pairs.first } })).toEqual([{ key: 'admin.tls', file: `${pairs.first.cert}, ${pairs.first.key}` }]);
    const mismatched = checkAdminFiles({ ...config, admin: { ...config.admin, tls: { cert: pairs.first.cert, key: pairs.second.key } } });
    expect(mismatched).toHaveLength(1);
    expect(mismatched[0]!.key).toBe('admin.tls');
    expect(mismatched[0]!.problem).toMatch(/key values mismatch|does not match|mismatch/i);
    expect(checkAdminFiles({ ...config, admin: { ...config.admin, tls: null } })).toEqual([]);
  });

  it("gives the CLI an https URL when admin.tls is set", () => {
    expect(urlFromListen('0.0.0.0:8025', true)).toBe('https://127.0.0.1:8025');
    expect(urlFromListen('127.0.0.1:8025')).toBe('http://127.0.0.1:8025');
  });
});
