/**
 * SIGHUP re-reads the config files of a running server (the built server as a child process, the
 * way an operator runs it): a rule added to the file and a new log level apply to the next mail, a
 * changed setting that only a restart applies is named in a warning, and a broken file is refused
 * with a log line naming the file, the key and the problem while the running configuration stays
 * in force. Mail is held by a rule, so nothing needs delivering.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type LogLine, type ServerProcess } from '../helpers/server-process.js';

const TOKEN = 'reload-test-operator-token-0123456789';
let dir: string;
let file: string;
let server: ServerProcess;

const base = (rules: unknown[]) => ({
  smtp: { listen: ['127.0.0.1:0'], hostname: 'reload.spoolhouse.test', earlyTalkerDelay: '0ms' },
  spool: { dir: join(dir, 'spool') },
  admin: { listen: '127.0.0.1:0', token: TOKEN },
  log: { level: 'info', pretty: false },
  rules,
});
const HOLD_ALL = { name: 'hold-all', match: { sender: '*' }, hold: true };
const VIP = { name: 'vip', match: { senderDomain: 'vip.example' }, priority: 'urgent', hold: true };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spoolhouse-reload-'));
  file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify(base([HOLD_ALL])));
  server = await startServer({ config: file });
});
afterAll(async () => {
  await server?.term();
  rmSync(dir, { recursive: true, force: true });
});

/** The first log line matching `match` logged after `action` started. */
async function logAfter(action: () => unknown, match: (l: LogLine) => boolean): Promise<LogLine> {
  const from = server.logs.length;
  await action();
  return server.waitForLog((l) => server.logs.indexOf(l) >= from && match(l));
}

function send(from: string, subject: string): Promise<LogLine> {
  return logAfter(async () => {
    const t = nodemailer.createTransport({ host: server.smtp[0]!.host, port: server.smtp[0]!.port, secure: false, ignoreTLS: true });
    await t.sendMail({ from, to: 'someone@dest.example', subject, text: 'hello' });
    t.close();
  }, (l) => l.msg === 'mail accepted' && l.sender === from);
}

function hup(expectMsg: RegExp): Promise<LogLine> {
  return logAfter(() => server.child.kill('SIGHUP'), (l) => typeof l.msg === 'string' && expectMsg.test(l.msg));
}

async function mail(id: string): Promise<{ state: string; classification: { priority: { source: string; rule?: string } } }> {
  const res = await fetch(`${server.adminUrl}/api/messages/${id}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status).toBe(200);
  return res.json() as never;
}

describe('SIGHUP on a running server', () => {
  it('applies a rule added to the file to the next mail, and keeps the running config when the file is broken', async () => {
    // The start-up line names the files the running config came from.
    const started = server.logs.find((l) => l.msg === 'starting spoolhouse');
    expect((started?.files as string[] | undefined)?.at(-1)).toBe(file);
    const first = await send('a@vip.example', 'before reload');
    expect(first.priority).toBe('normal');
    expect((await mail(String(first.mailId))).state).toBe('held');

    // The rule and the log level apply at once; a new listener only at the next restart, which is said.
    expect(server.logs.some((l) => l.level === 20)).toBe(false);
    const next = base([VIP, HOLD_ALL]);
    writeFileSync(file, JSON.stringify({ ...next, smtp: { ...next.smtp, listen: ['127.0.0.2:0'] }, log: { ...next.log, level: 'debug' } }));
    const warned = await hup(/take effect at the next restart/);
    expect(warned.keys).toEqual(['smtp.listen']);
    const second = await send('a@vip.example', 'after reload');
    expect(second.priority).toBe('urgent');
    expect(second.rule).toBe('vip');
    const m = await mail(String(second.mailId));
    expect(m.state).toBe('held');
    expect(m.classification.priority).toMatchObject({ source: 'rule', rule: 'vip' });
    // Debug lines now, from the stages made at start (the spool's "mail spooled" for this mail).
    // (It follows the 250, which comes once the mail is durable, before it is indexed.)
    await server.waitForLog((l) => l.level === 20 && l.component === 'spool' && l.mailId === second.mailId, 5000);
    // The mail taken before the reload keeps what it was given.
    expect((await mail(String(first.mailId))).classification.priority.source).toBe('default');

    // A typo in a key: refused, named, and the running configuration (with the vip rule) stays.
    writeFileSync(file, JSON.stringify({ ...base([HOLD_ALL]), smtp: { ...base([]).smtp, maxRecipents: 5 } }));
    const failed = await hup(/^configuration reload failed/);
    expect(String(failed.err)).toContain(file);
    expect(String(failed.err)).toContain('smtp.maxRecipents');
    expect(String(failed.err)).toContain('unknown key');
    const third = await send('b@vip.example', 'after a broken reload');
    expect(third.priority).toBe('urgent');
    expect(server.child.exitCode).toBeNull();
    // Still on the listener it started with, and still at debug.
    expect(server.smtp).toHaveLength(1);
    await server.waitForLog((l) => l.level === 20 && l.mailId === third.mailId, 5000);
  });
});
