import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logger.js';

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
});
