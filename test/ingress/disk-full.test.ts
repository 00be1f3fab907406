/**
 * Disk full: the spool lives on a small tmpfs that a ballast file nearly fills. Mail is accepted
 * until the disk is full, then refused with 452 4.3.1 / 451 4.3.0 (never 250), the session and the
 * listener keep serving, everything acknowledged before is still there, and once the ballast is
 * removed (space returns) mail is accepted again. Needs root (mount -t tmpfs).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SmtpClient, makeMessage } from '../helpers/smtp-client.js';
import { counter, startIngress, type Harness } from './harness.js';

const TMPFS_MB = 48;

describe('disk full (tmpfs spool)', () => {
  let mountDir: string;
  let h: Harness | undefined;
  let mounted = false;

  beforeAll(() => {
    mountDir = mkdtempSync(join(tmpdir(), 'spoolhouse-tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_MB}m`, 'tmpfs', mountDir]);
    mounted = true;
    mkdirSync(join(mountDir, 'spool'));
  });

  afterAll(async () => {
    await h?.close();
    if (mounted) execFileSync('umount', ['-l', mountDir]);
    rmSync(mountDir, { recursive: true, force: true });
  });

  it('answers 452/451 instead of 250 when the disk is full, and accepts again when space returns', async () => {
    h = await startIngress({ smtp: { maxMessageSize: '2MB' } }, { spoolDir: join(mountDir, 'spool') });
    const c = await SmtpClient.connect({ port: h.port });
    await c.read();
    await c.ehlo();
    const first = await c.sendMail('a@example.org', ['b@example.net'], makeMessage({ subject: 'before' }));
    expect(first.code).toBe(250);

    // Ballast: leave about 3 MB free.
    const free = () => { const s = statfsSync(mountDir); return s.bavail * s.bsize; };
    const ballast = join(mountDir, 'ballast');
    writeFileSync(ballast, Buffer.alloc(Math.max(0, free() - 3 * 1024 * 1024)));

    const big = makeMessage({ subject: 'filler', body: ('z'.repeat(998) + '\r\n').repeat(400) }); // ~400 KB
    const accepted: string[] = [first.text.split(' ').pop()!];
    let refusal;
    for (let i = 0; i < 40; i++) {
      const r = await c.sendMail('a@example.org', ['b@example.net'], big);
      if (r.code === 250) {
        accepted.push(r.text.split(' ').pop()!);
        continue;
      }
      refusal = r;
      break;
    }
    expect(refusal, 'the disk never filled').toBeDefined();
    expect([451, 452]).toContain(refusal!.code);
    expect(['4.3.0', '4.3.1']).toContain(refusal!.enhanced);
    expect(await counter(h.metrics, 'rejectedTotal', { reason: 'storage' })).toBeGreaterThanOrEqual(1);

    // Still serving: the same session answers, a new session is greeted.
    expect((await c.command('NOOP')).code).toBe(250);
    const again = await c.sendMail('a@example.org', ['b@example.net'], big);
    expect(again.code).not.toBe(250);

    // Space returns.
    rmSync(ballast);
    const after = await c.sendMail('a@example.org', ['b@example.net'], makeMessage({ subject: 'after' }));
    expect(after.code).toBe(250);
    accepted.push(after.text.split(' ').pop()!);
    const d = await SmtpClient.connect({ port: h.port });
    expect((await d.read()).code).toBe(220);
    await d.ehlo();
    expect((await d.sendMail('a@example.org', ['b@example.net'], big)).code).toBe(250);
    await d.quit();
    await c.quit();

    // Everything acknowledged is there.
    for (const id of accepted) expect(await h.queue.get(id), id).toBeDefined();
  }, 60_000);
});
