import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logger.js';

/** The built logger (npm test builds first) in a child process logging to its stdout, as the server does. */
function runChild(script: string): { lines: { text: string; at: number }[]; marks: number[]; done: Promise<NodeJS.Signals | number | null>; kill: () => void } {
  const logger = pathToFileURL(join(resolve(import.meta.dirname, '../..'), 'dist/src/logger.js')).href;
  const child = spawn(process.execPath, ['--input-type=module', '-e', `import { createLogger } from ${JSON.stringify(logger)};\n${script}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: { text: string; at: number }[] = [];
  const marks: number[] = [];
  let rest = '';
  child.stdout.on('data', (d: Buffer) => {
    const parts = (rest + d.toString()).split('\n');
    rest = parts.pop()!;
    for (const text of parts) lines.push({ text, at: performance.now() });
  });
  // The child writes "mark" to stderr (unbuffered) to say when something must have happened.
  child.stderr.on('data', (d: Buffer) => { for (const _ of d.toString().matchAll(/mark/g)) marks.push(performance.now()); });
  const done = new Promise<NodeJS.Signals | number | null>((res) => child.on('close', (code, signal) => res(signal ?? code)));
  return { lines, marks, done, kill: () => child.kill('SIGKILL') };
}

function capture(): { lines: Record<string, unknown>[]; stream: Writable } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { lines, stream };
}

describe('logger', () => {
  it('censors credentials at the top level, in child bindings and where the config keeps them', () => {
    const { lines, stream } = capture();
    const log = createLogger({ level: 'info', pretty: null }, stream);
    log.info({ token: 'T1', password: 'P1', pass: 'P2', user: 'alice' }, 'flat');
    log.child({ token: 'T2' }).info('child');
    log.info({ smarthost: { host: 'relay:587', auth: { user: 'u', pass: 'P3' } }, auth: { user: 'u', pass: 'P4' } }, 'smarthost');
    log.info({ delivery: { smarthost: { auth: { user: 'u', pass: 'P5' } } }, kafka: { sasl: { username: 'k', password: 'P6' } }, admin: { token: 'T3' } }, 'config');
    log.info({ sasl: { mechanism: 'plain', password: 'P7' } }, 'sasl');
    const text = JSON.stringify(lines);
    for (const secret of ['T1', 'T2', 'T3', 'P1', 'P2', 'P3', 'P4', 'P5', 'P6', 'P7']) expect(text, secret).not.toContain(`"${secret}"`);
    expect(lines[0]).toMatchObject({ user: 'alice', token: '[redacted]', msg: 'flat' });
    expect(lines[2]).toMatchObject({ smarthost: { host: 'relay:587', auth: { user: 'u', pass: '[redacted]' } } });
    expect(lines[3]).toMatchObject({ kafka: { sasl: { username: 'k', password: '[redacted]' } } });
  });

  it('a level set on the root reaches the child loggers made before it (the stages) and after it (per mail)', async () => {
    // main.ts changes log.level on a reload by setting it on the root only.
    const { lines, stream } = capture();
    const root = createLogger({ level: 'info', pretty: null }, stream);
    const stage = root.child({ stage: 'ingress' });
    const nested = stage.child({ component: 'policy' });
    stage.child({ mailId: 'm0' }).debug('before');
    root.level = 'debug';
    stage.debug('stage');
    nested.debug('nested');
    stage.child({ mailId: 'm1' }).debug('per mail');
    root.level = 'warn';
    stage.info('quiet again');
    nested.info('quiet again');
    await new Promise((r) => setImmediate(r));
    expect(lines.map((l) => l.msg)).toEqual(['stage', 'nested', 'per mail']);
    expect(lines[2]).toMatchObject({ stage: 'ingress', mailId: 'm1', level: 20 });
  });

  it('buffers JSON lines on stdout (log.flushInterval): the timer writes them without more logging, exit writes the rest', async () => {
    const c = runChild(`
      const log = createLogger({ level: 'info', pretty: false, flushMs: 50 });
      log.info('first');
      setTimeout(() => process.stderr.write('mark'), 700);
      setTimeout(() => { for (let i = 0; i < 3; i++) log.info('last ' + i); process.exit(0); }, 800);
    `);
    expect(await c.done).toBe(0);
    const msgs = c.lines.map((l) => (JSON.parse(l.text) as { msg: string }).msg);
    expect(msgs).toEqual(['first', 'last 0', 'last 1', 'last 2']);
    // 'first' came with the timer, well before the mark; the last lines only at exit.
    expect(c.lines[0]!.at).toBeLessThan(c.marks[0]!);
  });

  it('holds lines back until the interval: a kill -9 before it loses them (the documented cost; mail is not in the log)', async () => {
    const c = runChild(`
      const log = createLogger({ level: 'info', pretty: false, flushMs: 60_000 });
      log.info('held');
      process.stderr.write('mark');
      setInterval(() => {}, 1000);
    `);
    await expect.poll(() => c.marks.length).toBe(1);
    await new Promise((r) => setTimeout(r, 300));
    c.kill();
    expect(await c.done).toBe('SIGKILL');
    expect(c.lines).toEqual([]);
  });
});
