/**
 * The SMTP transaction against a real scripted receiver (via a route, so no DNS): per-recipient
 * outcomes, SIZE, SMTPUTF8, 8BITMIME, DSN parameters, connection reuse with RSET, timeouts on a
 * stalled server, the stillWanted() abort before the final ".", and byte-for-byte bodies.
 */
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { WHOLE_BODY_BYTES } from '../../src/delivery/session.js';
import { outbound, receiversPerTest, routedTo } from './harness.js';

const { receiver } = receiversPerTest();

describe('per-recipient outcomes', () => {
  it('maps RCPT replies 250/450/550 to delivered/deferred/failed, with the remote\'s reply', async () => {
    const rx = await receiver({ script: { rcpt: { 'busy@dest.test': '450 4.2.1 Mailbox busy', 'gone@dest.test': '550 5.1.1 No such user here' } } });
    const { deliverer, dest } = await routedTo(rx);
    const [result] = await deliverer.deliver(dest, [outbound({ to: ['ok@dest.test', 'busy@dest.test', 'gone@dest.test', 'ok2@dest.test'] })]);
    expect(result!.recipients.map((r) => [r.address, r.outcome, r.reply.code, r.reply.enhanced])).toEqual([
      ['ok@dest.test', 'delivered', 250, '2.0.0'],
      ['busy@dest.test', 'deferred', 450, '4.2.1'],
      ['gone@dest.test', 'failed', 550, '5.1.1'],
      ['ok2@dest.test', 'delivered', 250, '2.0.0'],
    ]);
    expect(result!.recipients[1]!.reply.message).toBe('Mailbox busy');
    expect(rx.connections[0]!.refusedRecipients.map((r) => r.address)).toEqual(['busy@dest.test', 'gone@dest.test']);
    expect(rx.accepted()).toHaveLength(1);
    expect(rx.accepted()[0]!.rcptTo.map((r) => r.address)).toEqual(['ok@dest.test', 'ok2@dest.test']);
  });

  it('applies the reply to the final "." to the accepted recipients only', async () => {
    for (const [dataEnd, outcome] of [['452 4.3.1 Insufficient system storage', 'deferred'], ['554 5.6.0 Message rejected as spam', 'failed']] as const) {
      const rx = await receiver({ script: { rcpt: { 'gone@dest.test': '550 5.1.1 No such user' }, dataEnd } });
      const { deliverer, dest } = await routedTo(rx);
      const [result] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test', 'gone@dest.test'] })]);
      expect(result!.recipients.map((r) => [r.outcome, r.reply.code])).toEqual([[outcome, Number(dataEnd.slice(0, 3))], ['failed', 550]]);
    }
  });

  it('fails or defers per recipient when every recipient is refused, and keeps the connection usable', async () => {
    const rx = await receiver({ script: { rcpt: (a) => (a.startsWith('no') ? '550 5.1.1 Unknown' : a.startsWith('later') ? '451 4.7.1 Greylisted' : undefined) } });
    const { deliverer, dest } = await routedTo(rx);
    const results = await deliverer.deliver(dest, [outbound({ to: ['no1@dest.test', 'later@dest.test'] }), outbound({ to: ['yes@dest.test'] })]);
    expect(results[0]!.recipients.map((r) => r.outcome)).toEqual(['failed', 'deferred']);
    expect(results[1]!.recipients.map((r) => r.outcome)).toEqual(['delivered']);
    expect(rx.acceptedConnections).toBe(1);
    // The refused transaction was reset before the next one (RFC 5321 §4.1.1.5).
    const commands = rx.connections[0]!.commands;
    expect(commands.filter((c) => c === 'RSET')).toHaveLength(1);
    const mails = commands.flatMap((c, i) => (c.startsWith('MAIL FROM') ? [i] : []));
    expect(mails).toHaveLength(2);
    expect(commands.indexOf('RSET')).toBeGreaterThan(mails[0]!);
    expect(commands.indexOf('RSET')).toBeLessThan(mails[1]!);
  });
});

describe('envelopes', () => {
  it('sends a bounce with the null reverse-path', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const [r] = await deliverer.deliver(dest, [outbound({ sender: '', to: ['a@dest.test'] })]);
    expect(r!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.connections[0]!.commands.find((c) => c.startsWith('MAIL'))).toMatch(/^MAIL FROM:<>/);
  });
});

describe('ESMTP extensions', () => {
  it('does not send a message larger than the remote\'s SIZE: 5.3.4 for its recipients, others go on', async () => {
    const rx = await receiver({ size: 1000 });
    const { deliverer, dest } = await routedTo(rx);
    const big = outbound({ to: ['a@dest.test', 'b@dest.test'], body: `Subject: big\r\n\r\n${'x'.repeat(2000)}\r\n` });
    const small = outbound({ to: ['a@dest.test'] });
    const [r1, r2] = await deliverer.deliver(dest, [big, small]);
    expect(r1!.recipients.map((r) => [r.outcome, r.reply.code, r.reply.enhanced])).toEqual([['failed', 552, '5.3.4'], ['failed', 552, '5.3.4']]);
    expect(r2!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.transactions).toHaveLength(1);
    expect(rx.connections[0]!.commands.filter((c) => c.startsWith('MAIL FROM'))).toEqual([`MAIL FROM:<a@sender.test> SIZE=${small.size}`]);
  });

  it('fails with 5.6.7 a message needing SMTPUTF8 when the remote does not offer it', async () => {
    const rx = await receiver({ smtputf8: false });
    const { deliverer, dest } = await routedTo(rx);
    const utf8Header = outbound({ to: ['a@dest.test'], smtputf8: true, body: 'Subject: Grüße\r\n\r\nHallo\r\n' });
    const utf8Address = outbound({ to: ['jürgen@dest.test'] });
    const ascii = outbound({ to: ['a@dest.test'] });
    const [r1, r2, r3] = await deliverer.deliver(dest, [utf8Header, utf8Address, ascii]);
    for (const r of [r1!, r2!]) expect(r.recipients[0]).toMatchObject({ outcome: 'failed', reply: { code: 550, enhanced: '5.6.7', message: expect.stringMatching(/SMTPUTF8 is required/) } });
    expect(r3!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.transactions).toHaveLength(1);
  });

  it('declares SMTPUTF8 and BODY=8BITMIME when offered and needed', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const body = Buffer.from('Subject: Grüße\r\n\r\nHällo\r\n', 'utf8');
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'], smtputf8: true, bodyType: '8BITMIME', body })]);
    expect(r!.recipients[0]!.outcome).toBe('delivered');
    const tx = rx.accepted()[0]!;
    expect(tx.mailFrom.args).toMatchObject({ SMTPUTF8: true, BODY: '8BITMIME' });
    expect(tx.data.equals(body)).toBe(true);
  });

  it('sends an 8-bit body as is to a server without 8BITMIME (no BODY parameter)', async () => {
    const rx = await receiver({ eightBitMime: false });
    const { deliverer, dest } = await routedTo(rx);
    const body = Buffer.from('Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xe9t\xe9\r\n', 'latin1');
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'], bodyType: '8BITMIME', body })]);
    expect(r!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.accepted()[0]!.mailFrom.args.BODY).toBeUndefined();
    expect(rx.accepted()[0]!.data.equals(body)).toBe(true);
  });

  it('passes DSN parameters on (RET, ENVID per message; NOTIFY, ORCPT per recipient) when DSN is offered', async () => {
    const rx = await receiver({ dsn: true });
    const { deliverer, dest } = await routedTo(rx);
    const msg = outbound({
      to: [{ address: 'a@dest.test', notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;A+2Bx@orig.test' }, { address: 'b@dest.test', notify: ['NEVER'] }, { address: 'c@dest.test' }],
      dsn: { ret: 'HDRS', envid: 'QQ314159' },
    });
    const [r] = await deliverer.deliver(dest, [msg]);
    expect(r!.recipients.map((x) => [x.outcome, x.remoteDsn])).toEqual([['delivered', true], ['delivered', true], ['delivered', true]]);
    const tx = rx.accepted()[0]!;
    expect(tx.mailFrom.args).toMatchObject({ RET: 'HDRS', ENVID: 'QQ314159' });
    expect(tx.rcptTo.map((x) => x.args)).toEqual([
      // smtp-server decodes the xtext; the raw command is checked below.
      expect.objectContaining({ NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;A+x@orig.test' }),
      expect.objectContaining({ NOTIFY: 'NEVER' }),
      {},
    ]);
    const commands = rx.connections[0]!.commands;
    expect(commands).toContain('RCPT TO:<a@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2Bx@orig.test');
  });

  it('leaves DSN parameters out when the remote does not offer DSN', async () => {
    const rx = await receiver({ dsn: false });
    const { deliverer, dest } = await routedTo(rx);
    const [r] = await deliverer.deliver(dest, [outbound({ to: [{ address: 'a@dest.test', notify: ['SUCCESS'], orcpt: 'rfc822;a@dest.test' }], dsn: { ret: 'FULL', envid: 'X1' } })]);
    // Delivered without DSN: the scheduler owes the sender a "relayed" notice for NOTIFY=SUCCESS.
    expect(r!.recipients[0]).toMatchObject({ outcome: 'delivered', remoteDsn: false });
    const commands = rx.connections[0]!.commands;
    expect(commands.find((c) => c.startsWith('MAIL'))).not.toMatch(/RET=|ENVID=/);
    expect(commands.find((c) => c.startsWith('RCPT'))).toBe('RCPT TO:<a@dest.test>');
  });

  it('pipelines the envelope when offered, and waits for each reply when not', async () => {
    for (const pipelining of [true, false]) {
      const rx = await receiver({ pipelining, script: { rcpt: { 'no@dest.test': '550 5.1.1 Unknown' } } });
      const { deliverer, dest } = await routedTo(rx);
      const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test', 'no@dest.test', 'b@dest.test'] })]);
      expect(r!.recipients.map((x) => x.outcome), `pipelining ${pipelining}`).toEqual(['delivered', 'failed', 'delivered']);
    }
  });

  it('says EHLO with delivery.heloName, else smtp.hostname', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx, { heloName: 'helo.spoolhouse.test' });
    await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(rx.connections[0]!.heloName).toBe('helo.spoolhouse.test');
    const second = await routedTo(rx, { heloName: null });
    await second.deliverer.deliver(second.dest, [outbound({ to: ['a@dest.test'] })]);
    expect(rx.connections[1]!.heloName).toBe('out.spoolhouse.test');
  });
});

describe('connections', () => {
  it('sends N messages over one connection', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const messages = Array.from({ length: 7 }, (_, i) => outbound({ to: [`u${i}@dest.test`] }));
    const results = await deliverer.deliver(dest, messages);
    expect(results.map((r) => r.recipients[0]!.outcome)).toEqual(Array(7).fill('delivered'));
    expect(rx.acceptedConnections).toBe(1);
    expect(rx.accepted()).toHaveLength(7);
    expect(new Set(rx.accepted().map((t) => t.connectionId)).size).toBe(1);
    // A completed transaction needs no RSET before the next MAIL FROM.
    expect(rx.connections[0]!.commands).not.toContain('RSET');
  });

  it('uses STARTTLS when offered (opportunistic, unverified by default)', async () => {
    const rx = await receiver({ starttls: true });
    const { deliverer, dest } = await routedTo(rx);
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.accepted()[0]!.secure).toBe(true);
  });

  it('stays in plaintext when delivery.tls.opportunistic is off', async () => {
    const rx = await receiver({ starttls: true });
    const { deliverer, dest } = await routedTo(rx, { tls: { opportunistic: false, verify: false } });
    await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(rx.accepted()[0]!.secure).toBe(false);
    expect(rx.connections[0]!.commands).not.toContain('STARTTLS');
  });

  it('with delivery.tls.verify, a certificate that does not verify fails the host (no plaintext fallback)', async () => {
    const rx = await receiver({ starttls: true });
    const { deliverer, dest } = await routedTo(rx, { tls: { opportunistic: true, verify: true } });
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.7.5' } });
    expect(rx.transactions).toHaveLength(0);
  });
});

describe('delivery.tls.policy (per recipient domain)', () => {
  const policy = (level: string, tls: Record<string, unknown> = {}) => ({ tls: { opportunistic: true, verify: false, policy: { 'dest.test': level }, ...tls } });

  it('"encrypt": a receiver without STARTTLS gets nothing (4.7.4); one with it gets the mail over TLS, unverified', async () => {
    const plain = await receiver({ starttls: false });
    const { deliverer, dest } = await routedTo(plain, policy('encrypt'));
    expect(dest.key).toBe(`${plain.address} tls=encrypt`); // its own pool: other domains on that host do not share its sessions
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.7.4' } });
    expect(plain.transactions).toHaveLength(0);

    const tls = await receiver({ starttls: true });
    const routed = await routedTo(tls, policy('encrypt', { verify: true })); // the domain's level beats delivery.tls.verify
    const [ok] = await routed.deliverer.deliver(routed.dest, [outbound({ to: ['a@dest.test'] })]);
    expect(ok!.recipients[0]!.outcome).toBe('delivered');
    expect(tls.accepted()[0]!.secure).toBe(true);
  });

  it('"encrypt" never retries in plaintext after a failed handshake', async () => {
    const rx = await receiver({ brokenTls: true });
    const { deliverer, dest } = await routedTo(rx, policy('encrypt'));
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]!.outcome).toBe('deferred');
    expect(rx.acceptedConnections).toBe(1);
    expect(rx.transactions).toHaveLength(0);
  });

  it('"verify": a certificate that does not verify fails the host (4.7.5)', async () => {
    const rx = await receiver({ starttls: true });
    const { deliverer, dest } = await routedTo(rx, policy('verify'));
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.7.5' } });
    expect(rx.transactions).toHaveLength(0);
  });

  it('"none" stays in plaintext though delivery.tls.opportunistic is on; "may" falls back as opportunistic TLS does', async () => {
    const rx = await receiver({ starttls: true });
    const { deliverer, dest } = await routedTo(rx, policy('none'));
    await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(rx.accepted()[0]!.secure).toBe(false);
    expect(rx.connections[0]!.commands).not.toContain('STARTTLS');

    const broken = await receiver({ brokenTls: true });
    const may = await routedTo(broken, policy('may', { verify: true }));
    const [r] = await may.deliverer.deliver(may.dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]!.outcome).toBe('delivered');
    expect(broken.acceptedConnections).toBe(2);
  });
});

describe('TLS fallback', () => {
  it('retries in plaintext, once, when an opportunistic STARTTLS handshake fails (Postfix "may")', async () => {
    const rx = await receiver({ brokenTls: true });
    const { deliverer, dest } = await routedTo(rx);
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]!.outcome).toBe('delivered');
    expect(rx.acceptedConnections).toBe(2);
    expect(rx.connections[0]!.commands).toContain('STARTTLS');
    expect(rx.connections[1]!.commands).not.toContain('STARTTLS');
    expect(rx.accepted()[0]!.secure).toBe(false);
  });

  it('does not downgrade when certificates are verified', async () => {
    const rx = await receiver({ brokenTls: true });
    const { deliverer, dest } = await routedTo(rx, { tls: { opportunistic: true, verify: true } });
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.7.5' } });
    expect(rx.acceptedConnections).toBe(1);
    expect(rx.transactions).toHaveLength(0);
  });
});

describe('timeouts', () => {
  const short = { timeouts: { connect: '500ms', greeting: '300ms', command: '300ms', data: '400ms' } };

  it('gives up on a server that never greets (greeting timeout) and defers with 4.4.2', async () => {
    const rx = await receiver({ script: { greeting: 'stall' } });
    const { deliverer, dest } = await routedTo(rx, short);
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { code: 421, enhanced: '4.4.2', message: expect.stringMatching(/timed out while receiving the initial server greeting/) } });
  });

  it('defers with 4.4.2 when the server drops the connection before greeting', async () => {
    const rx = await receiver({ script: { greeting: 'drop' } });
    const { deliverer, dest } = await routedTo(rx, short);
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { code: 421, enhanced: '4.4.2', message: expect.stringMatching(/lost connection/) } });
    expect(r!.hosts).toHaveLength(1);
  });

  it('gives up on a server that stalls after RCPT (command timeout)', async () => {
    const rx = await receiver({ script: { rcpt: () => 'stall' } });
    const { deliverer, dest } = await routedTo(rx, short);
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.4.2', message: expect.stringMatching(/timed out/) } });
    expect(rx.completed()).toHaveLength(0);
  });

  it('defers (may be sent twice) when the server stalls after the final "." (data timeout)', async () => {
    const rx = await receiver({ script: { dataEnd: 'stall' } });
    const { deliverer, dest } = await routedTo(rx, short);
    const [r] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.4.2', message: expect.stringMatching(/more than once/) } });
    expect(rx.completed()).toHaveLength(1);
  });

  it('defers when the connection drops after the final "."', async () => {
    const rx = await receiver({ script: { dataEnd: 'drop' } });
    const { deliverer, dest } = await routedTo(rx, short);
    const [r1, r2] = await deliverer.deliver(dest, [outbound({ to: ['a@dest.test'] }), outbound({ to: ['b@dest.test'] })]);
    for (const r of [r1!, r2!]) expect(r.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.4.2', message: expect.stringMatching(/lost connection .* end of data/) } });
    // The second message got a connection of its own.
    expect(rx.acceptedConnections).toBe(2);
  });
});

describe('stillWanted() and the final "."', () => {
  it('aborts without the final "." when the mail is no longer wanted; the next message still goes', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const unwanted = outbound({ to: ['a@dest.test'], wanted: false, body: `Subject: removed\r\n\r\n${'line\r\n'.repeat(1000)}` });
    const wanted = outbound({ to: ['b@dest.test'] });
    const [r1, r2] = await deliverer.deliver(dest, [unwanted, wanted]);
    expect(unwanted.stillWantedCalls).toBe(1);
    expect(r1).toMatchObject({ id: unwanted.id, aborted: true, recipients: [] });
    expect(r2!.recipients[0]!.outcome).toBe('delivered');
    // The receiver saw the aborted transaction start but never end.
    await rx.waitForCompleted(1);
    const aborted = rx.transactions.find((t) => t.rcptTo[0]!.address === 'a@dest.test')!;
    expect(aborted.complete).toBe(false);
    expect(aborted.reply).toBeUndefined();
    expect(rx.completed().map((t) => t.rcptTo[0]!.address)).toEqual(['b@dest.test']);
  });

  it('asks stillWanted() once the whole body is read, and sends "." when it says yes', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const msg = outbound({ to: ['a@dest.test'], stream: true });
    await deliverer.deliver(dest, [msg]);
    expect(msg.stillWantedCalls).toBe(1);
    expect(rx.accepted()).toHaveLength(1);
  });

  it.each([
    ['read whole, sent with the "."', 1000],
    [`streamed (over ${WHOLE_BODY_BYTES} bytes)`, WHOLE_BODY_BYTES / 4],
  ])('a body %s: asked after the last byte is read; yes delivers it byte for byte, no drops it before "."', async (_name, lines) => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const body = Buffer.from(`Subject: big\r\n\r\n${'.ine\r\n'.repeat(lines)}`);
    let readSoFar = 0;
    const readAtAsk: number[] = [];
    const counted = (wanted: boolean) => {
      const m = outbound({ to: [`${wanted ? 'yes' : 'no'}@dest.test`], body, wanted });
      m.openBody = async () => {
        readSoFar = 0;
        const parts: Buffer[] = [];
        for (let i = 0; i < body.length; i += 16_384) parts.push(body.subarray(i, i + 16_384));
        return Readable.from((function* () { for (const p of parts) { readSoFar += p.length; yield p; } })());
      };
      const ask = m.stillWanted;
      m.stillWanted = () => { readAtAsk.push(readSoFar); return ask(); };
      return m;
    };
    const [no, yes] = await deliverer.deliver(dest, [counted(false), counted(true)]);
    expect(no).toMatchObject({ aborted: true, recipients: [] });
    expect(yes!.recipients[0]!.outcome).toBe('delivered');
    expect(readAtAsk).toEqual([body.length, body.length]);
    await rx.waitForCompleted(1);
    expect(rx.transactions.find((t) => t.rcptTo[0]!.address === 'no@dest.test')!.complete).toBe(false);
    const done = rx.completed();
    expect(done.map((t) => t.rcptTo[0]!.address)).toEqual(['yes@dest.test']);
    expect(done[0]!.data.equals(body)).toBe(true);
  });

  it('a connection lost while stillWanted() is asked is lost before ".", not after', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const msg = outbound({ to: ['a@dest.test'] });
    msg.stillWanted = async () => {
      await rx.close();
      await new Promise((r) => setTimeout(r, 100));
      return true;
    };
    const [r] = await deliverer.deliver(dest, [msg]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.4.2', message: expect.stringMatching(/^lost connection .* while sending message content$/) } });
    expect(rx.completed()).toEqual([]);
  });

  it('never asks stillWanted() when no recipient was accepted', async () => {
    const rx = await receiver({ script: { rcpt: () => '550 5.1.1 Unknown' } });
    const { deliverer, dest } = await routedTo(rx);
    const msg = outbound({ to: ['a@dest.test'] });
    await deliverer.deliver(dest, [msg]);
    expect(msg.stillWantedCalls).toBe(0);
  });
});

describe('bodies', () => {
  /** Every byte value, in CRLF-terminated lines, with lines that need dot-stuffing. */
  function nastyBody(): Buffer {
    const parts: Buffer[] = [Buffer.from('Subject: binary\r\nContent-Transfer-Encoding: 8bit\r\n\r\n')];
    parts.push(Buffer.from('.\r\n..\r\n...leading dots\r\n. space\r\n'));
    for (let line = 0; line < 40; line++) {
      const bytes: number[] = [];
      for (let i = 0; i < 64; i++) {
        const b = (line * 64 + i * 7) % 256;
        if (b !== 0x0d && b !== 0x0a) bytes.push(b);
      }
      if (line % 3 === 0) bytes.unshift(0x2e); // "." at the start of a line
      parts.push(Buffer.from(bytes), Buffer.from('\r\n'));
    }
    parts.push(Buffer.from('.\r\nlast line\r\n'));
    return Buffer.concat(parts);
  }

  it('arrives byte for byte, from a Buffer and from a stream', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const body = nastyBody();
    const results = await deliverer.deliver(dest, [
      outbound({ to: ['a@dest.test'], body, bodyType: '8BITMIME' }),
      outbound({ to: ['b@dest.test'], body, bodyType: '8BITMIME', stream: true }),
    ]);
    expect(results.map((r) => r.recipients[0]!.outcome)).toEqual(['delivered', 'delivered']);
    for (const tx of rx.accepted()) {
      expect(tx.data.length).toBe(body.length);
      expect(tx.data.equals(body)).toBe(true);
    }
  });

  it('defers when the stored body cannot be read', async () => {
    const rx = await receiver();
    const { deliverer, dest } = await routedTo(rx);
    const msg = outbound({ to: ['a@dest.test'] });
    msg.openBody = async () => {
      throw new Error('spool file missing');
    };
    const [r] = await deliverer.deliver(dest, [msg, outbound({ to: ['b@dest.test'] })]);
    expect(r!.recipients[0]).toMatchObject({ outcome: 'deferred', reply: { enhanced: '4.3.0' } });
    expect(rx.accepted()).toHaveLength(1);
  });
});
