/**
 * An operator sees a dead destination: the built server as a child process, a mail relayed to a
 * route whose server refuses every session (421 greeting), then GET /api/stats lists the
 * destination as suspended with the remote's reply, the Prometheus gauge counts it, and
 * `spoolhouse queue stats` prints it.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ReplyDigestPage, Stats } from '../../src/api-types.js';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { projectRoot, startServer, type ServerProcess } from '../helpers/server-process.js';

const TOKEN = 'suspended-destinations-test-token-0123';
let dir: string;
let rx: Receiver;
/** A destination that takes the mail and never answers its final ".": a connection stays open. */
let slow: Receiver;
let server: ServerProcess;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spoolhouse-suspended-'));
  rx = await startReceiver({ script: { greeting: '421 4.3.2 Closed for maintenance' } });
  slow = await startReceiver({ script: { dataEnd: 'stall' } });
  server = await startServer({
    config: {
      dir,
      overlay: {
        smtp: { listen: ['127.0.0.1:0'], earlyTalkerDelay: '0ms' },
        spool: { dir: join(dir, 'spool') },
        admin: { listen: '127.0.0.1:0', token: TOKEN },
        log: { level: 'info', pretty: false },
        delivery: {
          routes: { 'dead.example': rx.address, 'slow.example': slow.address },
          tls: { opportunistic: false, verify: false },
          retry: { min: '10m', max: '1h', lifetime: '5d' },
        },
      },
    },
  });
});
afterAll(async () => {
  await server?.kill9();
  await rx?.close();
  await slow?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function waitUntil(done: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('dead destinations in the admin API', () => {
  it('GET /api/stats lists the suspended destination with its reply; the gauge counts it', async () => {
    const t = nodemailer.createTransport({ host: server.smtp[0]!.host, port: server.smtp[0]!.port, secure: false, ignoreTLS: true });
    await t.sendMail({ from: 'ops@example.org', to: 'someone@dead.example', subject: 'to a dead destination', text: 'hello' });
    await t.sendMail({ from: 'ops@example.org', to: 'someone@slow.example', subject: 'to a slow destination', text: 'hello' });
    t.close();
    await waitUntil(() => slow.transactions.some((x) => x.complete));
    await server.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('destination unreachable'), 15_000);
    const res = await fetch(`${server.adminUrl}/api/stats`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(res.status).toBe(200);
    const stats = (await res.json()) as Stats;
    // The slow one is being delivered: one connection open (of the five allowed at first), nothing waiting.
    expect(stats.deliveringNow).toEqual([{ destination: slow.address, domains: ['slow.example'], open: 1, allowed: 5, limit: 20, waiting: 0 }]);
    expect(stats.suspendedDestinations).toHaveLength(1);
    const [d] = stats.suspendedDestinations;
    expect(d!.domains).toEqual(['dead.example']);
    expect(d!.reply.code).toBe(421);
    expect(d!.reply.message).toMatch(/Closed for maintenance/);
    // Ten minutes (retry.min) from the failure, give or take the test's own time.
    expect(d!.until - Date.now()).toBeGreaterThan(9 * 60_000);
    expect(d!.until - Date.now()).toBeLessThanOrEqual(10 * 60_000);
    // The deferral in the reply detail (pflogsumm's), linked to the mail that got it.
    const replies = (await (await fetch(`${server.adminUrl}/api/stats/replies?outcome=deferred`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as ReplyDigestPage;
    expect(replies.rows).toEqual([expect.objectContaining({
      outcome: 'deferred', kind: 'connection', domain: 'dead.example', reply: { code: 421, enhanced: '4.3.2', message: 'Closed for maintenance' }, count: 1, example: 'Closed for maintenance',
    })]);
    expect(replies.byKind).toEqual({ connection: 1 });
    const byKind = (await (await fetch(`${server.adminUrl}/api/stats/replies?kind=rate-limited`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as ReplyDigestPage;
    expect([byKind.rows, byKind.total]).toEqual([[], 0]);
    expect((await fetch(`${server.adminUrl}/api/stats/replies?kind=weather`, { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(400);
    const [mail] = (await (await fetch(`${server.adminUrl}/api/messages?domain=dead.example`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()).items as { id: string }[];
    expect(replies.rows[0]!.lastMailId).toBe(mail!.id);
    // Where its mail goes now: the route, looked up afresh.
    const where = await (await fetch(`${server.adminUrl}/api/destinations/dead.example`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    expect(where).toEqual({
      domain: 'dead.example', via: 'route', hosts: [{ host: '127.0.0.1', port: Number(rx.address.split(':')[1]), address: '127.0.0.1' }],
      // Suspended: none open, one (a probe) when it resumes.
      connections: { destination: rx.address, domains: ['dead.example'], open: 0, allowed: 1, limit: 20, waiting: 0 },
    });
    const badWindow = await fetch(`${server.adminUrl}/api/stats/replies?window=2h`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(badWindow.status).toBe(400);
    expect(((await badWindow.json()) as { message: string }).message).toMatch(/^window: "2h" must be from 1s to 1h/);
    const metrics = await (await fetch(`${server.adminUrl}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
    expect(metrics).toMatch(/^spoolhouse_destinations_suspended 1$/m);
    expect(metrics).toMatch(/^spoolhouse_recipient_replies_total\{outcome="deferred",kind="connection"\} 1$/m);
    expect(rx.acceptedConnections).toBe(1);

    const cli = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [join(projectRoot, 'dist', 'src', 'cli', 'main.js'), 'queue', 'stats'], {
        env: { PATH: process.env.PATH ?? '', HOME: dir, SPOOLHOUSE_URL: server.adminUrl!, SPOOLHOUSE_TOKEN: TOKEN },
      }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
    });
    expect(cli).toMatch(/^Suspended destinations/m);
    expect(cli).toContain(`Delivering now (connections open/allowed/limit, mails waiting):\n  slow.example  1/5/20  0 waiting  [${slow.address}]\n`);
    // The server is seconds old: its rates say what they were measured over.
    expect(cli).toMatch(/^Rates\/min: .* deferred=\d.* {2}\(over the [1-5]?\d s since start\)$/m);
    expect(cli).toMatch(/^ {2}dead\.example \[.+\] until .+: 421 4\.3\.2 Closed for maintenance$/m);
    expect(cli).toMatch(/^Deferrals and bounces by reply \(last hour, 1 recipient; connection 1\):\n {2}1 deferred dead\.example {2}connection {2}421 4\.3\.2 Closed for maintenance$/m);

    const dest = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [join(projectRoot, 'dist', 'src', 'cli', 'main.js'), 'destination', 'DEAD.example'], {
        env: { PATH: process.env.PATH ?? '', HOME: dir, SPOOLHOUSE_URL: server.adminUrl!, SPOOLHOUSE_TOKEN: TOKEN },
      }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
    });
    expect(dest.split('\n').slice(1)).toEqual([
      'Goes through a route (delivery.routes), TLS as for every domain:',
      `  1. ${rx.address}`,
      'Waiting:     queued=1  active=0  held=0',
      // Suspended: one connection at a time (a probe) when it resumes, none open now.
      'Connections: 0 open, 1 allowed now of 20, 0 waiting',
      'Replies in the last hour (1 recipient; connection 1):',
      '  1 deferred connection  421 4.3.2 Closed for maintenance',
      '',
    ]);
  });
});
