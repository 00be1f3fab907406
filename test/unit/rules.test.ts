import { describe, expect, it } from 'vitest';
import { classify, globMatch } from '../../src/config/rules.js';
import { ruleSchema, prioritiesSchema, type Config } from '../../src/config/schema.js';

const priorities = prioritiesSchema.parse({ classes: { urgent: 30, high: 20, normal: 10, bulk: 0 }, default: 'normal', lowPriorityShare: 0.1 });

function config(rules: unknown[]): Pick<Config, 'rules' | 'priorities'> {
  return { priorities, rules: rules.map((r) => ruleSchema.parse(r)) };
}

const base = { sender: 'alice@example.org', recipients: ['bob@example.net'], headers: [] as { name: string; value: string }[], size: 5000 };
const NOW = 1_700_000_000_000;

describe('classify', () => {
  it('gives the default class, no delay, no hold when no rule matches', () => {
    const r = classify(base, config([{ name: 'x', match: { sender: 'nobody@x' }, priority: 'bulk' }]), NOW);
    expect(r).toMatchObject({ priority: 10, priorityName: 'normal', notBefore: NOW, delayMs: 0, hold: false });
    expect(r.rule).toBeUndefined();
    expect(r.classification).toEqual({ priority: { source: 'default' } });
  });

  it('first matching rule wins', () => {
    const c = config([
      { name: 'first', match: { senderDomain: 'example.org' }, priority: 'high' },
      { name: 'second', match: { senderDomain: '*' }, priority: 'bulk' },
    ]);
    const r = classify(base, c, NOW);
    expect(r).toMatchObject({ priority: 20, priorityName: 'high', rule: 'first' });
    expect(r.classification.priority).toEqual({ source: 'rule', rule: 'first' });
  });

  it('matches sender globs case-insensitively and "" only the null sender', () => {
    const c = config([
      { name: 'bounces', match: { sender: '' }, priority: 'bulk' },
      { name: 'alerts', match: { sender: 'ALERTS+*@example.org' }, priority: 'urgent' },
    ]);
    expect(classify({ ...base, sender: '' }, c, NOW).rule).toBe('bounces');
    expect(classify({ ...base, sender: 'alerts+db@Example.ORG' }, c, NOW).rule).toBe('alerts');
    expect(classify({ ...base, sender: 'xalerts+db@example.org' }, c, NOW).rule).toBeUndefined();
  });

  it('senderDomain never matches the null sender', () => {
    const c = config([{ name: 'any', match: { senderDomain: '*' }, priority: 'bulk' }]);
    expect(classify({ ...base, sender: '' }, c, NOW).rule).toBeUndefined();
  });

  it('recipientDomain matches when any recipient matches', () => {
    const c = config([{ name: 'partners', match: { recipientDomain: '*.partner.example' }, delay: '10m' }]);
    const r = classify({ ...base, recipients: ['a@x.example', 'b@mx.partner.example'] }, c, NOW);
    expect(r).toMatchObject({ rule: 'partners', delayMs: 600_000, notBefore: NOW + 600_000, priorityName: 'normal' });
    expect(r.classification).toEqual({ priority: { source: 'default' }, delay: { source: 'rule', rule: 'partners' } });
    expect(classify({ ...base, recipients: ['a@partner.example'] }, c, NOW).rule).toBeUndefined();
  });

  it('authUser needs an authenticated user', () => {
    const c = config([{ name: 'app', match: { authUser: 'app-*' }, priority: 'high' }]);
    expect(classify(base, c, NOW).rule).toBeUndefined();
    expect(classify({ ...base, authUser: 'app-billing' }, c, NOW).rule).toBe('app');
  });

  it('header matches by glob or /regex/ on any header of that name', () => {
    const c = config([
      { name: 'precedence', match: { header: { name: 'precedence', value: 'bulk' } }, priority: 'bulk' },
      { name: 'subject', match: { header: { name: 'Subject', value: '/^\\[urgent\\]/i' } }, priority: 'urgent', hold: false },
    ]);
    expect(classify({ ...base, headers: [{ name: 'Precedence', value: ' Bulk ' }] }, c, NOW).rule).toBe('precedence');
    expect(classify({ ...base, headers: [{ name: 'Subject', value: 'hi' }, { name: 'SUBJECT', value: '[URGENT] db down' }] }, c, NOW).rule).toBe('subject');
    expect(classify({ ...base, headers: [{ name: 'Subject', value: 're: [urgent]' }] }, c, NOW).rule).toBeUndefined();
  });

  it('size bounds are inclusive and accept size strings', () => {
    const c = config([{ name: 'big', match: { minSize: '1MB' }, priority: 'bulk' }, { name: 'small', match: { maxSize: 100 }, priority: 'high' }]);
    expect(classify({ ...base, size: 1024 * 1024 }, c, NOW).rule).toBe('big');
    expect(classify({ ...base, size: 1024 * 1024 - 1 }, c, NOW).rule).toBeUndefined();
    expect(classify({ ...base, size: 100 }, c, NOW).rule).toBe('small');
  });

  it('all match fields of a rule must match', () => {
    const c = config([{ name: 'both', match: { senderDomain: 'example.org', recipientDomain: 'other.example' }, priority: 'bulk' }]);
    expect(classify(base, c, NOW).rule).toBeUndefined();
    expect(classify({ ...base, recipients: ['x@other.example'] }, c, NOW).rule).toBe('both');
  });

  it('hold is reported with its rule', () => {
    const c = config([{ name: 'quarantine', match: { sender: '*@suspicious.example' }, hold: true }]);
    const r = classify({ ...base, sender: 'x@suspicious.example' }, c, NOW);
    expect(r).toMatchObject({ hold: true, rule: 'quarantine', priorityName: 'normal' });
    expect(r.classification.hold).toEqual({ source: 'rule', rule: 'quarantine' });
  });

  it('a rejecting rule gives its reply, and may set nothing else', () => {
    const c = config([{ name: 'invoice-scam', match: { header: { name: 'Subject', value: '*invoice overdue*' } }, reject: '550 5.7.1 Message content rejected' }]);
    const r = classify({ ...base, headers: [{ name: 'Subject', value: 'URGENT: Invoice overdue #1234' }] }, c, NOW);
    expect(r).toMatchObject({ rule: 'invoice-scam', reject: { code: 550, enhanced: '5.7.1', text: 'Message content rejected' } });
    expect(classify(base, c, NOW).reject).toBeUndefined();
    expect(ruleSchema.safeParse({ name: 'x', match: { sender: '*' }, reject: '550 5.7.1 no', hold: true }).success).toBe(false);
    expect(ruleSchema.safeParse({ name: 'x', match: { sender: '*' }, reject: '250 2.0.0 fine' }).success).toBe(false);
    expect(ruleSchema.safeParse({ name: 'x', match: { sender: '*' }, reject: '450 4.7.1 later' }).success).toBe(true);
  });

  it('body matches a glob or /regex/ over the body, made only when a rule asks, once', () => {
    let made = 0;
    const body = () => { made++; return 'Hello,\r\nplease log in at https://phish.example/login\r\n'; };
    const c = config([
      { name: 'by-subject', match: { header: { name: 'Subject', value: 'nothing like this' } }, priority: 'high' },
      { name: 'phish-url', match: { body: '*phish.example/*' }, reject: '550 5.7.1 Message content rejected' },
      { name: 'phish-re', match: { body: '/log\\s+in\\s+at/i' }, hold: true },
    ]);
    expect(classify({ ...base, body }, c, NOW).rule).toBe('phish-url');
    expect(made).toBe(1);
    expect(classify({ ...base, body: 'Please LOG IN AT our site' }, c, NOW).rule).toBe('phish-re');
    expect(classify({ ...base, body: 'nothing to see' }, c, NOW).rule).toBeUndefined();
    made = 0;
    classify({ ...base, body }, config([{ name: 'no-body', match: { sender: 'nobody@*' }, priority: 'high' }]), NOW);
    expect(made).toBe(0);
  });

  it('an invalid regex matches nothing instead of throwing', () => {
    const c = config([{ name: 'bad', match: { header: { name: 'Subject', value: '/(/' } }, priority: 'bulk' }]);
    expect(classify({ ...base, headers: [{ name: 'Subject', value: '(' }] }, c, NOW).rule).toBeUndefined();
  });
});

describe('globMatch', () => {
  it('escapes regex characters and matches whole values', () => {
    expect(globMatch('a.b', 'a.b')).toBe(true);
    expect(globMatch('a.b', 'axb')).toBe(false);
    expect(globMatch('?x*', 'axyz')).toBe(true);
    expect(globMatch('x', 'xx')).toBe(false);
  });
});
