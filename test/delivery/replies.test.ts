/** Pure helpers of the delivery stage: reply parsing, xtext, SMTPUTF8 detection, temporary replies. */
import { describe, expect, it } from 'vitest';
import { asTemporary, parseReply } from '../../src/delivery/replies.js';
import { asXtext, needsSmtpUtf8, validReply } from '../../src/delivery/session.js';

describe('parseReply', () => {
  it('reads code, enhanced code and text, multi-line included', () => {
    expect(parseReply('550 5.1.1 No such user')).toEqual({ code: 550, enhanced: '5.1.1', message: 'No such user' });
    expect(parseReply('550-5.1.1 The email account\n550-5.1.1 does not exist.\n550 5.1.1 Try again')).toEqual({ code: 550, enhanced: '5.1.1', message: 'The email account does not exist. Try again' });
    expect(parseReply('250 Ok')).toEqual({ code: 250, message: 'Ok' });
    expect(parseReply('421')).toEqual({ code: 421, message: '' });
  });

  it('does not take a code of another class for the enhanced code', () => {
    expect(parseReply('450 5.1.1 confused server')).toEqual({ code: 450, message: '5.1.1 confused server' });
  });
});

describe('asTemporary', () => {
  it('keeps a 4xx and turns a host-level 5xx into a 4.4.0 deferral that quotes it', () => {
    const temp = { code: 421, enhanced: '4.4.1', message: 'refused' };
    expect(asTemporary(temp, 'x')).toBe(temp);
    expect(asTemporary({ code: 554, enhanced: '5.7.1', message: 'Go away' }, 'all hosts failed')).toEqual({ code: 451, enhanced: '4.4.0', message: 'all hosts failed: 554 5.7.1 Go away' });
  });
});

describe('asXtext (RFC 3461 §4)', () => {
  it('leaves valid xtext alone and encodes what is not', () => {
    expect(asXtext('QQ314159')).toBe('QQ314159');
    expect(asXtext('A+2Bx@orig.test')).toBe('A+2Bx@orig.test');
    expect(asXtext('a b=c+d')).toBe('a+20b+3Dc+2Bd');
  });
});

describe('needsSmtpUtf8', () => {
  it('is true for the flag or any non-ASCII address', () => {
    const m = { smtputf8: false, sender: 'a@b.test', recipients: [{ address: 'c@d.test' }] };
    expect(needsSmtpUtf8(m)).toBe(false);
    expect(needsSmtpUtf8({ ...m, smtputf8: true })).toBe(true);
    expect(needsSmtpUtf8({ ...m, sender: 'jösé@b.test' })).toBe(true);
    expect(needsSmtpUtf8({ ...m, recipients: [{ address: 'c@dö.test' }] })).toBe(true);
  });
});

describe('validReply', () => {
  it('passes SMTP replies through and puts a 421 4.5.0 in place of anything else', () => {
    for (const ok of ['250 Ok', '250', '550 5.1.1 No such user', '250-mx.example\n250-PIPELINING\n250 8BITMIME', '354 go ahead', '421-a\n421 b']) {
      expect(validReply(ok, 'mx[192.0.2.1]:25')).toBe(ok);
    }
    for (const bad of ['hello there', '999 weird', '250-Ok\n550 5.1.1 No', '550-No\n250 Ok', '199 low', '25 short', '250Ok', '250-a\n250-b', '600 high']) {
      const r = validReply(bad, 'mx[192.0.2.1]:25');
      expect(r, bad).toMatch(/^421 4\.5\.0 protocol error with mx\[192\.0\.2\.1\]:25: not an SMTP reply: /);
    }
    expect(validReply('hi\u0000\u001b[31m', 'r')).toBe('421 4.5.0 protocol error with r: not an SMTP reply: hi??[31m');
  });
});
