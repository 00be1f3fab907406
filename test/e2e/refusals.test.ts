/**
 * An operator looks at what the door refuses: the built server as a child process, refusals made
 * over SMTP, then GET /api/refusals (filters, cursor, a 400 for a bad filter), the refusal rates
 * by reason in GET /api/stats, and `spoolhouse refusals` printing them log-like and terminal-safe.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RefusalPage, Stats } from '../../src/api-types.js';
import { projectRoot, startServer, type ServerProcess } from '../helpers/server-process.js';
import { SmtpClient } from '../helpers/smtp-client.js';

const TOKEN = 'refusals-test-token-0123456789abcdef';
let dir: string;
let server: ServerProcess;

async function get<T>(path: string): Promise<{ status: number; body: T }> {
  const res = await fetch(`${server.adminUrl}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return { status: res.status, body: (await res.json()) as T };
}

/** A session that asks to relay (refused: 554 5.7.1) once per recipient given, after an EHLO with this name. */
async function relayAttempts(helo: string, recipients: string[]): Promise<void> {
  const c = await SmtpClient.connect({ port: server.smtp[0]!.port, host: server.smtp[0]!.host });
  expect((await c.read()).code).toBe(220);
  expect((await c.ehlo(helo)).code).toBe(250);
  expect((await c.command('MAIL FROM:<someone@outside.example>')).code).toBe(250);
  for (const r of recipients) expect((await c.command(`RCPT TO:<${r}>`)).code).toBe(554);
  await c.quit();
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spoolhouse-refusals-'));
  server = await startServer({
    config: {
      dir,
      overlay: {
        smtp: { listen: ['127.0.0.1:0'], earlyTalkerDelay: '0ms' },
        // Loopback is an outside client here, so that it can be refused.
        relay: { networks: [], domains: ['local.example'] },
        spool: { dir: join(dir, 'spool') },
        admin: { listen: '127.0.0.1:0', token: TOKEN },
        log: { level: 'info', pretty: false },
      },
    },
  });
  await relayAttempts('first.example', ['a@elsewhere.example', 'b@elsewhere.example']);
  await relayAttempts('second.example', ['c@elsewhere.example']);
  // A command with a terminal escape in it (refused: 501): the CLI must not pass it to the terminal.
  const c = await SmtpClient.connect({ port: server.smtp[0]!.port, host: server.smtp[0]!.host });
  expect((await c.read()).code).toBe(220);
  expect((await c.command('EHLO evil\u001b]0;pwned\u0007.example')).code).toBe(501);
  await c.quit();
});
afterAll(async () => {
  await server?.kill9();
  rmSync(dir, { recursive: true, force: true });
});

describe('the refusals an operator sees', () => {
  it('GET /api/refusals lists them newest first, filtered and paged; a bad filter is a 400 naming it', async () => {
    const all = await get<RefusalPage>('/api/refusals');
    expect(all.status).toBe(200);
    expect(all.body.total).toBe(4);
    expect(all.body.capacity).toBe(1000);
    expect(all.body.items.map((r) => r.command)).toEqual(['EHLO evil\u001b]0;pwned\u0007.example', 'RCPT TO:<c@elsewhere.example>', 'RCPT TO:<b@elsewhere.example>', 'RCPT TO:<a@elsewhere.example>']);
    expect(all.body.items[0]).toMatchObject({ reason: 'syntax', reply: { code: 501 } });
    expect(all.body.items[3]).toMatchObject({ client: '127.0.0.1', helo: 'first.example', sender: 'someone@outside.example', reason: 'relay', reply: { code: 554, enhanced: '5.7.1' } });
    const found = await get<RefusalPage>('/api/refusals?text=B%40ELSEWHERE&client=127.0.0.0/8&reason=relay');
    expect(found.body.items.map((r) => r.command)).toEqual(['RCPT TO:<b@elsewhere.example>']);
    const first = await get<RefusalPage>('/api/refusals?limit=2&reason=relay');
    expect(first.body.items).toHaveLength(2);
    const rest = await get<RefusalPage>(`/api/refusals?limit=2&reason=relay&before=${first.body.nextCursor}`);
    expect(rest.body.items.map((r) => r.command)).toEqual(['RCPT TO:<a@elsewhere.example>']);
    expect(rest.body.nextCursor).toBeUndefined();
    const bad = await get<{ message: string }>('/api/refusals?client=nowhere');
    expect(bad.status).toBe(400);
    expect(bad.body.message).toMatch(/^client: "nowhere" is not an IP address/);
    expect((await get<{ message: string }>('/api/refusals?limit=0')).status).toBe(400);
    const anonymous = await fetch(`${server.adminUrl}/api/refusals`);
    expect(anonymous.status).toBe(401);
  });

  it('GET /api/stats has the refusal rate and its reasons', async () => {
    const { body } = await get<Stats>('/api/stats');
    // Whose figures they are: without kafka.nodeId, the host's name.
    expect(body.node).toBe(hostname());
    // Four refusals within the window (at least a second of it): three for relaying, one a syntax error.
    expect(body.rates.refusedPerMinute).toBeGreaterThan(0);
    expect(Object.keys(body.refusedByReason).sort()).toEqual(['relay', 'syntax']);
    expect(body.refusedByReason.relay).toBeCloseTo(3 * body.refusedByReason.syntax!, 1);
    expect(body.refusedByReason.relay! + body.refusedByReason.syntax!).toBeCloseTo(body.rates.refusedPerMinute, 1);
    // The server is younger than the minute's window: the rates say what they were measured over,
    // and four refusals over those seconds, extrapolated to a minute, are what they show.
    expect(body.ratesWindowSeconds).toBeGreaterThanOrEqual(1);
    expect(body.ratesWindowSeconds).toBeLessThan(60);
    expect(body.rates.refusedPerMinute).toBeGreaterThan((4 * 60) / (body.ratesWindowSeconds + 1));
    expect(body.rates.refusedPerMinute).toBeLessThanOrEqual((4 * 60) / Math.max(body.ratesWindowSeconds - 1, 1));
  });

  it('`spoolhouse refusals` prints them oldest first, like log lines, with escapes made harmless', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [join(projectRoot, 'dist', 'src', 'cli', 'main.js'), 'refusals'], {
      env: { PATH: process.env.PATH ?? '', SPOOLHOUSE_URL: server.adminUrl!, SPOOLHOUSE_TOKEN: TOKEN },
    });
    const lines = stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(/ relay: \[127\.0\.0\.1\] helo=<first\.example> from=<someone@outside\.example>: RCPT TO:<a@elsewhere\.example>: 554 5\.7\.1 /);
    expect(lines[3]).toMatch(/ syntax: \[127\.0\.0\.1\]: EHLO evil\\u001b\]0;pwned\\u0007\.example: 501 /);
    expect(stdout).not.toContain('\u001b');
  });

  it('`spoolhouse refusals --follow` prints the new ones as they come', async () => {
    const follower = spawn(process.execPath, [join(projectRoot, 'dist', 'src', 'cli', 'main.js'), 'refusals', '--follow', '--reason', 'relay', '--limit', '1'], {
      env: { PATH: process.env.PATH ?? '', SPOOLHOUSE_URL: server.adminUrl!, SPOOLHOUSE_TOKEN: TOKEN },
    });
    let output = '';
    follower.stdout.on('data', (c: Buffer) => { output += c.toString(); });
    try {
      const lines = async (n: number) => {
        for (let i = 0; i < 100 && output.split('\n').filter(Boolean).length < n; i++) await new Promise((r) => setTimeout(r, 100));
        return output.split('\n').filter(Boolean);
      };
      // The newest one kept, then the cursor line for older ones.
      expect(await lines(2)).toEqual([expect.stringMatching(/^\(older ones: --before \d+\)$/), expect.stringMatching(/RCPT TO:<c@elsewhere\.example>: 554 5\.7\.1 /)]);
      await relayAttempts('third.example', ['d@elsewhere.example']);
      const after = await lines(3);
      expect(after).toHaveLength(3);
      expect(after[2]).toMatch(/ relay: \[127\.0\.0\.1\] helo=<third\.example> from=<someone@outside\.example>: RCPT TO:<d@elsewhere\.example>: 554 5\.7\.1 /);
    } finally {
      follower.kill();
    }
  });
});
