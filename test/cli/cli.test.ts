/**
 * The `spoolhouse` binary as an operator runs it: the compiled dist/src/cli/main.js (built here
 * from the current sources with tsc) against a real admin server over a real spool. Covers each
 * queue command, --json, bulk --filter with --dry-run, where the URL and token come from
 * (flags, env, config file, generated token file), and the exit codes scripts rely on.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QueuedMail } from '../../src/queue/types.js';
import { OPERATOR, PRIO, VIEWER, populate, startHarness, type Harness } from '../admin/harness.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'dist', 'src', 'cli', 'main.js');

let h: Harness;
let mails: Map<string, QueuedMail>;
const id = (subject: string) => mails.get(subject)!.id;

interface Result { code: number; stdout: string; stderr: string }

async function cli(args: string[], env: Record<string, string> = {}, withAuth = true): Promise<Result> {
  const auth = withAuth ? { SPOOLHOUSE_URL: h.url, SPOOLHOUSE_TOKEN: OPERATOR } : {};
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...auth, ...env },
      cwd: h.dir,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** dist/src/cli/main.js is missing or older than a source it is built from. */
function binaryStale(): boolean {
  if (!existsSync(BIN)) return true;
  const built = statSync(BIN).mtimeMs;
  const sources = ['cli', 'config'].flatMap((d) => readdirSync(join(ROOT, 'src', d)).map((f) => join(ROOT, 'src', d, f)));
  return sources.some((f) => f.endsWith('.ts') && statSync(f).mtimeMs > built);
}

beforeAll(async () => {
  // Build the CLI (and the config loader it imports) from the current sources, unless the build
  // (`npm test` runs tsc first) is already up to date: rewriting dist/ while other test files
  // run the built server would race with them.
  if (binaryStale()) await run(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'),
    '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--strict', '--skipLibCheck',
    '--esModuleInterop', '--resolveJsonModule', '--types', 'node', '--sourceMap', '--outDir', join(ROOT, 'dist'), '--rootDir', ROOT,
    join(ROOT, 'src', 'cli', 'main.ts')], { cwd: ROOT });
  h = await startHarness();
  mails = await populate(h);
}, 120_000);
afterAll(async () => h?.close());

describe('queue list', () => {
  it('prints a postqueue -p style table', async () => {
    const r = await cli(['queue', 'list']);
    expect(r.code).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toMatch(/^-Queue ID-\s+--Size--\s+-Prio-\s+----Arrival Time----\s+-Sender\/Recipient-------$/);
    const held = id('held by rule');
    expect(r.stdout).toMatch(new RegExp(`^${held}!\\s+\\d+ normal\\s+\\w{3} \\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d\\s+alice@corp.example$`, 'm'));
    expect(r.stdout).toMatch(/^\s+eve@slow\.example$/m);
    expect(r.stdout).toMatch(/MAILER-DAEMON/);
    expect(r.stdout).toMatch(/^-- \d+ Kbytes in 8 Requests\.$/m);
  });

  it('filters, and pages with --limit/--all', async () => {
    const r = await cli(['queue', 'list', '--filter', 'domain=example.org', '--filter', 'priority=bulk', '--json']);
    expect(r.code).toBe(0);
    const body = JSON.parse(r.stdout);
    expect(body.items.map((m: any) => m.subject).sort()).toEqual(['weekly newsletter 1', 'weekly newsletter 2']);
    const page = await cli(['queue', 'list', '--limit', '3']);
    expect(page.stdout).toMatch(/in 3 Requests\. More match/);
    const all = JSON.parse((await cli(['queue', 'list', '--limit', '3', '--all', '--json'])).stdout);
    expect(all.items).toHaveLength(8);
    const empty = await cli(['queue', 'list', '--state', 'delivered']);
    expect(empty.stdout).toBe('Mail queue is empty\n');
  });

  it('exit 2 for a bad filter (ours or the API\'s)', async () => {
    const r = await cli(['queue', 'list', '--filter', 'colour=blue']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown key "colour"/);
    const api = await cli(['queue', 'list', '--filter', 'priority=mega']);
    expect(api.code).toBe(2);
    expect(api.stderr).toMatch(/unknown priority "mega"/);
  });
});

describe('queue show', () => {
  it('shows envelope, recipients, headers and text; --json gives the API detail', async () => {
    const m = mails.get('with attachment')!;
    const r = await cli(['queue', 'show', m.id]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Queue ID:\\s+${m.id}$`, 'm'));
    expect(r.stdout).toMatch(/^State:\s+queued$/m);
    expect(r.stdout).toMatch(/^Priority:\s+normal \(10\)$/m);
    expect(r.stdout).toMatch(/^\s+dave@slow\.example\s+pending$/m);
    expect(r.stdout).toMatch(/^\s+Subject: with attachment$/m);
    expect(r.stdout).toMatch(/invoice\.pdf\s+application\/pdf/);
    expect(r.stdout).toContain('This is "with attachment"');
    const j = JSON.parse((await cli(['queue', 'show', m.id, '--json'])).stdout);
    expect(j).toMatchObject({ id: m.id, state: 'queued', parsed: { subject: 'with attachment' } });
    const raw = await cli(['queue', 'show', m.id, '--raw']);
    expect(raw.stdout).toContain('Subject: with attachment');
  });

  it('prints control characters from a mail escaped, never raw to the terminal; --json parses to the same text', async () => {
    const title = '\u001b]0;pwned\u0007';
    const subject = `Invoice ${title} due`;
    const m = await h.enqueue({ subject, to: ['term@example.com'], text: 'Line one\u001b[2J\u001b[H cleared?\r\nfake\rover\r\n' });
    const r = await cli(['queue', 'show', m.id]);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/);
    expect(r.stdout).toContain('Invoice \\u001b]0;pwned\\u0007 due');
    expect(r.stdout).toContain('Line one\\u001b[2J\\u001b[H cleared?');
    expect(r.stdout).toContain('fake\\u000dover');
    const list = await cli(['queue', 'list', '--filter', 'recipient=term@example.com']);
    expect(list.stdout).not.toMatch(/\u001b/);
    const j = JSON.parse((await cli(['queue', 'show', m.id, '--json'])).stdout) as { subject: string };
    expect(j.subject).toBe(subject);
  });

  it('exit 3 for an unknown id, 2 for a malformed one', async () => {
    const r = await cli(['queue', 'show', '01ARZ3NDEKTSV4RRFFQ69G5FAV']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/No mail with id/);
    expect((await cli(['queue', 'show', 'nope'])).code).toBe(2);
  });
});

describe('actions', () => {
  it('hold, release, retry and priority by id', async () => {
    const target = id('urgent wire transfer');
    const hold = await cli(['queue', 'hold', target, '--reason', 'finance check']);
    expect(hold.code).toBe(0);
    expect(hold.stdout).toMatch(/held \(now held\)/);
    expect(await h.queue.get(target)).toMatchObject({ state: 'held', holdReason: 'finance check' });
    const release = await cli(['queue', 'release', target]);
    expect(release.code).toBe(0);
    expect((await h.queue.get(target))!.state).toBe('queued');
    const retry = await cli(['queue', 'retry', target, '--json']);
    expect(retry.code).toBe(0);
    expect(JSON.parse(retry.stdout)).toEqual([{ id: target, ok: true, state: 'queued' }]);
    expect((await h.queue.get(target))!.notBefore).toBeLessThanOrEqual(Date.now());
    const prio = await cli(['queue', 'priority', target, 'bulk']);
    expect(prio.code).toBe(0);
    expect(prio.stdout).toMatch(/priority bulk/);
    expect((await h.queue.get(target))!.priority).toBe(PRIO.bulk);
    await cli(['queue', 'priority', target, '30']);
    expect((await h.queue.get(target))!.priority).toBe(PRIO.urgent);
  });

  it('bounce by id, with the reason the DSN will give', async () => {
    const target = id('weekly newsletter 2');
    const r = await cli(['queue', 'bounce', target, '--reason', 'campaign cancelled']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/to be bounced \(now queued\)/);
    expect((await h.queue.get(target))!.bounceRequest?.reason).toBe('campaign cancelled');
  });

  it('bounce of some recipients of one mail; 3 for an address the mail does not have, 2 without one id', async () => {
    const m = await h.enqueue({ subject: 'two recipients', to: ['typo@gmial.example', 'ok@example.com'] });
    const r = await cli(['queue', 'bounce', m.id, '--recipient', 'typo@gmial.example', '--reason', 'misspelt']);
    expect(r.code, r.stderr).toBe(0);
    expect((await h.queue.get(m.id))!.bounceRequest).toMatchObject({ reason: 'misspelt', recipients: ['typo@gmial.example'] });
    const unknown = await cli(['queue', 'bounce', m.id, '--recipient', 'nobody@example.com']);
    expect(unknown.code).toBe(3);
    expect(unknown.stderr).toMatch(/has no recipient nobody@example\.com/);
    expect((await cli(['queue', 'bounce', '--filter', 'domain=gmial.example', '--recipient', 'typo@gmial.example'])).code).toBe(2);
    await h.queue.remove(m.id);
  });

  it('redirect corrects a recipient of one mail; 3 for an address it lacks, 1 for one it already has, 2 for a bad address', async () => {
    const m = await h.enqueue({ subject: 'misspelt', to: ['typo@gmial.example', 'ok@example.com'] });
    const r = await cli(['queue', 'redirect', m.id, 'typo@gmial.example', 'typo@gmail.example']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${m.id}: typo@gmial.example is now typo@gmail.example (mail queued, due now)\n`);
    expect((await h.queue.get(m.id))!.recipients.map((x) => x.address)).toEqual(['typo@gmail.example', 'ok@example.com']);
    const unknown = await cli(['queue', 'redirect', m.id, 'typo@gmial.example', 'x@example.com']);
    expect([unknown.code, unknown.stderr]).toEqual([3, expect.stringMatching(/has no recipient typo@gmial\.example/)]);
    const taken = await cli(['queue', 'redirect', m.id, 'typo@gmail.example', 'ok@example.com']);
    expect([taken.code, taken.stderr]).toEqual([1, expect.stringMatching(/already has the recipient ok@example\.com/)]);
    expect((await cli(['queue', 'redirect', m.id, 'typo@gmail.example', 'no address'])).code).toBe(2);
    // `queue show` names the address the sender gave, and the kind of a recipient's last reply.
    const reserved = await h.queue.reserveDue({ owner: 'cli-test', limit: 100, leaseMs: 60_000 });
    // The other mails due go back as they were.
    for (const x of reserved) if (x.id !== m.id) await h.queue.releaseLease(x.id, x.lease!.token);
    const leased = reserved.find((x) => x.id === m.id);
    await h.queue.recordAttempt(m.id, leased!.lease!.token, {
      outcomes: [{ address: 'ok@example.com', outcome: 'deferred', reply: { code: 452, enhanced: '4.2.2', message: 'Mailbox full' } }, { address: 'typo@gmail.example', outcome: 'deferred' }],
      retryAt: Date.now() + 3_600_000,
    });
    const show = await cli(['queue', 'show', m.id]);
    expect(show.stdout).toMatch(/^\s+typo@gmail\.example \(given as typo@gmial\.example\)\s+deferred$/m);
    expect(show.stdout).toMatch(/^\s+ok@example\.com\s+deferred \[mailbox-full\]\s+\(452 4\.2\.2 Mailbox full\)$/m);
    await h.queue.remove(m.id);
  });

  it('exit 1 when the state does not allow it; 3 when one of several ids is unknown', async () => {
    const r = await cli(['queue', 'release', id('big report')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/Cannot release/);
    const mixed = await cli(['queue', 'hold', id('big report'), '01ARZ3NDEKTSV4RRFFQ69G5FAV']);
    expect(mixed.code).toBe(3);
    expect(mixed.stdout).toMatch(/1 of 2 mails held/);
    expect((await h.queue.get(id('big report')))!.state).toBe('held');
    await cli(['queue', 'release', id('big report')]);
  });

  it('bulk by --filter with --dry-run, then for real (remove by domain)', async () => {
    const dry = await cli(['queue', 'remove', '--filter', 'domain=example.org', '--dry-run']);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/^Would remove 2 mails \(dry run; nothing changed\)/);
    expect((await h.queue.get(id('weekly newsletter 1')))!.state).toBe('queued');
    const json = JSON.parse((await cli(['queue', 'hold', '--filter', 'domain=example.org', '--dry-run', '--json'])).stdout);
    expect(json).toMatchObject({ matched: 2, changed: 0, dryRun: true });
    const real = await cli(['queue', 'remove', '--filter', 'domain=example.org']);
    expect(real.code).toBe(0);
    expect(real.stdout).toMatch(/^2 of 2 matching mails removed/);
    expect((await h.queue.get(id('weekly newsletter 1')))!.state).toBe('removed');
    expect((await h.queue.get(id('weekly newsletter 2')))!.state).toBe('removed');
    const prio = await cli(['queue', 'priority', '--filter', 'domain=slow.example', 'high', '--json']);
    expect(JSON.parse(prio.stdout)).toMatchObject({ matched: 2, changed: 2 });
  });

  it('remove by id', async () => {
    const target = id('bounce of something');
    const r = await cli(['queue', 'remove', target]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/removed \(now removed\)/);
    expect((await h.queue.get(target))!.state).toBe('removed');
  });

  it('exit 2 for usage errors', async () => {
    expect((await cli(['queue', 'remove'])).code).toBe(2);
    expect((await cli(['queue', 'remove', id('big report'), '--filter', 'domain=x.example'])).code).toBe(2);
    expect((await cli(['queue', 'hold', id('big report'), '--dry-run'])).code).toBe(2);
    expect((await cli(['queue', 'frobnicate'])).code).toBe(2);
    expect((await cli(['queue', 'list', '--sort', 'size'])).code).toBe(2);
    expect((await cli(['queue', 'priority', id('big report'), 'mega'])).code).toBe(2);
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Exit codes/);
  });
});

describe('queue stats', () => {
  it('prints counts and the qshape table; --json the API stats', async () => {
    const r = await cli(['queue', 'stats']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^By state:\s+queued=\d+/m);
    expect(r.stdout).toMatch(/^Node: {8}\S+ \(rates, suspensions and replies are this node's\)$/m);
    expect(r.stdout).toMatch(/^By priority:.*urgent=\d/m);
    expect(r.stdout).toMatch(/^\s+T\s+0-5m\s+5-10m/m);
    expect(r.stdout).toMatch(/^TOTAL\s+\d+/m);
    expect(r.stdout).toMatch(/^example\.com\s+\d+/m);
    const j = JSON.parse((await cli(['queue', 'stats', '--json'])).stdout);
    expect(j.byState).toHaveProperty('queued');
  });
});

describe('route and unroute', () => {
  it('routes a domain to a host through the API, lists the routes, removes them; bad input is a usage error', async () => {
    expect((await cli(['route'])).stdout).toBe('No routes: every domain is delivered to its MX (or delivery.smarthost).\n');
    const r = await cli(['route', 'Gmail.com', 'relay.example.net:2525']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('gmail.com  relay.example.net:2525\n');
    expect(h.config.current.delivery.routes).toEqual({ 'gmail.com': 'relay.example.net:2525' });
    expect((await cli(['route', 'example.org', '10.0.0.5'])).code).toBe(0);
    expect(JSON.parse((await cli(['--json', 'route'])).stdout)).toEqual({ routes: { 'gmail.com': 'relay.example.net:2525', 'example.org': '10.0.0.5' } });
    const bad = await cli(['route', 'example.com', 'not a host!']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/delivery\.routes/);
    expect((await cli(['route', 'example.com'])).code).toBe(2);
    const missing = await cli(['unroute', 'nowhere.example']);
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/no route for nowhere\.example/);
    expect((await cli(['unroute', 'gmail.com'])).stdout).toBe('example.org  10.0.0.5\n');
    expect((await cli(['unroute', 'example.org'])).stdout).toMatch(/^No routes/);
    expect(h.config.current.delivery.routes).toEqual({});
  });
});

describe('pause and resume', () => {
  it('pauses delivery to domains through the API, lists them, resumes them; a bad domain is a usage error', async () => {
    expect((await cli(['pause'])).stdout).toBe('No delivery is paused.\n');
    const p = await cli(['pause', 'Gmail.com', 'example.net']);
    expect(p.code).toBe(0);
    expect(p.stdout).toBe('Delivery paused for: gmail.com, example.net\n');
    expect(h.config.current.delivery.paused).toEqual(['gmail.com', 'example.net']);
    expect(JSON.parse((await cli(['--json', 'pause'])).stdout)).toEqual({ paused: ['gmail.com', 'example.net'] });
    const r = await cli(['resume', 'gmail.com']);
    expect(r.stdout).toBe('Delivery still paused for: example.net\n');
    expect(h.config.current.delivery.paused).toEqual(['example.net']);
    const bad = await cli(['pause', 'not a domain!']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/delivery\.paused/);
    expect((await cli(['resume'])).code).toBe(2);
    expect((await cli(['resume', '--all'])).stdout).toBe('No delivery is paused.\n');
    expect(h.config.current.delivery.paused).toEqual([]);
    // A viewer may look but not pause.
    const viewer = await cli(['pause', 'x.example'], { SPOOLHOUSE_TOKEN: VIEWER });
    expect(viewer.code).toBe(4);
  });
});

describe('block and unblock', () => {
  it('adds relay.reject entries through the API, lists them numbered, drops them by number; bad input is a usage error', async () => {
    expect((await cli(['block'])).stdout).toBe('Nothing is blocked (relay.reject is empty).\n');
    const a = await cli(['block', '--sender', '*@spam.example']);
    expect(a.code).toBe(0);
    const b = await cli(['block', '--client', '198.51.100.0/24', '--reply', '550 5.7.1 Not from your network']);
    expect(b.stdout).toBe('  1  sender *@spam.example\n  2  client 198.51.100.0/24  reply "550 5.7.1 Not from your network"\n');
    expect(h.config.current.relay.reject).toEqual([{ sender: '*@spam.example' }, { client: ['198.51.100.0/24'], reply: '550 5.7.1 Not from your network' }]);
    expect(JSON.parse((await cli(['--json', 'block'])).stdout).reject).toHaveLength(2);
    const bad = await cli(['block', '--client', '10.0.0.0/33']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/relay\.reject\.2\.client/);
    expect((await cli(['block', '--reply', '554 5.7.1 x'])).code).toBe(2);
    expect((await cli(['unblock', '3'])).code).toBe(3);
    expect((await cli(['unblock', '1'])).stdout).toBe('  1  client 198.51.100.0/24  reply "550 5.7.1 Not from your network"\n');
    expect((await cli(['unblock'])).code).toBe(2);
    expect((await cli(['unblock', '--all'])).stdout).toBe('Nothing is blocked (relay.reject is empty).\n');
    expect(h.config.current.relay.reject).toEqual([]);
    const viewer = await cli(['block', '--sender', 'x@y.example'], { SPOOLHOUSE_TOKEN: VIEWER });
    expect(viewer.code).toBe(4);
  });
});

describe('connection and auth', () => {
  it('exit 4 for a wrong token and for a viewer\'s change', async () => {
    const r = await cli(['queue', 'list'], { SPOOLHOUSE_TOKEN: 'wrong-token-0123456789abcdef' });
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/token/);
    expect((await cli(['queue', 'list'], { SPOOLHOUSE_TOKEN: VIEWER })).code).toBe(0);
    const change = await cli(['queue', 'hold', id('big report')], { SPOOLHOUSE_TOKEN: VIEWER });
    expect(change.code).toBe(4);
  });

  it('flags win over the environment', async () => {
    const r = await cli(['--url', h.url, '--token', OPERATOR, 'queue', 'list', '--json'], { SPOOLHOUSE_URL: 'http://127.0.0.1:9', SPOOLHOUSE_TOKEN: 'nope-nope-nope-nope' });
    expect(r.code).toBe(0);
  });

  it('reads the URL and token from the config file (admin.token, or the generated token file)', async () => {
    const port = new URL(h.url).port;
    const file = join(h.dir, 'cli-config.json');
    writeFileSync(file, JSON.stringify({ admin: { listen: `127.0.0.1:${port}`, token: OPERATOR, tokens: [] } }));
    const r = await cli(['--config', file, 'queue', 'list', '--json'], {}, false);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).items.length).toBeGreaterThan(0);
    // No token configured: the CLI reads <spool.dir>/admin.token, as the server wrote it.
    writeFileSync(join(h.dir, 'admin.token'), OPERATOR + '\n', { mode: 0o600 });
    writeFileSync(file, JSON.stringify({ spool: { dir: h.dir }, admin: { listen: `127.0.0.1:${port}`, token: null, tokens: [] } }));
    const g = await cli(['queue', 'stats', '--json'], { SPOOLHOUSE_CONFIG: file }, false);
    expect(g.code).toBe(0);
  });

  it('exit 1 when the server cannot be reached', async () => {
    const r = await cli(['queue', 'list'], { SPOOLHOUSE_URL: 'http://127.0.0.1:9' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot reach/);
  });
});
