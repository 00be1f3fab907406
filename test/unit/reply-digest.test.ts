/** The deferral and bounce detail (pflogsumm's): grouping of real-world replies, the window, the limits. */
import { describe, expect, it } from 'vitest';
import { ReplyDigest, replyShape } from '../../src/scheduler/reply-digest.js';

describe('replyShape', () => {
  it('masks what varies from mail to mail in replies big providers send, and keeps the words', () => {
    const outlook = (ip: string, id: string, at: string) =>
      `Server busy. Please try again later from [${ip}]. (S77714) [BN8NAM12FT0${id}.eop-nam12.prod.protection.outlook.com ${at} 08DC14D38E1F8A1C]`;
    expect(replyShape(outlook('192.0.2.7', '50', '2026-12-04T21:00:00.000Z'))).toBe(replyShape(outlook('198.51.100.9', '61', '2026-12-04T21:07:13.512Z')));
    expect(replyShape(outlook('192.0.2.7', '50', '2026-12-04T21:00:00.000Z'))).toBe('Server busy. Please try again later from <ip>. (#) [# # #]');
    const yahoo = 'Messages from 192.0.2.7 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes';
    // Yahoo's own code after the dash (4.16.55.1) is a dotted quad too, but names the kind of
    // deferral: kept, so that its kinds stay apart; the client's address is masked.
    expect(replyShape(yahoo)).toBe('Messages from <ip> temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes');
    expect(replyShape(yahoo.replace('192.0.2.7', '203.0.113.80'))).toBe(replyShape(yahoo));
    expect(replyShape(yahoo.replace('4.16.55.1', '4.16.56.1'))).not.toBe(replyShape(yahoo));
    // An address after a dash that is not a reply class's code is still an address.
    expect(replyShape('Blocked - 192.0.2.7 listed')).toBe('Blocked - <ip> listed');
    expect(replyShape('<bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table'))
      .toBe(replyShape('<carol@example.com>:   Recipient address rejected: User unknown\r\n in virtual mailbox table'));
    expect(replyShape('<bob@example.com>: Recipient address rejected: User unknown')).toBe('<address>: Recipient address rejected: User unknown');
    // [TSS04] is the kind of the deferral, not an id: kept.
    expect(replyShape('[TSS04] Messages from 192.0.2.7 temporarily deferred')).toBe('[TSS04] Messages from <ip> temporarily deferred');
    expect(replyShape('x'.repeat(500))).toHaveLength(200);
  });
});

describe('ReplyDigest', () => {
  it('sums recipients by outcome, domain and reply shape over the window, most first, with the last one seen', () => {
    let now = 10_000_000;
    const d = new ReplyDigest({ now: () => now });
    const busy = (ip: string) => ({ code: 451, enhanced: '4.7.500', message: `Server busy from [${ip}]` });
    d.record('deferred', 'outlook.example', busy('192.0.2.1'), 'm1');
    d.record('deferred', 'outlook.example', busy('192.0.2.2'), 'm2');
    d.record('failed', 'gmail.example', { code: 550, enhanced: '5.1.1', message: '<a@gmail.example>: no such user' }, 'm3');
    now += 30 * 60_000;
    d.record('deferred', 'outlook.example', busy('192.0.2.3'), 'm4');
    d.record('deferred', 'other.example', busy('192.0.2.3'), 'm5');

    const page = d.top();
    expect(page.total).toBe(5);
    expect(page.windowSeconds).toBe(3600);
    expect(page.rows[0]).toEqual({
      outcome: 'deferred', kind: 'rate-limited', domain: 'outlook.example', reply: { code: 451, enhanced: '4.7.500', message: 'Server busy from <ip>' },
      count: 3, lastAt: now, lastMailId: 'm4', example: 'Server busy from [192.0.2.3]',
    });
    expect(page.rows.map((r) => [r.domain, r.outcome, r.count])).toEqual([['outlook.example', 'deferred', 3], ['other.example', 'deferred', 1], ['gmail.example', 'failed', 1]]);
    // By kind of reply: the throttle's four, the unknown user; and a filter by kind.
    expect(page.byKind).toEqual({ 'invalid-recipient': 1, 'rate-limited': 4 });
    expect(d.top({ kind: 'invalid-recipient' }).rows.map((r) => [r.domain, r.kind])).toEqual([['gmail.example', 'invalid-recipient']]);
    // The last 10 minutes hold only the second burst; filters by outcome and domain.
    expect(d.top({ windowMs: 10 * 60_000 }).rows.map((r) => [r.domain, r.count])).toEqual([['outlook.example', 1], ['other.example', 1]]);
    expect(d.top({ outcome: 'failed' }).rows.map((r) => r.domain)).toEqual(['gmail.example']);
    expect(d.top({ domain: 'OTHER.example' }).total).toBe(1);
    expect(d.top({ limit: 1 }).rows).toHaveLength(1);
    expect(d.top({ limit: 1 }).total).toBe(5);
    // Past the hour the first burst is gone.
    now += 31 * 60_000;
    expect(d.top().rows.map((r) => [r.domain, r.count])).toEqual([['outlook.example', 1], ['other.example', 1]]);
    now += 60 * 60_000;
    expect(d.top()).toEqual({ rows: [], total: 0, byKind: {}, windowSeconds: 3600 });
  });

  it('counts but does not itemise past its number of different replies a minute', () => {
    const d = new ReplyDigest({ maxKeysPerBucket: 3, now: () => 5_000_000 });
    for (let i = 0; i < 5; i++) d.record('failed', `d${i}.example`, { code: 550, message: 'no' }, `m${i}`);
    d.record('failed', 'd0.example', { code: 550, message: 'no' }, 'm9');
    const page = d.top();
    expect(page.rows.map((r) => [r.domain, r.count])).toEqual([['d0.example', 2], ['d1.example', 1], ['d2.example', 1]]);
    expect(page.notItemised).toBe(2);
  });
});
