/**
 * Unit tests of the pure parts of the ingress: RFC 5321 path/parameter parsing, ESMTP extension
 * syntax (MT-PRIORITY, FUTURERELEASE, DSN), session policy and the message transformations.
 */
import { describe, expect, it } from 'vitest';
import { ruleSchema } from '../../src/config/schema.js';
import { loadConfig } from '../../src/config/load.js';
import { classify } from '../../src/config/rules.js';
import {
  buildReceivedHeader, decodeEncodedWords, finalizeMessage, normalizeLineEndings, parseHeaderBlock, scanLineEndings,
} from '../../src/ingress/message.js';
import {
  admissionDecision, isTrustedAddress, mtPriorityClass, placeMail, rejectionReason, relayDecision, senderRequestDecision,
} from '../../src/ingress/policy.js';
import { checkMailParameters, checkRcptParameters, parseHoldUntil, parsePathCommand } from '../../src/ingress/protocol.js';

describe('parsePathCommand', () => {
  it('parses addresses and parameters', () => {
    expect(parsePathCommand('MAIL FROM', 'MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME SMTPUTF8')).toEqual({
      address: 'a@example.org', args: { SIZE: '10', BODY: '8BITMIME', SMTPUTF8: true },
    });
    expect(parsePathCommand('MAIL FROM', 'mail from: <>')).toEqual({ address: '', args: false });
    expect(parsePathCommand('RCPT TO', 'RCPT TO:<Postmaster>')).toEqual({ address: 'Postmaster', args: false });
    expect(parsePathCommand('RCPT TO', 'RCPT TO:<>')).toBeUndefined();
  });

  it('accepts quoted local parts with spaces, escapes and angle brackets', () => {
    expect(parsePathCommand('MAIL FROM', 'MAIL FROM:<"john doe"@example.org>')?.address).toBe('"john doe"@example.org');
    expect(parsePathCommand('MAIL FROM', 'MAIL FROM:<"a>b\\"c"@example.org> SIZE=1')?.address).toBe('"a>b\\"c"@example.org');
    expect(parsePathCommand('MAIL FROM', 'MAIL FROM:<"unterminated@example.org>')).toBeUndefined();
  });

  it('drops source routes and accepts address literals', () => {
    expect(parsePathCommand('RCPT TO', 'RCPT TO:<@a.example,@b.example:u@c.example>')?.address).toBe('u@c.example');
    expect(parsePathCommand('RCPT TO', 'RCPT TO:<u@[192.0.2.1]>')?.address).toBe('u@[192.0.2.1]');
    expect(parsePathCommand('RCPT TO', 'RCPT TO:<u@[IPv6:::1]>')?.address).toBe('u@[IPv6:::1]');
    expect(parsePathCommand('RCPT TO', 'RCPT TO:<u@[300.1.1.1]>')).toBeUndefined();
    expect(parsePathCommand('RCPT TO', 'RCPT TO:<u@[IPv6:zz::1]>')).toBeUndefined();
  });

  it('limits the path to 256 octets counted in UTF-8', () => {
    const domain = 'x'.repeat(60) + '.' + 'y'.repeat(60) + '.example';
    const ok = 'a'.repeat(256 - 3 - domain.length);
    expect(parsePathCommand('RCPT TO', `RCPT TO:<${ok}@${domain}>`)).toBeDefined();
    expect(parsePathCommand('RCPT TO', `RCPT TO:<${ok}a@${domain}>`)).toBeUndefined();
    const utf8 = 'ä'.repeat(Math.floor((256 - 3 - domain.length) / 2) + 1);
    expect(parsePathCommand('RCPT TO', `RCPT TO:<${utf8}@${domain}>`)).toBeUndefined();
  });

  it('refuses malformed addresses and parameters', () => {
    for (const line of ['MAIL FROM:a@b.example', 'MAIL FROM:<a@b.example', 'MAIL FROM:<a..b@c.example>', 'MAIL FROM:<.a@c.example>', 'MAIL FROM:<a@c..example>',
      'MAIL FROM:<a@-c.example>', 'MAIL FROM:<a@c.example>SIZE=1', 'MAIL FROM:<a@c.example> =1', 'MAIL FROM:<a@c.example> SIZE=a=b', 'RCPT TO:<a@c.example>', 'MAIL FROM:<a@>']) {
      expect(parsePathCommand('MAIL FROM', line), line).toBeUndefined();
    }
  });

  it('reports duplicate parameters', () => {
    expect(parsePathCommand('MAIL FROM', 'MAIL FROM:<a@b.example> SIZE=1 size=2')?.duplicate).toBe('SIZE');
  });
});

describe('parameter checks', () => {
  const mail = (line: string) => checkMailParameters(parsePathCommand('MAIL FROM', line)!);
  it('answers 555 5.5.4 for unknown parameters', () => {
    expect(mail('MAIL FROM:<a@b.example> X-FOO=1')).toMatchObject({ code: 555, enhanced: '5.5.4' });
    expect(checkRcptParameters(parsePathCommand('RCPT TO', 'RCPT TO:<a@b.example> SIZE=1')!, false)).toMatchObject({ code: 555 });
    expect(mail('MAIL FROM:<a@b.example> SIZE=1 BODY=7BIT RET=FULL ENVID=x AUTH=<> MT-PRIORITY=1 HOLDFOR=5')).toBeUndefined();
  });
  it('answers 553 5.6.7 for non-ASCII addresses without SMTPUTF8', () => {
    expect(mail('MAIL FROM:<ü@b.example>')).toMatchObject({ code: 553, enhanced: '5.6.7' });
    expect(mail('MAIL FROM:<ü@b.example> SMTPUTF8')).toBeUndefined();
    expect(checkRcptParameters(parsePathCommand('RCPT TO', 'RCPT TO:<a@bü.example>')!, false)).toMatchObject({ code: 553 });
    expect(checkRcptParameters(parsePathCommand('RCPT TO', 'RCPT TO:<a@bü.example>')!, true)).toBeUndefined();
  });
  it('checks MT-PRIORITY, HOLDFOR, HOLDUNTIL and ENVID syntax', () => {
    for (const bad of ['MT-PRIORITY=10', 'MT-PRIORITY=x', 'MT-PRIORITY', 'HOLDFOR=-1', 'HOLDFOR=1.5', 'HOLDUNTIL=tomorrow', 'HOLDFOR=1 HOLDUNTIL=2030-01-01T00:00:00Z', `ENVID=${'x'.repeat(101)}`, 'ENVID=a+0D+0Ab']) {
      expect(mail(`MAIL FROM:<a@b.example> ${bad}`), bad).toMatchObject({ code: 501, enhanced: '5.5.4' });
    }
    expect(mail('MAIL FROM:<a@b.example> MT-PRIORITY=-9')).toBeUndefined();
    expect(mail('MAIL FROM:<a@b.example> MT-PRIORITY=+3')).toBeUndefined();
    expect(parseHoldUntil('2030-01-01T01:00:00+01:00')).toBe(Date.parse('2030-01-01T00:00:00Z'));
  });
});

describe('policy', () => {
  it('trusts relay.networks, including IPv4-mapped IPv6 clients', () => {
    const nets = ['127.0.0.0/8', '::1/128', '10.0.0.0/8'];
    expect(isTrustedAddress('127.0.0.1', nets)).toBe(true);
    expect(isTrustedAddress('::ffff:10.1.2.3', nets)).toBe(true);
    expect(isTrustedAddress('::1', nets)).toBe(true);
    expect(isTrustedAddress('::ffff:192.0.2.1', nets)).toBe(false);
    expect(isTrustedAddress('2001:db8::1', nets)).toBe(false);
    expect(isTrustedAddress('not-an-ip', nets)).toBe(false);
  });

  it('is never an open relay', () => {
    const relayDomains = ['local.example'];
    expect(relayDecision({ recipient: 'a@local.example', trusted: false, relayDomains })).toBeUndefined();
    expect(relayDecision({ recipient: 'a@LOCAL.example.', trusted: false, relayDomains })).toBeUndefined();
    expect(relayDecision({ recipient: 'a@sub.local.example', trusted: false, relayDomains })).toMatchObject({ code: 554, enhanced: '5.7.1' });
    expect(relayDecision({ recipient: 'a@bücher.example', trusted: false, relayDomains: ['xn--bcher-kva.example'] })).toBeUndefined();
    expect(relayDecision({ recipient: 'a@outside.example', trusted: false, relayDomains })).toMatchObject({ code: 554, enhanced: '5.7.1' });
    expect(relayDecision({ recipient: 'a@outside.example', trusted: true, relayDomains })).toBeUndefined();
    expect(relayDecision({ recipient: 'a@outside.example', trusted: false, authUser: 'u', relayDomains })).toBeUndefined();
  });

  it('admits connections within both limits', () => {
    expect(admissionDecision({ total: 3, fromClient: 1, maxConnections: 3, maxConnectionsPerClient: 1 })).toBeUndefined();
    expect(admissionDecision({ total: 4, fromClient: 1, maxConnections: 3, maxConnectionsPerClient: 5 })).toMatchObject({ code: 421, enhanced: '4.7.0' });
    expect(admissionDecision({ total: 2, fromClient: 2, maxConnections: 3, maxConnectionsPerClient: 1 })).toMatchObject({ code: 421, enhanced: '4.7.0' });
  });

  it('maps MT-PRIORITY through smtp.mtPriority thresholds', () => {
    const mapping = { urgent: 6, high: 2, normal: -3, bulk: -9 };
    expect([9, 6, 5, 2, 1, -3, -4, -9].map((v) => mtPriorityClass(v, mapping))).toEqual(['urgent', 'urgent', 'high', 'high', 'normal', 'normal', 'bulk', 'bulk']);
    expect(mtPriorityClass(-9, { high: 0 })).toBeUndefined();
  });

  it('accepts sender requests only from trusted or authenticated clients, within bounds', () => {
    const now = 1_000_000;
    const o = { trusted: false, maxFutureReleaseMs: 3_600_000, now };
    expect(senderRequestDecision({ 'MT-PRIORITY': '3' }, o)).toMatchObject({ refusal: { code: 550, enhanced: '5.7.1' } });
    expect(senderRequestDecision({ HOLDFOR: '3' }, o)).toMatchObject({ refusal: { code: 550, enhanced: '5.7.1' } });
    expect(senderRequestDecision({ 'MT-PRIORITY': '3', HOLDFOR: '60' }, { ...o, authUser: 'u' })).toEqual({ requests: { mtPriority: 3, releaseAt: now + 60_000, releaseDetail: 'HOLDFOR=60' } });
    expect(senderRequestDecision({ HOLDFOR: '3601' }, { ...o, trusted: true })).toMatchObject({ refusal: { code: 501, enhanced: '5.5.4' } });
    // A HOLDUNTIL in the past means "now".
    expect(senderRequestDecision({ HOLDUNTIL: '1970-01-01T00:00:00Z' }, { ...o, trusted: true })).toMatchObject({ requests: { releaseAt: now } });
    expect(senderRequestDecision(false, o)).toEqual({ requests: {} });
  });

  it('places mail: rules first, then MT-PRIORITY replaces the class and FUTURERELEASE only moves later', () => {
    const config = loadTestConfig();
    const rules = classify({ sender: 'a@b.example', recipients: ['c@d.example'], headers: [{ name: 'Precedence', value: 'bulk' }], size: 10 }, config, 1000);
    expect(rules.rule).toBe('bulk');
    const p = placeMail(rules, { mtPriority: 7, releaseAt: 1000 + 60_000, releaseDetail: 'HOLDFOR=60' }, config);
    expect(p.priority).toBe(30);
    expect(p.notBefore).toBe(1000 + 600_000); // the rule's 10 minutes beat the 60 s asked for
    expect(p.classification.delay).toEqual({ source: 'rule', rule: 'bulk' });
    expect(p.hold).toEqual({ reason: 'rule bulk' });
    const later = placeMail(rules, { releaseAt: 1000 + 3_600_000, releaseDetail: 'HOLDFOR=3600' }, config);
    expect(later.notBefore).toBe(1000 + 3_600_000);
    expect(later.classification.delay).toEqual({ source: 'futurerelease', detail: 'HOLDFOR=3600' });
    expect(later.priority).toBe(0);
  });

  it('names rejection reasons for metrics', () => {
    expect(rejectionReason(554, '5.7.1')).toBe('relay');
    expect(rejectionReason(552, '5.3.4')).toBe('size');
    expect(rejectionReason(452, '4.5.3')).toBe('recipients');
    expect(rejectionReason(452, '4.3.1')).toBe('storage');
    expect(rejectionReason(421, '4.7.0')).toBe('connections');
    expect(rejectionReason(421, '4.4.2')).toBe('timeout');
    expect(rejectionReason(501, '5.5.4')).toBe('syntax');
    expect(rejectionReason(550, '5.5.2')).toBe('bare_line_ending');
  });
});

describe('message', () => {
  it('finds and normalizes bare CR and bare LF', () => {
    const buf = Buffer.from('a\r\nb\nc\rd\r\r\ne\n\r');
    expect(scanLineEndings(buf)).toEqual({ bareLf: 2, bareCr: 3 });
    expect(normalizeLineEndings(buf).toString()).toBe('a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\n');
    expect(scanLineEndings(Buffer.from('clean\r\n'))).toEqual({ bareLf: 0, bareCr: 0 });
  });

  it('parses and unfolds headers, decodes encoded words', () => {
    const block = parseHeaderBlock(Buffer.from('Subject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n =?ISO-8859-1?Q?_caf=E9?=\r\nX-A: 1\r\n\r\nbody\r\n'));
    expect(block.headers).toEqual([{ name: 'Subject', value: '=?UTF-8?B?R3LDvMOfZQ==?= =?ISO-8859-1?Q?_caf=E9?=' }, { name: 'X-A', value: '1' }]);
    expect(decodeEncodedWords(block.headers[0]!.value)).toBe('Grüße café');
    expect(block.hasSeparator).toBe(true);
  });

  it('adds a Message-ID only when missing and prepends Received', () => {
    const received = 'Received: x\r\n';
    const without = finalizeMessage(Buffer.from('Subject: s\r\n\r\nbody\r\n'), received, 'ID1', 'mx.example');
    expect(without.body.toString()).toBe('Received: x\r\nSubject: s\r\nMessage-ID: <ID1@mx.example>\r\n\r\nbody\r\n');
    expect(without).toMatchObject({ messageId: '<ID1@mx.example>', messageIdAdded: true, subject: 's' });
    const noHeaders = finalizeMessage(Buffer.from('just a body\r\n'), received, 'ID2', 'mx.example');
    expect(noHeaders.body.toString()).toBe('Received: x\r\nMessage-ID: <ID2@mx.example>\r\n\r\njust a body\r\n');
    const withId = finalizeMessage(Buffer.from('Message-ID: <a@b>\r\n\r\nx'), received, 'ID3', 'mx.example');
    expect(withId.body.toString()).toBe('Received: x\r\nMessage-ID: <a@b>\r\n\r\nx');
    expect(withId.messageIdAdded).toBe(false);
  });

  it('builds a Received header that nothing from the client can break', () => {
    const h = buildReceivedHeader({
      helo: 'evil\r\nX-Injected: 1', clientHostname: 'host.example', clientAddress: '192.0.2.1', hostname: 'mx.example', protocol: 'ESMTPS',
      tls: { protocol: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256' }, mailId: 'ID', recipients: ['a@b.example'], at: Date.UTC(2026, 10, 25, 6, 0, 0),
    });
    expect(h).toBe('Received: from evil??X-Injected:?1 (host.example [192.0.2.1])\r\n\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n\tby mx.example (Spoolhouse) with ESMTPS id ID\r\n\tfor <a@b.example>; Wed, 25 Nov 2026 06:00:00 +0000\r\n');
  });
});

function loadTestConfig() {
  const base = loadConfig(undefined).config;
  return { ...base, rules: [ruleSchema.parse({ name: 'bulk', match: { header: { name: 'Precedence', value: 'bulk' } }, priority: 'bulk', delay: '10m', hold: true })] };
}
