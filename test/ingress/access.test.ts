/**
 * relay.reject over loopback: a client network or a sender refused at MAIL FROM, a recipient at
 * RCPT (the others of the transaction go on), an operator's own reply, trusted and authenticated
 * clients included, and a change applying to sessions already open.
 */
import { describe, expect, it } from 'vitest';
import { rejectAtMail, rejectAtRcpt } from '../../src/ingress/access.js';
import { balancedIngressPerFile, counter } from './harness.js';

describe('relay.reject decisions', () => {
  const entries = [
    { client: ['198.51.100.0/24'] },
    { sender: '*@spam.example', reply: '550 5.7.1 We do not take mail from spam.example' },
    { senderDomain: '*.bulk.example' },
    { sender: '', recipientDomain: 'local.example' },
    { recipient: 'gone@local.example' },
  ];
  it('decides client and sender entries at MAIL FROM, recipient entries at RCPT', () => {
    expect(rejectAtMail(entries, { client: '198.51.100.9', sender: 'a@ok.example' })).toEqual({ code: 554, enhanced: '5.7.1', text: 'Client host [198.51.100.9] rejected: Access denied' });
    expect(rejectAtMail(entries, { client: '192.0.2.1', sender: 'Joe@SPAM.example' })).toEqual({ code: 550, enhanced: '5.7.1', text: 'We do not take mail from spam.example' });
    expect(rejectAtMail(entries, { client: '192.0.2.1', sender: 'x@news.bulk.example' })?.text).toBe('<x@news.bulk.example>: Sender address rejected: Access denied');
    expect(rejectAtMail(entries, { client: '192.0.2.1', sender: '' })).toBeUndefined();
    expect(rejectAtRcpt(entries, { client: '192.0.2.1', sender: '', recipient: 'a@local.example' })?.text).toBe('<a@local.example>: Recipient address rejected: Access denied');
    expect(rejectAtRcpt(entries, { client: '192.0.2.1', sender: 'a@ok.example', recipient: 'a@local.example' })).toBeUndefined();
    expect(rejectAtRcpt(entries, { client: '192.0.2.1', sender: 'a@ok.example', recipient: 'GONE@local.example' })?.code).toBe(554);
  });
});

describe('ingress with relay.reject', () => {
  const t = balancedIngressPerFile({}, {
    relay: {
      reject: [
        { client: '10.9.0.0/16' },
        { sender: '*@spam.example', reply: '550 5.7.1 We do not take mail from spam.example' },
        { recipient: 'gone@local.example' },
      ],
    },
    users: { stolen: 'pw-stolen' },
  });

  const from = (client: string, auth?: { user: string; pass: string }) => t.from(client, auth ? { auth } : {});

  it('refuses a listed client network at MAIL FROM, even inside relay.networks, and counts it', async () => {
    const before = await counter(t.h.metrics, 'rejectedTotal', { reason: 'access' });
    const c = await from('10.9.1.1');
    const r = await c.command('MAIL FROM:<a@ok.example>');
    expect([r.code, r.enhanced, r.text]).toEqual([554, '5.7.1', 'Client host [10.9.1.1] rejected: Access denied']);
    expect(await counter(t.h.metrics, 'rejectedTotal', { reason: 'access' })).toBe(before + 1);
    // Its neighbours in relay.networks relay as before.
    const ok = await from('10.8.1.1');
    expect((await ok.sendMail('a@ok.example', ['x@elsewhere.example'], 'Subject: hi\r\n\r\nhello')).code).toBe(250);
  });

  it('refuses a sender with the reply given, an authenticated one too', async () => {
    const c = await from('192.0.2.1', { user: 'stolen', pass: 'pw-stolen' });
    const r = await c.command('MAIL FROM:<boss@spam.example>');
    expect([r.code, r.enhanced, r.text]).toEqual([550, '5.7.1', 'We do not take mail from spam.example']);
    expect((await c.command('MAIL FROM:<boss@ok.example>')).code).toBe(250);
  });

  it('refuses only the listed recipient; the transaction goes on with the others', async () => {
    const c = await from('192.0.2.2');
    expect((await c.command('MAIL FROM:<a@ok.example>')).code).toBe(250);
    const r = await c.command('RCPT TO:<Gone@local.example>');
    expect([r.code, r.enhanced, r.text]).toEqual([554, '5.7.1', '<Gone@local.example>: Recipient address rejected: Access denied']);
    expect((await c.command('RCPT TO:<here@local.example>')).code).toBe(250);
  });

  it('applies a change to sessions already open', async () => {
    const c = await from('192.0.2.3');
    expect((await c.command('MAIL FROM:<a@newspam.example>')).code).toBe(250);
    expect((await c.command('RSET')).code).toBe(250);
    t.h.update({ relay: { reject: [{ senderDomain: 'newspam.example' }] } });
    try {
      expect((await c.command('MAIL FROM:<a@newspam.example>')).code).toBe(554);
    } finally {
      t.h.update({ relay: { reject: [] } });
    }
  });
});
