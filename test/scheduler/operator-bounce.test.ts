/**
 * An operator's bounce (Queue.bounce; exim's -Mg): a deferred mail and a held one are given up at
 * once, with a DSN to their senders naming the operator's reason, and nothing more is delivered
 * or even connected to. Real parts: the SpoolQueue, the Deliverer, receiving smtp-servers.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { parseDsn } from '../bounce/parse-dsn.js';
import { startReceiver } from '../helpers/receiver.js';
import { startScheduler, waitFor } from './harness.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('a mail bounced by the operator', () => {
  it('fails what is left with a DSN naming the reason, delivers nothing more, and keeps what was delivered', async () => {
    const slow = await startReceiver({ script: { rcpt: { 'busy@slow.test': '451 4.2.1 Try later' } } });
    const senderMx = await startReceiver();
    cleanups.push(() => slow.close(), () => senderMx.close());
    const h = await startScheduler({
      delivery: { routes: { 'slow.test': slow.address, 'origin.test': senderMx.address }, retry: { min: '1h', max: '1h', lifetime: '5d' } },
    });
    cleanups.push(() => h.close());

    const deferred = await h.enqueue({ to: ['ok@slow.test', 'busy@slow.test'] });
    const held = await h.enqueue({ to: ['quarantined@slow.test'], hold: { reason: 'rule quarantine' } });
    await waitFor('the first attempt', async () => ((await h.queue.get(deferred.id))?.attempts === 1 ? true : undefined));
    const connections = slow.acceptedConnections;

    await h.queue.bounce(deferred.id, 'the customer cancelled the campaign');
    await h.queue.bounce(held.id, 'phishing');
    const [d1, d2] = await waitFor('both bounced', async () => {
      const ms = await Promise.all([h.queue.get(deferred.id), h.queue.get(held.id)]);
      return ms.every((m) => m?.state === 'bounced') ? ms : undefined;
    });
    expect(slow.acceptedConnections).toBe(connections);
    expect(d1!.recipients.map((r) => [r.address, r.status])).toEqual([['ok@slow.test', 'delivered'], ['busy@slow.test', 'failed']]);
    const failed = d1!.recipients[1]!;
    expect([failed.lastReply?.code, failed.lastReply?.enhanced, failed.lastReply?.message]).toEqual([550, '5.0.0', 'Delivery cancelled by the operator: the customer cancelled the campaign']);
    expect(d2!.recipients[0]!.status).toBe('failed');

    const dsns = await senderMx.waitForCompleted(2);
    const parsed = await Promise.all(dsns.map((t) => parseDsn(t.data)));
    const forDeferred = parsed.find((p) => p.blocks.slice(1).some((b) => b['final-recipient'] === 'rfc822; busy@slow.test'))!;
    expect(forDeferred.blocks.slice(1)).toEqual([
      expect.objectContaining({ action: 'failed', status: '5.0.0', 'diagnostic-code': expect.stringMatching(/Delivery cancelled by the operator: the customer cancelled the campaign/) }),
    ]);
    expect(dsns.every((t) => t.mailFrom.address === '')).toBe(true);
    expect(await h.metrics.registry.getSingleMetricAsString('spoolhouse_bounced_total')).toMatch(/reason="operator"\} 2/);
  });

  it('of some recipients: those fail with a DSN and are never connected to; the others are delivered as before', async () => {
    const typo = await startReceiver();
    const good = await startReceiver({ script: { rcpt: { 'later@good.test': '451 4.2.1 Try later' } } });
    const senderMx = await startReceiver();
    cleanups.push(() => typo.close(), () => good.close(), () => senderMx.close());
    const h = await startScheduler({
      delivery: { routes: { 'gmial.test': typo.address, 'good.test': good.address, 'origin.test': senderMx.address }, retry: { min: '1h', max: '1h', lifetime: '5d' } },
    });
    cleanups.push(() => h.close());

    // Held first (as a rule's quarantine would), so the operator acts before any attempt.
    const m = await h.enqueue({ to: ['friend@gmial.test', 'later@good.test', 'now@good.test'], hold: { reason: 'look first' } });
    const marked = await h.queue.bounce(m.id, 'misspelt domain', ['friend@gmial.test']);
    expect(marked.state).toBe('held');
    await h.queue.release(m.id);
    const after = await waitFor('the attempt', async () => {
      const x = await h.queue.get(m.id);
      return x && x.attempts === 1 ? x : undefined;
    });
    expect(after.recipients.map((r) => [r.address, r.status])).toEqual([['friend@gmial.test', 'failed'], ['later@good.test', 'deferred'], ['now@good.test', 'delivered']]);
    expect(after.recipients[0]!.lastReply?.message).toBe('Delivery cancelled by the operator: misspelt domain');
    expect(after.state).toBe('queued');
    expect(after.bounceRequest).toBeUndefined();
    // Waits for its retry, an hour away: the request did not leave it due.
    expect(after.notBefore).toBeGreaterThan(Date.now() + 50 * 60_000);
    expect(typo.acceptedConnections).toBe(0);
    expect(good.completed().map((t) => t.rcptTo.map((r) => r.address))).toEqual([['now@good.test']]);

    const [dsn] = await senderMx.waitForCompleted(1);
    const parsed = await parseDsn(dsn!.data);
    expect(parsed.blocks.slice(1)).toEqual([
      expect.objectContaining({ 'final-recipient': 'rfc822; friend@gmial.test', action: 'failed', status: '5.0.0', 'diagnostic-code': expect.stringMatching(/misspelt domain/) }),
    ]);
  });
});
