import { describe, expect, it } from 'vitest';
import { buildDsn, planDsn, rfc5322Date, type DsnReport } from '../../src/bounce/index.js';
import type { QueuedMail, RecipientOutcome } from '../../src/queue/types.js';
import { parseDsn as parseDsnMessage, type ParsedDsn } from './parse-dsn.js';

const NOW = Date.UTC(2026, 10, 25, 6, 0, 0);
const ORIGINAL = Buffer.from(
  'Received: from client (client [127.0.0.1]) by mx.test\r\nFrom: a@sender.test\r\nTo: b@dest.test\r\n'
  + 'Subject: hello\r\nMessage-ID: <orig-1@sender.test>\r\n\r\nBody line 1\r\nBody line 2\r\n',
);

function mail(patch: Partial<QueuedMail> = {}): QueuedMail {
  return {
    id: '01JTESTMAIL0000000000000000', state: 'active', sender: 'a@sender.test',
    recipients: [
      { address: 'b@dest.test', status: 'pending', orcpt: 'rfc822;B@Dest.Test' },
      { address: 'c@dest.test', status: 'pending' },
    ],
    size: ORIGINAL.length, receivedAt: NOW - 60_000, priority: 10, notBefore: NOW - 60_000, attempts: 0, history: [],
    dsn: { envid: 'ENV-42' }, smtputf8: false, bodyType: '7BIT', client: { address: '127.0.0.1' },
    classification: { priority: { source: 'default' } }, generation: 2, updatedAt: NOW, ...patch,
  };
}

const policy = { now: NOW, lifetimeMs: 5 * 86_400_000, delayWarningMs: null, postmaster: null };

async function parseDsn(report: DsnReport): Promise<ParsedDsn> {
  const result = await parseDsnMessage(buildDsn(report).body);
  expect(result.partTypes[0]).toBe('text/plain');
  expect(result.partTypes[1]).toBe('message/delivery-status');
  return result;
}

function failedReport(outcomes: RecipientOutcome[], m = mail()): DsnReport {
  const plan = planDsn(m, outcomes, policy);
  if (plan.kind !== 'send') throw new Error('expected a DSN');
  return {
    reportingMta: 'mx.test', queueId: m.id, originalSender: m.sender, to: plan.to, arrivalDate: m.receivedAt,
    envid: m.dsn.envid, recipients: plan.recipients, original: { kind: plan.returnContent, content: plan.returnContent === 'full' ? ORIGINAL : ORIGINAL.subarray(0, ORIGINAL.indexOf('\r\n\r\n') + 2) },
    now: NOW, messageId: 'dsn-1@mx.test',
  };
}

describe('RFC 3464 DSN', () => {
  it('reports a 5xx failure with every field mailparser and a DSN reader need', async () => {
    const outcomes: RecipientOutcome[] = [
      { address: 'b@dest.test', outcome: 'failed', reply: { code: 550, enhanced: '5.1.1', message: 'User unknown' }, remoteHost: 'mx1.dest.test[127.0.0.1]:2525' },
      { address: 'c@dest.test', outcome: 'delivered', reply: { code: 250, enhanced: '2.0.0', message: 'OK' } },
    ];
    const { parsed, blocks, raw } = await parseDsn(failedReport(outcomes));
    expect(parsed.headers.get('content-type')).toMatchObject({ value: 'multipart/report', params: { 'report-type': 'delivery-status' } });
    expect(parsed.subject).toBe('Undelivered Mail Returned to Sender');
    expect(parsed.to).toMatchObject({ value: [{ address: 'a@sender.test' }] });
    expect(parsed.headers.get('auto-submitted')).toBe('auto-replied');
    expect(parsed.text).toContain('<b@dest.test>: host mx1.dest.test said: 550 5.1.1 User unknown');
    expect(blocks).toHaveLength(2); // c@ was delivered and did not ask for SUCCESS
    expect(blocks[0]).toMatchObject({ 'original-envelope-id': 'ENV-42', 'reporting-mta': 'dns; mx.test', 'arrival-date': rfc5322Date(NOW - 60_000) });
    expect(blocks[1]).toMatchObject({
      'final-recipient': 'rfc822; b@dest.test', 'original-recipient': 'rfc822; B@Dest.Test', action: 'failed', status: '5.1.1',
      'remote-mta': 'dns; mx1.dest.test', 'diagnostic-code': 'smtp; 550 5.1.1 User unknown', 'last-attempt-date': rfc5322Date(NOW),
    });
    // RET absent: headers only.
    const headers = parsed.attachments.find((a) => a.contentType === 'text/rfc822-headers');
    expect(headers?.content.toString()).toContain('Message-ID: <orig-1@sender.test>');
    expect(raw).not.toContain('Body line 1');
  });

  it('returns the whole message as message/rfc822 for RET=FULL', async () => {
    const m = mail({ dsn: { ret: 'FULL' } });
    const { parsed, blocks } = await parseDsn(failedReport([{ address: 'c@dest.test', outcome: 'failed', reply: { code: 554, message: 'rejected' } }], m));
    expect(blocks[0]!['original-envelope-id']).toBeUndefined();
    expect(blocks[1]).toMatchObject({ status: '5.0.0', 'diagnostic-code': 'X-Spoolhouse; 554 rejected' });
    const original = parsed.attachments.find((a) => a.contentType === 'message/rfc822');
    expect(original?.content.equals(ORIGINAL)).toBe(true);
  });

  it('reports expiry as failed with 4.4.7 and the last reply', async () => {
    const { blocks } = await parseDsn(failedReport([
      { address: 'b@dest.test', outcome: 'expired', reply: { code: 451, enhanced: '4.3.0', message: 'try later' }, remoteHost: 'mx1.dest.test' },
    ]));
    expect(blocks[1]).toMatchObject({ action: 'failed', status: '4.4.7', 'diagnostic-code': 'smtp; 451 4.3.0 try later' });
  });

  it('folds long diagnostic codes and keeps them one logical line', async () => {
    const long = 'x'.repeat(30) + ' ' + 'word '.repeat(40);
    const { blocks, raw } = await parseDsn(failedReport([{ address: 'b@dest.test', outcome: 'failed', reply: { code: 550, message: `${long}\nsecond line` }, remoteHost: 'mx' }]));
    expect(raw.split('\r\n').every((l) => l.length <= 998)).toBe(true);
    expect(blocks[1]!['diagnostic-code']).toBe(`smtp; 550 ${long.trim()} second line`.replace(/\s+/g, ' '));
  });
});

describe('rfc5322Date', () => {
  it('formats each second, also one asked for again right after another', () => {
    expect(rfc5322Date(Date.UTC(2026, 11, 3, 20, 15, 7, 10))).toBe('Thu, 03 Dec 2026 20:15:07 +0000');
    expect(rfc5322Date(Date.UTC(2026, 11, 3, 20, 15, 7, 990))).toBe('Thu, 03 Dec 2026 20:15:07 +0000');
    expect(rfc5322Date(Date.UTC(2026, 11, 3, 20, 15, 8, 0))).toBe('Thu, 03 Dec 2026 20:15:08 +0000');
    expect(rfc5322Date(NOW)).toBe('Wed, 25 Nov 2026 06:00:00 +0000');
    expect(rfc5322Date(Date.UTC(2026, 11, 3, 20, 15, 8, 500))).toBe('Thu, 03 Dec 2026 20:15:08 +0000');
  });
});

describe('DSN plan (NOTIFY, null sender, delay warnings)', () => {
  const fail = (address: string): RecipientOutcome => ({ address, outcome: 'failed', reply: { code: 550, message: 'no' } });
  const defer = (address: string): RecipientOutcome => ({ address, outcome: 'deferred', reply: { code: 451, message: 'later' } });

  it('NOTIFY=NEVER suppresses, SUCCESS reports relayed, default notifies failures only', () => {
    const m = mail({ recipients: [
      { address: 'b@dest.test', status: 'pending', notify: ['NEVER'] },
      { address: 'c@dest.test', status: 'pending', notify: ['SUCCESS'] },
      { address: 'd@dest.test', status: 'pending' },
    ] });
    expect(planDsn(m, [fail('b@dest.test')], policy)).toEqual({ kind: 'none' });
    const success = planDsn(m, [{ address: 'c@dest.test', outcome: 'delivered', reply: { code: 250, message: 'ok' } }], policy);
    expect(success).toMatchObject({ kind: 'send', to: 'a@sender.test', recipients: [{ address: 'c@dest.test', action: 'relayed', status: '2.0.0' }] });
    expect(planDsn(m, [{ address: 'd@dest.test', outcome: 'delivered' }], policy)).toEqual({ kind: 'none' });
    expect(planDsn(m, [fail('c@dest.test')], policy)).toEqual({ kind: 'none' }); // NOTIFY=SUCCESS only
    expect(planDsn(m, [fail('d@dest.test')], policy)).toMatchObject({ kind: 'send', recipients: [{ action: 'failed' }] });
  });

  it('one DSN covers every failed recipient of the attempt', () => {
    const plan = planDsn(mail(), [fail('b@dest.test'), fail('c@dest.test')], policy);
    expect(plan).toMatchObject({ kind: 'send', recipients: [{ address: 'b@dest.test' }, { address: 'c@dest.test' }] });
  });

  it('never bounces a bounce: dropped, or to the postmaster when configured', () => {
    const bounce = mail({ sender: '' });
    expect(planDsn(bounce, [fail('b@dest.test')], policy)).toMatchObject({ kind: 'drop' });
    expect(planDsn(bounce, [defer('b@dest.test')], { ...policy, delayWarningMs: 0 })).toEqual({ kind: 'none' });
    expect(planDsn(bounce, [fail('b@dest.test')], { ...policy, postmaster: 'postmaster@mx.test' }))
      .toMatchObject({ kind: 'send', to: 'postmaster@mx.test', returnContent: 'headers' });
  });

  it('sends a delay warning once, after delayWarning, with Will-Retry-Until', async () => {
    const m = mail();
    expect(planDsn(m, [defer('b@dest.test')], { ...policy, delayWarningMs: 120_000 })).toEqual({ kind: 'none' });
    const plan = planDsn(m, [defer('b@dest.test')], { ...policy, delayWarningMs: 30_000 });
    expect(plan).toMatchObject({ kind: 'send', delayWarning: true, recipients: [{ action: 'delayed', status: '4.0.0', willRetryUntil: m.receivedAt + policy.lifetimeMs }] });
    expect(planDsn({ ...m, delayWarnedAt: NOW - 1 }, [defer('b@dest.test')], { ...policy, delayWarningMs: 30_000 })).toEqual({ kind: 'none' });
    const { parsed, blocks } = await parseDsn({
      reportingMta: 'mx.test', queueId: m.id, originalSender: m.sender, to: m.sender, arrivalDate: m.receivedAt,
      recipients: (plan as Extract<typeof plan, { kind: 'send' }>).recipients, original: { kind: 'headers', content: ORIGINAL.subarray(0, 40) }, now: NOW, messageId: 'x@mx.test',
    });
    expect(parsed.subject).toBe('Delayed Mail (still being retried)');
    expect(blocks[1]).toMatchObject({ action: 'delayed', 'will-retry-until': rfc5322Date(m.receivedAt + policy.lifetimeMs) });
  });
});
