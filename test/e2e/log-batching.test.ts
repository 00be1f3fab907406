/**
 * Log lines to stdout are written in batches of up to 4 KB, at the latest log.flushInterval after
 * they were logged (src/logger.ts), through the built server as a child process: a line logged on
 * an idle server (far less than a batch) still comes out, and a graceful stop writes everything
 * left. The interval is long here (400 ms) so that only the timer can have written the line.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerProcess } from '../helpers/server-process.js';

let dir: string;
let server: ServerProcess;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spoolhouse-logbatch-'));
  server = await startServer({
    config: {
      dir,
      overlay: {
        smtp: { listen: ['127.0.0.1:0'], earlyTalkerDelay: '0ms' },
        spool: { dir: join(dir, 'spool') },
        admin: { listen: '127.0.0.1:0' },
        log: { level: 'info', pretty: false, flushInterval: '400ms' },
        rules: [{ name: 'hold-all', match: { sender: '*' }, hold: true }],
      },
    },
  });
});
afterAll(async () => {
  await server?.kill9();
  rmSync(dir, { recursive: true, force: true });
});

describe('log lines in batches (log.flushInterval)', () => {
  it('writes a line of an idle server within the interval, and everything left when it stops', async () => {
    const t = nodemailer.createTransport({ host: server.smtp[0]!.host, port: server.smtp[0]!.port, secure: false, ignoreTLS: true });
    const info = await t.sendMail({ from: 'idle@example.org', to: 'someone@dest.example', subject: 'one line', text: 'hello' });
    t.close();
    const id = /queued as (\S+)/.exec(info.response)![1];
    const sent = Date.now();
    const line = await server.waitForLog((l) => l.msg === 'mail accepted' && l.mailId === id, 5000);
    expect(line.sender).toBe('idle@example.org');
    // The timer runs every 400 ms: the line is out within one period (and some slack for a busy machine).
    expect(Date.now() - sent).toBeLessThan(2000);
    const before = server.logs.length;
    expect(await server.term()).toBe(0);
    // The shutdown's own lines, the last one included, were written on the way out.
    expect(server.logs.slice(before).map((l) => l.msg)).toContain('shutting down');
    expect(server.logs.at(-1)?.msg).toBe('stopped');
  });
});
