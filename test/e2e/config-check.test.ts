/**
 * `main.js --check` (Postfix's `postfix check`, `nginx -t`): the built server checks its
 * configuration and every file it names (the TLS pair, auth.users, relay.recipients,
 * auth.senders) the way a start would, says what it read, and exits without opening anything;
 * and a start with a broken table stops with the same message instead of running without it.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mainScript } from '../helpers/server-process.js';

let dir: string;
const path = (name: string) => join(dir, name);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'spoolhouse-check-'));
  for (const name of ['a', 'b']) {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', path(`${name}.key`),
      '-out', path(`${name}.crt`), '-days', '1', '-subj', `/CN=${name}.localhost`], { stdio: 'ignore' });
  }
  writeFileSync(path('users'), `alice:${bcrypt.hashSync('pw', 4)}\nbob:${bcrypt.hashSync('pw', 4)}\n`);
  writeFileSync(path('recipients'), 'alice@local.example\n@team.local.example\n# comment\npostmaster@local.example\n');
  writeFileSync(path('senders'), 'alice@local.example alice\n');
  writeFileSync(path('broken'), 'alice@local.example\nno-at-sign\n');
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function run(overlay: Record<string, unknown>, ...args: string[]) {
  const config = path('config.json');
  writeFileSync(config, JSON.stringify({
    smtp: { listen: ['127.0.0.1:0'] }, spool: { dir: path('spool') }, admin: { listen: '127.0.0.1:0' }, log: { level: 'silent' },
    relay: { domains: ['local.example', 'team.local.example'] },
    ...overlay,
  }));
  return spawnSync(process.execPath, [mainScript, '--config', config, ...args], { encoding: 'utf8', timeout: 30_000 });
}

describe('main.js --check', () => {
  it('says what it read, with the number of entries of each table, and exits 0 without opening the spool', () => {
    const r = run({
      smtp: { listen: ['127.0.0.1:0'], tls: { cert: path('a.crt'), key: path('a.key') } },
      auth: { users: path('users'), senders: path('senders') },
      relay: { domains: ['local.example', 'team.local.example'], recipients: path('recipients') },
    }, '--check');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('configuration OK');
    expect(r.stdout).toContain(`${path('users')} (auth.users, 2 entries)`);
    expect(r.stdout).toContain(`${path('recipients')} (relay.recipients, 3 entries)`);
    expect(r.stdout).toContain(`${path('senders')} (auth.senders, 1 entries)`);
    expect(r.stdout).toContain(`${path('a.crt')}, ${path('a.key')} (smtp.tls)`);
    expect(existsSync(path('spool'))).toBe(false);
  });

  it('lists every broken file, each under its key, and exits 78', () => {
    const r = run({
      smtp: { listen: ['127.0.0.1:0'], tls: { cert: path('a.crt'), key: path('b.key') } },
      auth: { users: path('no-such-users'), senders: path('senders') },
      relay: { domains: ['local.example'], recipients: path('broken') },
    }, '--check');
    expect(r.status).toBe(78);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^spoolhouse: smtp\.tls: .*key values mismatch/);
    expect(lines[1]).toMatch(/^spoolhouse: auth\.users: ENOENT/);
    expect(lines[2]).toBe(`spoolhouse: relay.recipients: ${path('broken')}:2: expected "user@domain" or "@domain", not "no-at-sign"`);
  });

  it('checks delivery.tls.caFile: its certificates counted, or the file and its problem named', () => {
    const ok = run({ delivery: { tls: { caFile: path('a.crt') } } }, '--check');
    expect(ok.status).toBe(0);
    expect(ok.stdout).toContain(`${path('a.crt')} (delivery.tls.caFile, 1 entries)`);
    const noPem = run({ delivery: { tls: { caFile: path('users') } } }, '--check');
    expect(noPem.status).toBe(78);
    expect(noPem.stderr.trim()).toBe(`spoolhouse: delivery.tls.caFile: ${path('users')}: no PEM certificate in it`);
  });

  it('a start with a missing auth.users file stops with the same message', () => {
    const r = run({ auth: { users: path('no-such-users') } });
    expect(r.status).toBe(78);
    expect(r.stderr).toMatch(/^spoolhouse: auth\.users: ENOENT/);
  });
});
