/**
 * relay.recipients (Postfix's relay_recipient_maps): the table's file format, the RCPT decision,
 * the real ingress over loopback refusing unlisted recipients of relay.domains with 550 5.1.1
 * (from untrusted and trusted clients alike), reloading the table, and the server process
 * refusing to start on a missing or broken table.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { unlistedRecipientDecision } from '../../src/ingress/policy.js';
import { RecipientTable } from '../../src/ingress/recipients.js';
import type { SmtpClient } from '../helpers/smtp-client.js';
import { mainScript } from '../helpers/server-process.js';
import { counter, greetedClient, startIngress, type Harness } from './harness.js';

describe('the relay recipient table', () => {
  const table = RecipientTable.parse([
    '# relay recipients',
    '',
    'Alice@Local.Example',
    'bob@local.example   OK',
    '  carol@LOCAL.example.\tanything here is ignored',
    '@catchall.example',
    'dora@bücher.example',
  ].join('\n'), 'relay_recipients');

  it('matches listed addresses whatever their case, and whole domains', () => {
    expect(table.size).toBe(5);
    for (const a of ['alice@local.example', 'ALICE@LOCAL.EXAMPLE', 'bob@local.example', 'carol@local.example', 'anyone@catchall.example', 'x@CatchAll.Example', 'dora@xn--bcher-kva.example', 'Dora@bücher.example']) {
      expect(table.has(a), a).toBe(true);
    }
    for (const a of ['mallory@local.example', 'alice@other.example', 'alice@sub.catchall.example', 'alice', '@local.example']) {
      expect(table.has(a), a).toBe(false);
    }
    expect([...table.entryDomains()].sort()).toEqual(['catchall.example', 'local.example', 'xn--bcher-kva.example']);
  });

  it('finds an address with an extension by its base address, with a recipient delimiter only', () => {
    const t = RecipientTable.parse('alice@local.example\nbob+list@local.example\n');
    expect(t.has('alice+news@local.example')).toBe(false);
    expect(t.has('alice+news@local.example', '+')).toBe(true);
    expect(t.has('Alice-news+x@local.example', '+-')).toBe(true);
    expect(t.has('alice-news@local.example', '+')).toBe(false);
    // A delimiter in first place is no extension: "+alice" is not "".
    expect(t.has('+alice@local.example', '+')).toBe(false);
    // An exact entry with an extension is found as it is, with or without a delimiter.
    expect(t.has('bob+list@local.example')).toBe(true);
    expect(t.has('bob+list@local.example', '+')).toBe(true);
    expect(t.has('bob+other@local.example', '+')).toBe(false);
    expect(t.has('mallory+alice@local.example', '+')).toBe(false);
  });

  it('names the file and line of a malformed entry', () => {
    expect(() => RecipientTable.parse('ok@local.example\njust-a-name\n', '/etc/rcpt')).toThrow('/etc/rcpt:2: expected "user@domain" or "@domain", not "just-a-name"');
    expect(() => RecipientTable.parse('user@bad_domain!', 'f')).toThrow('f:1:');
    expect(() => RecipientTable.parse('user@-leading.example', 'f')).toThrow('f:1:');
    expect(() => RecipientTable.parse('user@', 'f')).toThrow('f:1:');
  });

  it('refuses only unlisted recipients of relay.domains, and nothing without a table', () => {
    const relayDomains = ['local.example', 'other.example'];
    expect(unlistedRecipientDecision({ recipient: 'alice@local.example', relayDomains, table })).toBeUndefined();
    expect(unlistedRecipientDecision({ recipient: 'mallory@local.example', relayDomains, table })).toEqual({
      code: 550, enhanced: '5.1.1', text: '<mallory@local.example>: Recipient address rejected: User unknown in relay recipient table',
    });
    // A relay domain with no entry at all: none of its addresses exists.
    expect(unlistedRecipientDecision({ recipient: 'alice@other.example', relayDomains, table })).toMatchObject({ code: 550 });
    // postmaster@ a relay domain is always accepted (RFC 5321 §4.5.1), listed or not.
    expect(unlistedRecipientDecision({ recipient: 'PostMaster@other.example', relayDomains, table })).toBeUndefined();
    // Outside relay.domains the table has no say (relay control decides there).
    expect(unlistedRecipientDecision({ recipient: 'mallory@outside.example', relayDomains, table })).toBeUndefined();
    expect(unlistedRecipientDecision({ recipient: 'mallory@local.example', relayDomains, table: undefined })).toBeUndefined();
  });
});

describe.each([
  { who: 'an untrusted client', networks: ['10.0.0.0/8'] },
  { who: 'a trusted client', networks: ['127.0.0.0/8', '::1/128'] },
])('ingress with relay.recipients, $who', ({ networks }) => {
  let h: Harness;
  let dir: string;
  let file: string;
  const clients: SmtpClient[] = [];
  const open = () => greetedClient(h.port, { track: clients });
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-rcpt-'));
    file = join(dir, 'relay_recipients');
    writeFileSync(file, 'alice@local.example\n@catchall.example\n');
    h = await startIngress({ relay: { networks, domains: ['local.example', 'catchall.example'], recipients: file, recipientDelimiter: '+' } });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.quit()));
  });
  afterAll(async () => {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('accepts listed recipients, refuses the others with 550 5.1.1, and queues the mail for the listed ones', async () => {
    const before = await counter(h.metrics, 'rejectedTotal', { reason: 'unknown_recipient' });
    const c = await open();
    expect((await c.command('MAIL FROM:<sender@example.org>')).code).toBe(250);
    expect((await c.command('RCPT TO:<Alice@LOCAL.example>')).code).toBe(250);
    const refused = await c.command('RCPT TO:<mallory@local.example>');
    expect([refused.code, refused.enhanced]).toEqual([550, '5.1.1']);
    expect(refused.text).toContain('User unknown in relay recipient table');
    expect((await c.command('RCPT TO:<whoever@catchall.example>')).code).toBe(250);
    expect((await c.command('RCPT TO:<alice+lists@local.example>')).code).toBe(250);
    expect((await c.command('RCPT TO:<mallory+alice@local.example>')).code).toBe(550);
    expect((await c.command('DATA')).code).toBe(354);
    const done = await c.command('Subject: t\r\n\r\nhello\r\n.');
    expect(done.code).toBe(250);
    const mail = await h.queue.get(done.text.split(' ').pop()!);
    expect(mail!.recipients.map((r) => r.address)).toEqual(['Alice@LOCAL.example', 'whoever@catchall.example', 'alice+lists@local.example']);
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'unknown_recipient' })).toBe(before + 2);
  });

  it('reads the table again on reload; a broken file keeps the table that was running', async () => {
    writeFileSync(file, 'alice@local.example\nmallory@local.example\n@catchall.example\n');
    h.store.reload();
    let c = await open();
    expect((await c.command('MAIL FROM:<sender@example.org>')).code).toBe(250);
    expect((await c.command('RCPT TO:<mallory@local.example>')).code).toBe(250);
    writeFileSync(file, 'alice@local.example\nthis line is broken\n');
    h.store.reload();
    c = await open();
    expect((await c.command('MAIL FROM:<sender@example.org>')).code).toBe(250);
    // Still the table from before the broken file: mallory stays listed, catch-all too.
    expect((await c.command('RCPT TO:<mallory@local.example>')).code).toBe(250);
    expect((await c.command('RCPT TO:<x@catchall.example>')).code).toBe(250);
    expect((await c.command('RCPT TO:<trudy@local.example>')).code).toBe(550);
  });
});

describe('the server process with a bad relay.recipients', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'spoolhouse-rcpt-start-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  function start(recipients: string) {
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({
      smtp: { listen: ['127.0.0.1:0'] },
      relay: { domains: ['local.example'], recipients },
      spool: { dir: join(dir, 'spool') },
      admin: { listen: '127.0.0.1:0' },
      log: { level: 'silent' },
    }));
    return spawnSync(process.execPath, [mainScript, '--config', config], { encoding: 'utf8', timeout: 30_000 });
  }

  it('does not start when the file is missing, and says which key and file', () => {
    const missing = join(dir, 'no-such-file');
    const r = start(missing);
    expect(r.status).toBe(78);
    expect(r.stderr).toContain('relay.recipients');
    expect(r.stderr).toContain(missing);
  });

  it('does not start when a line is malformed, and says which line', () => {
    const broken = join(dir, 'broken');
    writeFileSync(broken, 'alice@local.example\n\nnot-an-address\n');
    const r = start(broken);
    expect(r.status).toBe(78);
    expect(r.stderr).toContain(`relay.recipients: ${broken}:3: expected "user@domain" or "@domain"`);
  });
});
