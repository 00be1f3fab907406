/**
 * smtp.inFlowDelay through the built server process (dist/src/main.js): when delivery holds as
 * much reserved mail as it may (its remote stalls), a new mail's MAIL FROM waits up to the delay
 * and the mail is then accepted; nothing is refused. Before that point mail is not slowed down.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterEach, describe, expect, it } from 'vitest';
import { deliveringServerOverlay, sendNumbered } from '../helpers/e2e.js';
import { startReceiver } from '../helpers/receiver.js';
import { startServer } from '../helpers/server-process.js';
import { waitFor } from '../scheduler/harness.js';

const TOKEN = 'in-flow-test-operator-token-0123456789';
const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function message(seq: number): Buffer {
  return Buffer.from(`From: a@origin.test\r\nTo: user@dest.test\r\nSubject: in-flow ${seq}\r\nX-Seq: ${seq}\r\n\r\nbody ${seq}\r\n`);
}

describe('ingress: in-flow control', () => {
  it('MAIL FROM waits up to smtp.inFlowDelay while delivery holds its limit, and the mail is accepted', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-in-flow-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    // The remote never answers the final ".": every delivery stays in flight.
    const rx = await startReceiver({ script: { dataEnd: 'stall' } });
    cleanups.push(() => rx.close());
    const overlay = deliveringServerOverlay({
      rx, spoolDir: join(dir, 'spool'),
      // heldMailLimit: max(100, 4 × 10) = 100 reserved mails.
      delivery: { concurrency: 10, timeouts: { connect: '10s', greeting: '10s', command: '10s', data: '10m' } },
      extra: { admin: { listen: '127.0.0.1:0', token: TOKEN } },
    });
    (overlay.smtp as Record<string, unknown>).inFlowDelay = '1500ms';
    const server = await startServer({ config: { dir, overlay } });
    cleanups.push(() => server.kill9());
    const { port } = server.smtp[0]!;

    const t0 = Date.now();
    const first = await sendNumbered(port, 100, { connections: 5, message });
    expect(first.size).toBe(100);
    // 100 mails went in well under the 100 × 1.5 s they would take if each had waited.
    expect(Date.now() - t0).toBeLessThan(15_000);

    const active = async () => {
      const res = await fetch(`${server.adminUrl}/api/stats`, { headers: { authorization: `Bearer ${TOKEN}` } });
      return ((await res.json()) as { byState: Record<string, number> }).byState.active ?? 0;
    };
    await waitFor('delivery holding 100 mails', async () => (await active()) >= 100);

    const t = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
    const t1 = Date.now();
    const info = await t.sendMail({ envelope: { from: 'a@origin.test', to: ['user@dest.test'] }, raw: message(100) });
    const waited = Date.now() - t1;
    t.close();
    expect(info.response).toMatch(/^250 /);
    expect(waited).toBeGreaterThanOrEqual(1_400);
    expect(waited).toBeLessThan(5_000);
    await server.waitForLog((l) => String(l.msg).startsWith('delivery is behind'), 5_000);
    const metrics = await (await fetch(`${server.adminUrl}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
    expect(metrics).toMatch(/^spoolhouse_in_flow_waits_total 1$/m);
  });
});
