/**
 * auth.senders (Postfix's smtpd_sender_login_maps with reject_authenticated_sender_login_mismatch):
 * the file format, and the real ingress over loopback refusing an authenticated user's MAIL FROM
 * of an address it does not own with 553 5.7.1, while unauthenticated clients and the null sender
 * are not concerned.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SenderOwners } from '../../src/ingress/senders.js';
import type { SmtpClient } from '../helpers/smtp-client.js';
import { counter, greetedClient, startIngress, writeUsersFile, type Harness } from './harness.js';

describe('the sender owners table', () => {
  const owners = SenderOwners.parse([
    '# who may send as whom',
    'alice@example.org   alice',
    'Support@Example.org alice, bob',
    '@shared.example     bob carol',
    'noreply@shared.example  carol',
    '@bücher.example dora',
  ].join('\n'), 'senders');

  it('gives each user its own addresses, the full address first and then the domain', () => {
    expect(owners.mayUse('alice', 'alice@example.org')).toBe(true);
    expect(owners.mayUse('alice', 'ALICE@example.ORG')).toBe(true);
    expect(owners.mayUse('bob', 'support@example.org')).toBe(true);
    expect(owners.mayUse('alice', 'support@example.org')).toBe(true);
    expect(owners.mayUse('bob', 'alice@example.org')).toBe(false);
    expect(owners.mayUse('alice', 'other@example.org')).toBe(false);
    expect(owners.mayUse('bob', 'anything@shared.example')).toBe(true);
    // An address of its own overrides the domain's entry.
    expect(owners.mayUse('bob', 'noreply@shared.example')).toBe(false);
    expect(owners.mayUse('carol', 'noreply@shared.example')).toBe(true);
    expect(owners.mayUse('dora', 'd@xn--bcher-kva.example')).toBe(true);
    // User names are exact (they are login names).
    expect(owners.mayUse('Alice', 'alice@example.org')).toBe(false);
    expect(owners.mayUse('mallory', 'alice@example.org')).toBe(false);
    expect(owners.mayUse('mallory', '')).toBe(true);
  });

  it('names the file and line of a malformed entry', () => {
    expect(() => SenderOwners.parse('alice@example.org alice\nbob@example.org\n', '/etc/senders')).toThrow('/etc/senders:2:');
    expect(() => SenderOwners.parse('alice alice', 'f')).toThrow('f:1:');
    expect(() => SenderOwners.parse('alice@ alice', 'f')).toThrow('f:1:');
  });
});

describe('ingress with auth.senders', () => {
  let h: Harness;
  let dir: string;
  const clients: SmtpClient[] = [];
  const session = (user?: string) => greetedClient(h.port, { track: clients, ...(user ? { auth: { user, pass: `secret-${user}` } } : {}) });
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-senders-'));
    const users = writeUsersFile(dir, { alice: 'secret-alice', bob: 'secret-bob' });
    const senders = join(dir, 'senders');
    writeFileSync(senders, 'alice@example.org alice\n@team.example alice,bob\n');
    h = await startIngress({ auth: { users, senders, allowInsecure: true } });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('lets an authenticated user send only from addresses it owns', async () => {
    const before = await counter(h.metrics, 'rejectedTotal', { reason: 'sender_login' });
    const bob = await session('bob');
    const refused = await bob.command('MAIL FROM:<alice@example.org>');
    expect([refused.code, refused.enhanced]).toEqual([553, '5.7.1']);
    expect(refused.text).toContain('not owned by user bob');
    expect((await bob.command('MAIL FROM:<bob@team.example>')).code).toBe(250);
    expect((await bob.command('RSET')).code).toBe(250);
    expect((await bob.command('MAIL FROM:<>')).code).toBe(250);

    const alice = await session('alice');
    const r = await alice.sendMail('alice@example.org', ['friend@elsewhere.example'], 'Subject: mine\r\n\r\nhello');
    expect(r.code).toBe(250);
    expect((await h.queue.get(r.text.split(' ').pop()!))!.client.authUser).toBe('alice');
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'sender_login' })).toBe(before + 1);
  });

  it('leaves clients that did not authenticate to relay control', async () => {
    const trusted = await session();
    expect((await trusted.command('MAIL FROM:<alice@example.org>')).code).toBe(250);
  });
});
