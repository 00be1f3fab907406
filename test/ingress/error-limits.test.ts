/**
 * smtp.errorLimits, Postfix's smtpd_soft_error_limit / smtpd_hard_error_limit /
 * smtpd_error_sleep_time, against the real server with clients named by a PROXY balancer: a
 * client probing recipients is slowed from the soft limit on and disconnected at the hard one,
 * the count starts again when it delivers a mail, and our own networks and authenticated users
 * are not limited.
 */
import { describe, expect, it } from 'vitest';
import { countsAsClientError, isJunkCommand } from '../../src/ingress/protocol.js';
import type { SmtpClient } from '../helpers/smtp-client.js';
import { balancedIngressPerFile, counter } from './harness.js';

const SLEEP_MS = 400;

async function timed(c: SmtpClient, line: string): Promise<{ code: number; enhanced?: string; text: string; ms: number }> {
  const t0 = performance.now();
  const r = await c.command(line);
  return { ...r, ms: performance.now() - t0 };
}

describe('smtp.errorLimits', () => {
  const t = balancedIngressPerFile({}, { smtp: { errorLimits: { soft: 3, hard: 5, sleep: `${SLEEP_MS}ms`, junk: 4 } } });

  it('answers late from the soft limit on and closes the connection at the hard one, with 421 4.7.0', async () => {
    const before = await counter(t.h.metrics, 'rejectedTotal', { reason: 'errors' });
    const c = await t.from('192.0.2.90', { helo: 'probe.example' });
    expect((await c.command('MAIL FROM:<someone@outside.example>')).code).toBe(250);
    for (let i = 0; i < 3; i++) expect((await c.command(`RCPT TO:<guess${i}@elsewhere.example>`)).code).toBe(554);
    // Three errors: every answer from now on comes SLEEP_MS late.
    const slow = await timed(c, 'RCPT TO:<guess3@elsewhere.example>');
    expect(slow.code).toBe(554);
    expect(slow.ms).toBeGreaterThanOrEqual(SLEEP_MS - 20);
    expect((await c.command('RCPT TO:<guess4@elsewhere.example>')).code).toBe(554);
    // Five errors: the next command is answered 421 and the connection closed.
    const last = await c.command('RCPT TO:<guess5@elsewhere.example>');
    expect([last.code, last.enhanced]).toEqual([421, '4.7.0']);
    expect(last.text).toBe('mx.test.example Error: too many errors');
    await c.waitClosed();
    expect(await counter(t.h.metrics, 'rejectedTotal', { reason: 'errors' })).toBe(before + 1);
    const [r] = t.h.ingress.refusals.page({ client: '192.0.2.90' }).items;
    expect(r).toMatchObject({ reason: 'errors', command: 'RCPT TO:<guess5@elsewhere.example>', helo: 'probe.example', reply: { code: 421, enhanced: '4.7.0' } });
  });

  it('counts from zero again once the client has delivered a mail', async () => {
    const c = await t.from('192.0.2.91');
    expect((await c.command('MAIL FROM:<someone@outside.example>')).code).toBe(250);
    for (let i = 0; i < 4; i++) expect((await c.command(`RCPT TO:<guess${i}@elsewhere.example>`)).code).toBe(554);
    expect((await c.command('RCPT TO:<user@local.example>')).code).toBe(250);
    expect((await c.command('DATA')).code).toBe(354);
    expect((await c.command('Subject: hello\r\n\r\nhi\r\n.')).code).toBe(250);
    // Four errors again: eight in the session, but four since the mail.
    expect((await c.command('MAIL FROM:<someone@outside.example>')).code).toBe(250);
    for (let i = 0; i < 4; i++) expect((await c.command(`RCPT TO:<again${i}@elsewhere.example>`)).code).toBe(554);
    expect((await c.command('RSET')).code).toBe(250);
    expect(c.closed).toBe(false);
  });

  it('counts NOOP, VRFY and RSET beyond the junk limit as errors, from zero again after a mail', async () => {
    const c = await t.from('192.0.2.93');
    for (let i = 0; i < 4; i++) expect((await c.command('NOOP')).code).toBe(250);
    expect((await c.command('MAIL FROM:<someone@outside.example>')).code).toBe(250);
    expect((await c.command('RCPT TO:<user@local.example>')).code).toBe(250);
    expect((await c.command('DATA')).code).toBe(354);
    expect((await c.command('Subject: hello\r\n\r\nhi\r\n.')).code).toBe(250);
    // Four junk commands are free; the next five are errors, and the one after them is refused.
    const codes: number[] = [];
    for (const line of ['RSET', 'noop', 'VRFY someone', 'NOOP', 'RSET', 'NOOP', 'NOOP', 'NOOP', 'NOOP', 'NOOP']) {
      const r = await c.command(line);
      codes.push(r.code);
      if (r.code === 421) break;
    }
    expect(codes).toEqual([250, 250, 252, 250, 250, 250, 250, 250, 250, 421]);
    await c.waitClosed();
  });

  it('leaves clients in relay.networks and authenticated clients alone', async () => {
    const own = await t.from('10.9.8.7');
    const user = await t.from('192.0.2.92', { auth: { user: 'roamer', pass: 'pw-roamer' } });
    for (const c of [own, user]) {
      const t0 = performance.now();
      // Out of sequence: 503 each, eight errors.
      for (let i = 0; i < 8; i++) expect((await c.command(`RCPT TO:<user${i}@local.example>`)).code).toBe(503);
      for (let i = 0; i < 10; i++) expect((await c.command('NOOP')).code).toBe(250);
      expect((await c.command('MAIL FROM:<someone@local.example>')).code).toBe(250);
      // Five of those answers would have waited SLEEP_MS each.
      expect(performance.now() - t0).toBeLessThan(5 * SLEEP_MS);
    }
  });

  it('knows a junk command by its name alone', () => {
    for (const line of ['NOOP', 'noop', 'RSET', 'VRFY alice', 'ETRN example.org', 'NOOP\r\n']) expect(isJunkCommand(Buffer.from(line))).toBe(true);
    for (const line of ['NOOPS', 'MAIL FROM:<a@b>', 'RCPT TO:<a@b>', 'NOO', 'DATA', '']) expect(isJunkCommand(Buffer.from(line))).toBe(false);
  });

  it('does not count 421 or our own trouble (4.3.x) as the client\'s errors', () => {
    expect(countsAsClientError(554, '5.7.1')).toBe(true);
    expect(countsAsClientError(503, '5.5.1')).toBe(true);
    expect(countsAsClientError(450, '4.7.1')).toBe(true);
    expect(countsAsClientError(500, '')).toBe(true);
    expect(countsAsClientError(421, '4.7.0')).toBe(false);
    expect(countsAsClientError(451, '4.3.0')).toBe(false);
    expect(countsAsClientError(452, '4.3.1')).toBe(false);
    expect(countsAsClientError(250, '2.0.0')).toBe(false);
  });
});
