/**
 * The queue contract: what every backend (spool, Kafka) must do, written against the `Queue`
 * interface only. A backend's test file calls `queueContract(name, open)`; `open` gives a fresh,
 * empty queue (already started), `reopen` closes it and opens a new instance on the same storage,
 * `cleanup` closes and removes everything.
 *
 * Time-dependent checks poll with a deadline instead of sleeping a fixed time, and pass `now`
 * where the interface takes one.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidTransitionError, LeaseLostError, MailInFlightError, MailNotFoundError, RecipientNotPendingError } from '../../src/queue/errors.js';
import { newMailId } from '../../src/queue/model.js';
import type { EnqueueRequest, Queue, QueuedMail, QueueEvent, SortField } from '../../src/queue/types.js';
import { bodyOf } from '../helpers/body.js';

export interface ContractHandle {
  queue: Queue;
  reopen(): Promise<Queue>;
  cleanup(): Promise<void>;
}

/**
 * The handle most backends need: `make` opens (and starts) a queue on the backend's storage;
 * `reopen` closes the current instance and makes a new one on the same storage; `cleanup` closes
 * it, then runs `removeStorage` (e.g. deletes the temp dir).
 */
export async function reopenableHandle(make: () => Promise<Queue>, removeStorage: () => Promise<void> = async () => {}): Promise<ContractHandle> {
  let queue = await make();
  return {
    get queue() {
      return queue;
    },
    async reopen() {
      await queue.close();
      queue = await make();
      return queue;
    },
    async cleanup() {
      await queue.close();
      await removeStorage();
    },
  };
}

const OWNER = 'contract-worker';

function request(o: Partial<EnqueueRequest> = {}): EnqueueRequest {
  return {
    id: newMailId(),
    sender: 'alice@sender.example',
    recipients: [{ address: 'bob@dest.example' }],
    body: Buffer.from('Subject: hi\r\n\r\nhello\r\n'),
    priority: 0,
    notBefore: 0,
    client: { address: '127.0.0.1', helo: 'client.example' },
    classification: { priority: { source: 'default' } },
    ...o,
  };
}


async function until<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Reserves exactly this mail (it must be the only due one, or pass a high `now`). */
async function reserveOne(q: Queue, id: string, leaseMs = 60_000): Promise<QueuedMail> {
  const got = await q.reserveDue({ owner: OWNER, limit: 100, leaseMs });
  const mine = got.find((m) => m.id === id);
  if (!mine) throw new Error(`mail ${id} was not reserved (got ${got.length})`);
  return mine;
}

export function queueContract(name: string, open: () => Promise<ContractHandle>): void {
  describe(`queue contract: ${name}`, () => {
    let h: ContractHandle;
    let q: Queue;

    beforeEach(async () => {
      h = await open();
      q = h.queue;
    });

    afterEach(async () => {
      await h.cleanup();
    });

    async function reopen(): Promise<Queue> {
      q = await h.reopen();
      return q;
    }

    describe('enqueue, get, readBody', () => {
      it('stores the mail and gives the body back byte for byte', async () => {
        const bodies = [
          randomBytes(4096),
          Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
          Buffer.from('line one\rbare CR\nbare LF\r\n.\r\n..dot\n\r\x00\xff', 'latin1'),
          randomBytes(1024 * 1024),
          Buffer.alloc(0),
        ];
        const mails = [];
        for (const body of bodies) mails.push(await q.enqueue(request({ body })));
        for (const [i, m] of mails.entries()) {
          expect(m.state).toBe('queued');
          expect(m.size).toBe(bodies[i]!.length);
          const got = await q.get(m.id);
          expect(got?.id).toBe(m.id);
          expect((await bodyOf(q, m.id)).equals(bodies[i]!)).toBe(true);
        }
      });

      it('keeps every field of the request', async () => {
        const req = request({
          sender: '',
          recipients: [{ address: 'x@a.example', notify: ['FAILURE', 'DELAY'], orcpt: 'rfc822;x@a.example' }, { address: 'y@b.example' }],
          priority: 3,
          notBefore: 1234,
          dsn: { ret: 'HDRS', envid: 'env-1' },
          smtputf8: true,
          bodyType: '8BITMIME',
          subject: 'Grüße',
          messageId: '<m1@example>',
          mtPriority: 4,
          receivedAt: 1_700_000_000_000,
          classification: { priority: { source: 'rule', rule: 'vip' } },
        });
        const m = await q.enqueue(req);
        const got = (await q.get(m.id))!;
        expect(got).toMatchObject({
          id: req.id, state: 'queued', sender: '', priority: 3, notBefore: 1234, attempts: 0, history: [],
          dsn: { ret: 'HDRS', envid: 'env-1' }, smtputf8: true, bodyType: '8BITMIME', subject: 'Grüße',
          messageId: '<m1@example>', mtPriority: 4, receivedAt: 1_700_000_000_000,
          classification: { priority: { source: 'rule', rule: 'vip' } },
        });
        expect(got.recipients).toEqual([
          { address: 'x@a.example', status: 'pending', notify: ['FAILURE', 'DELAY'], orcpt: 'rfc822;x@a.example' },
          { address: 'y@b.example', status: 'pending' },
        ]);
        expect(got.lease).toBeUndefined();
      });

      it('enqueues held mail when asked to', async () => {
        const m = await q.enqueue(request({ hold: { reason: 'quarantine' } }));
        expect(m.state).toBe('held');
        expect(m.holdReason).toBe('quarantine');
        expect(await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 10_000 })).toEqual([]);
      });

      it('answers undefined / MailNotFoundError for an unknown id', async () => {
        const id = newMailId();
        expect(await q.get(id)).toBeUndefined();
        await expect(q.readBody(id)).rejects.toBeInstanceOf(MailNotFoundError);
      });
    });

    describe('durability', () => {
      it('keeps mail and bodies across a reopen', async () => {
        const body = randomBytes(100_000);
        const m = await q.enqueue(request({ body, priority: 2 }));
        const held = await q.enqueue(request());
        await q.hold(held.id, 'why');
        await reopen();
        expect((await q.get(m.id))?.priority).toBe(2);
        expect((await bodyOf(q, m.id)).equals(body)).toBe(true);
        expect((await q.get(held.id))?.state).toBe('held');
      });

      it('keeps all of 200 concurrent enqueues', async () => {
        const reqs = Array.from({ length: 200 }, (_, i) => request({ body: Buffer.from(`mail number ${i}\r\n`.repeat(i + 1)) }));
        const done = await Promise.all(reqs.map((r) => q.enqueue(r)));
        expect(new Set(done.map((m) => m.id)).size).toBe(200);
        await reopen();
        for (const r of reqs) {
          expect((await q.get(r.id))?.state).toBe('queued');
          expect((await bodyOf(q, r.id)).equals(r.body)).toBe(true);
        }
        expect((await q.stats()).byState.queued).toBe(200);
      });
    });

    describe('reserveDue', () => {
      it('hands out higher priority first, then earlier notBefore', async () => {
        const now = Date.now();
        const spec = [
          { priority: 0, notBefore: now - 5000 },
          { priority: 2, notBefore: now - 1000 },
          { priority: 1, notBefore: now - 9000 },
          { priority: 2, notBefore: now - 3000 },
          { priority: 0, notBefore: now - 8000 },
          { priority: 1, notBefore: now - 2000 },
        ];
        const mails = [];
        for (const s of spec) mails.push(await q.enqueue(request(s)));
        const got = await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000, lowPriorityShare: 0 });
        expect(got.map((m) => [m.priority, m.notBefore])).toEqual([
          [2, now - 3000], [2, now - 1000], [1, now - 9000], [1, now - 2000], [0, now - 8000], [0, now - 5000],
        ]);
        for (const m of got) {
          expect(m.state).toBe('active');
          expect(m.lease?.owner).toBe(OWNER);
          expect(m.lease!.until).toBeGreaterThan(Date.now());
        }
        expect(new Set(got.map((m) => m.lease!.token)).size).toBe(6);
        expect(await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 })).toEqual([]);
      });

      it('respects limit', async () => {
        for (let i = 0; i < 5; i++) await q.enqueue(request());
        expect((await q.reserveDue({ owner: OWNER, limit: 3, leaseMs: 60_000 })).length).toBe(3);
        expect((await q.reserveDue({ owner: OWNER, limit: 3, leaseMs: 60_000 })).length).toBe(2);
      });

      it('hands out nothing before notBefore', async () => {
        const later = Date.now() + 3_600_000;
        const m = await q.enqueue(request({ notBefore: later }));
        expect(await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 })).toEqual([]);
        expect(await q.nextDueAt()).toBe(later);
        const got = await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000, now: later });
        expect(got.map((x) => x.id)).toEqual([m.id]);
      });

      it('makes mail due again when its lease runs out', async () => {
        const m = await q.enqueue(request());
        const first = await reserveOne(q, m.id, 300);
        expect(await q.checkLease(m.id, first.lease!.token)).toBe(true);
        const again = await until('the lease to lapse', async () => {
          const got = await q.reserveDue({ owner: 'other-worker', limit: 10, leaseMs: 60_000 });
          return got.find((x) => x.id === m.id);
        });
        expect(again.lease!.token).not.toBe(first.lease!.token);
        expect(again.lease!.owner).toBe('other-worker');
        expect(await q.checkLease(m.id, first.lease!.token)).toBe(false);
        await expect(q.recordAttempt(m.id, first.lease!.token, { outcomes: [] })).rejects.toBeInstanceOf(LeaseLostError);
      });

      it('renews a live lease and refuses a stale one', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id, 60_000);
        expect(await q.renewLease(m.id, r.lease!.token, 120_000)).toBe(true);
        expect((await q.get(m.id))!.lease!.until).toBeGreaterThan(Date.now() + 90_000);
        expect(await q.renewLease(m.id, 'not-the-token', 120_000)).toBe(false);
      });

      it('makes mail due at once when its lease is released', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        await q.releaseLease(m.id, r.lease!.token);
        expect((await q.get(m.id))?.state).toBe('queued');
        expect((await reserveOne(q, m.id)).id).toBe(m.id);
      });

      it('does not starve lower priorities (lowPriorityShare)', async () => {
        const now = Date.now();
        const low = new Set<string>();
        for (let i = 0; i < 60; i++) await q.enqueue(request({ priority: 5, notBefore: now - 1000 }));
        for (let i = 0; i < 5; i++) low.add((await q.enqueue(request({ priority: 0, notBefore: now - 100_000 }))).id);
        let lowOut = 0;
        let highOut = 0;
        for (let i = 0; i < 40; i++) {
          for (const m of await q.reserveDue({ owner: OWNER, limit: 1, leaseMs: 60_000, lowPriorityShare: 0.1 })) {
            if (low.has(m.id)) lowOut++;
            else highOut++;
          }
        }
        // With a backlog of high-priority due mail, about a tenth still goes to the low class...
        expect(lowOut).toBeGreaterThanOrEqual(2);
        // ...and no more than that share (plus rounding).
        expect(lowOut).toBeLessThanOrEqual(6);
        expect(highOut).toBe(40 - lowOut);
      });

      it('with lowPriorityShare 0, strict priority', async () => {
        const now = Date.now();
        for (let i = 0; i < 20; i++) await q.enqueue(request({ priority: 5, notBefore: now - 1000 }));
        for (let i = 0; i < 5; i++) await q.enqueue(request({ priority: 0, notBefore: now - 100_000 }));
        const got = await q.reserveDue({ owner: OWNER, limit: 20, leaseMs: 60_000, lowPriorityShare: 0 });
        expect(got.every((m) => m.priority === 5)).toBe(true);
      });
    });

    describe('recordAttempt', () => {
      const two = [{ address: 'a@one.example' }, { address: 'b@two.example' }];

      it('delivered: all recipients delivered, history kept, lease gone', async () => {
        const m = await q.enqueue(request({ recipients: two }));
        const r = await reserveOne(q, m.id);
        const at = Date.now();
        const after = await q.recordAttempt(m.id, r.lease!.token, {
          outcomes: two.map((x) => ({ address: x.address, outcome: 'delivered', reply: { code: 250, message: 'ok' }, remoteHost: 'mx.example' })),
          history: [{ at, host: 'mx.example', recipients: two.map((x) => x.address), outcome: 'delivered', reply: { code: 250, message: 'ok' } }],
        });
        expect(after.state).toBe('delivered');
        expect(after.attempts).toBe(1);
        expect(after.lease).toBeUndefined();
        expect(after.recipients.map((x) => x.status)).toEqual(['delivered', 'delivered']);
        expect(after.recipients[0]!.lastReply?.code).toBe(250);
        const stored = (await q.get(m.id))!;
        expect(stored.state).toBe('delivered');
        expect(stored.history).toHaveLength(1);
        expect(stored.history[0]!.host).toBe('mx.example');
        expect(await q.checkLease(m.id, r.lease!.token)).toBe(false);
      });

      it('all failed: bounced', async () => {
        const m = await q.enqueue(request({ recipients: two }));
        const r = await reserveOne(q, m.id);
        const after = await q.recordAttempt(m.id, r.lease!.token, {
          outcomes: two.map((x) => ({ address: x.address, outcome: 'failed', reply: { code: 550, enhanced: '5.1.1', message: 'no such user' } })),
        });
        expect(after.state).toBe('bounced');
        expect(after.recipients.map((x) => x.status)).toEqual(['failed', 'failed']);
        expect((await q.get(m.id))?.state).toBe('bounced');
      });

      it('mixed delivered and failed: bounced, each recipient with its own status', async () => {
        const m = await q.enqueue(request({ recipients: two }));
        const r = await reserveOne(q, m.id);
        const after = await q.recordAttempt(m.id, r.lease!.token, {
          outcomes: [{ address: 'a@one.example', outcome: 'delivered' }, { address: 'b@two.example', outcome: 'failed' }],
        });
        expect(after.state).toBe('bounced');
        expect(after.recipients.map((x) => x.status)).toEqual(['delivered', 'failed']);
      });

      it('mixed delivered and deferred: queued again at retryAt for the rest', async () => {
        const m = await q.enqueue(request({ recipients: two }));
        const r = await reserveOne(q, m.id);
        const retryAt = Date.now() + 3_600_000;
        const after = await q.recordAttempt(m.id, r.lease!.token, {
          outcomes: [{ address: 'a@one.example', outcome: 'delivered' }, { address: 'b@two.example', outcome: 'deferred', reply: { code: 451, message: 'later' } }],
          retryAt,
        });
        expect(after.state).toBe('queued');
        expect(after.notBefore).toBe(retryAt);
        expect(after.recipients.map((x) => x.status)).toEqual(['delivered', 'deferred']);
        expect(await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 })).toEqual([]);
        expect(await q.nextDueAt()).toBe(retryAt);
        const again = await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000, now: retryAt });
        expect(again.map((x) => x.id)).toEqual([m.id]);
        expect(again[0]!.attempts).toBe(1);
      });

      it('deferred with retryAt: queued, deferred recipient, attempts counted', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        const retryAt = Date.now() + 60_000;
        const after = await q.recordAttempt(m.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'deferred' }], retryAt });
        expect(after).toMatchObject({ state: 'queued', notBefore: retryAt, attempts: 1 });
        expect(after.recipients[0]!.status).toBe('deferred');
      });

      it('expired: expired', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        const after = await q.recordAttempt(m.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'expired' }] });
        expect(after.state).toBe('expired');
        expect(after.recipients[0]!.status).toBe('expired');
      });

      it('throws LeaseLostError for a stale token', async () => {
        const m = await q.enqueue(request());
        await reserveOne(q, m.id);
        await expect(q.recordAttempt(m.id, 'stale-token', { outcomes: [{ address: 'bob@dest.example', outcome: 'delivered' }] }))
          .rejects.toBeInstanceOf(LeaseLostError);
        expect((await q.get(m.id))?.state).toBe('active');
      });

      it('still records outcomes of an attempt on a mail removed meanwhile', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        await q.remove(m.id, 'operator');
        const after = await q.recordAttempt(m.id, r.lease!.token, {
          outcomes: [{ address: 'bob@dest.example', outcome: 'delivered' }],
          history: [{ at: Date.now(), recipients: ['bob@dest.example'], outcome: 'delivered' }],
        });
        expect(after.state).toBe('removed');
        expect(after.history).toHaveLength(1);
      });
    });

    describe('checkLease', () => {
      it('is true while leased, false after remove', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        expect(await q.checkLease(m.id, r.lease!.token)).toBe(true);
        await q.remove(m.id);
        expect(await q.checkLease(m.id, r.lease!.token)).toBe(false);
      });

      it('is false after hold, and the worker can still record its attempt', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        await q.hold(m.id, 'look at it');
        expect(await q.checkLease(m.id, r.lease!.token)).toBe(false);
        const after = await q.recordAttempt(m.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'deferred' }], retryAt: Date.now() });
        expect(after.state).toBe('held');
      });
    });

    describe('commitDelivery: the point of no return before a final "."', () => {
      it('refuses hold and remove while a final "." is in flight; the attempt is recorded as it went', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        expect(await q.commitDelivery(m.id, r.lease!.token)).toBe(true);
        await expect(q.hold(m.id, 'too late')).rejects.toBeInstanceOf(MailInFlightError);
        await expect(q.remove(m.id, 'too late')).rejects.toBeInstanceOf(MailInFlightError);
        expect((await q.get(m.id))?.state).toBe('active');
        const after = await q.recordAttempt(m.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'delivered' }] });
        expect(after.state).toBe('delivered');
        await expect(q.hold(m.id)).rejects.toBeInstanceOf(InvalidTransitionError);
      });

      it('a hold or removal that came first makes it false', async () => {
        const held = await q.enqueue(request());
        const rh = await reserveOne(q, held.id);
        await q.hold(held.id, 'first');
        expect(await q.commitDelivery(held.id, rh.lease!.token)).toBe(false);
        const removed = await q.enqueue(request());
        const rr = await reserveOne(q, removed.id);
        await q.remove(removed.id, 'first');
        expect(await q.commitDelivery(removed.id, rr.lease!.token)).toBe(false);
        expect(await q.commitDelivery(removed.id, 'not-the-token')).toBe(false);
      });

      it('a hold racing it is either refused or first: never both answered', async () => {
        // The check comes 0 to 39 turns of the event loop after the hold was asked: before the
        // hold's write, while its group commits, and after it. (The spool fails this if
        // commitDelivery ignores the group committing: it says yes, and the hold is answered.)
        for (let turns = 0; turns < 40; turns++) {
          const m = await q.enqueue(request());
          const r = await reserveOne(q, m.id);
          const hold = q.hold(m.id, 'race').then(() => 'held' as const, (err: unknown) => err);
          for (let t = 0; t < turns; t++) await new Promise((res) => setImmediate(res));
          const sent = await q.commitDelivery(m.id, r.lease!.token);
          const outcome = await hold;
          if (sent) expect(outcome).toBeInstanceOf(MailInFlightError);
          else expect(outcome).toBe('held');
        }
      });

      it('nests: hold is allowed again once every final "." is settled, and after a lease given back', async () => {
        const m = await q.enqueue(request({ recipients: [{ address: 'bob@dest.example' }, { address: 'carol@other.example' }] }));
        const r = await reserveOne(q, m.id);
        const token = r.lease!.token;
        expect(await q.commitDelivery(m.id, token)).toBe(true);
        expect(await q.commitDelivery(m.id, token)).toBe(true);
        await q.settleDelivery(m.id, token);
        await expect(q.hold(m.id)).rejects.toBeInstanceOf(MailInFlightError);
        await q.settleDelivery(m.id, token);
        await q.settleDelivery(m.id, token);
        await q.settleDelivery(m.id, 'not-the-token');
        expect((await q.hold(m.id, 'now')).state).toBe('held');
        expect(await q.commitDelivery(m.id, token)).toBe(false);
        await q.release(m.id);
        expect(await q.commitDelivery(m.id, token)).toBe(true);
        await q.releaseLease(m.id, token);
        expect((await q.remove(m.id, 'gone')).state).toBe('removed');
      });

      it('a lease that ran out ends it (the worker died with its "." in flight)', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id, 300);
        expect(await q.commitDelivery(m.id, r.lease!.token)).toBe(true);
        await expect(q.hold(m.id)).rejects.toBeInstanceOf(MailInFlightError);
        await new Promise((res) => setTimeout(res, 400));
        expect((await q.hold(m.id, 'after the crash')).state).toBe('held');
      });
    });

    describe('operator actions', () => {
      it('hold and release', async () => {
        const m = await q.enqueue(request());
        const held = await q.hold(m.id, 'suspicious');
        expect(held).toMatchObject({ state: 'held', holdReason: 'suspicious' });
        expect(held.generation).toBeGreaterThan(m.generation);
        expect(await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 })).toEqual([]);
        expect((await q.hold(m.id)).state).toBe('held');
        const released = await q.release(m.id);
        expect(released.state).toBe('queued');
        expect(released.holdReason).toBeUndefined();
        await expect(q.release(m.id)).rejects.toBeInstanceOf(InvalidTransitionError);
        expect((await reserveOne(q, m.id)).id).toBe(m.id);
      });

      it('remove is final', async () => {
        const m = await q.enqueue(request());
        const removed = await q.remove(m.id, 'spam');
        expect(removed.state).toBe('removed');
        expect((await q.get(m.id))?.state).toBe('removed');
        expect(await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 })).toEqual([]);
        await expect(q.hold(m.id)).rejects.toBeInstanceOf(InvalidTransitionError);
        await expect(q.release(m.id)).rejects.toBeInstanceOf(InvalidTransitionError);
        await expect(q.retryNow(m.id)).rejects.toBeInstanceOf(InvalidTransitionError);
        await expect(q.setPriority(m.id, 9)).rejects.toBeInstanceOf(InvalidTransitionError);
        await expect(q.setNotBefore(m.id, 0)).rejects.toBeInstanceOf(InvalidTransitionError);
        expect((await q.remove(m.id)).state).toBe('removed');
      });

      it('refuses to change delivered mail', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        await q.recordAttempt(m.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'delivered' }] });
        await expect(q.hold(m.id)).rejects.toBeInstanceOf(InvalidTransitionError);
        await expect(q.remove(m.id)).rejects.toBeInstanceOf(InvalidTransitionError);
        await expect(q.retryNow(m.id)).rejects.toBeInstanceOf(InvalidTransitionError);
        await expect(q.setPriority(m.id, 1)).rejects.toBeInstanceOf(InvalidTransitionError);
        await expect(q.setNotBefore(m.id, 1)).rejects.toBeInstanceOf(InvalidTransitionError);
      });

      it('retryNow makes deferred mail due; refused for held mail', async () => {
        const m = await q.enqueue(request({ notBefore: Date.now() + 3_600_000 }));
        expect(await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 })).toEqual([]);
        const r = await q.retryNow(m.id);
        expect(r.notBefore).toBeLessThanOrEqual(Date.now());
        expect((await reserveOne(q, m.id)).id).toBe(m.id);
        const h = await q.enqueue(request());
        await q.hold(h.id);
        await expect(q.retryNow(h.id)).rejects.toBeInstanceOf(InvalidTransitionError);
      });

      it('bounce marks the mail and makes it due now, held or delayed; refused once finished', async () => {
        const delayed = await q.enqueue(request({ notBefore: Date.now() + 3_600_000 }));
        const held = await q.enqueue(request());
        await q.hold(held.id, 'quarantine');
        const b1 = await q.bounce(delayed.id, 'sent by mistake');
        expect(b1.state).toBe('queued');
        expect(b1.bounceRequest?.reason).toBe('sent by mistake');
        expect(b1.notBefore).toBeLessThanOrEqual(Date.now());
        const b2 = await q.bounce(held.id);
        expect(b2.state).toBe('queued');
        expect(b2.holdReason).toBeUndefined();
        expect(b2.bounceRequest?.reason).toBe('bounced by the operator');
        const got = await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 });
        expect(got.map((m) => m.id).sort()).toEqual([delayed.id, held.id].sort());
        expect((await q.get(delayed.id))?.bounceRequest?.reason).toBe('sent by mistake');
        const r = got.find((m) => m.id === delayed.id)!;
        await q.recordAttempt(r.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'failed' }] });
        await expect(q.bounce(r.id)).rejects.toBeInstanceOf(InvalidTransitionError);
      });

      it('bounce of mail being delivered leaves the attempt its lease; if it defers, the mail is due at once', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        const marked = await q.bounce(m.id, 'give up');
        expect(marked.state).toBe('active');
        expect(await q.checkLease(m.id, r.lease!.token)).toBe(true);
        const after = await q.recordAttempt(m.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'deferred' }], retryAt: Date.now() + 3_600_000 });
        expect(after.state).toBe('queued');
        expect(after.bounceRequest?.reason).toBe('give up');
        expect(after.notBefore).toBeLessThanOrEqual(Date.now());
        expect((await reserveOne(q, m.id)).id).toBe(m.id);
      });

      it('bounce of mail held while its attempt runs keeps that attempt\'s lease: it is not handed out twice', async () => {
        const m = await q.enqueue(request());
        const r = await reserveOne(q, m.id);
        await q.hold(m.id, 'look');
        const marked = await q.bounce(m.id, 'give up');
        expect(marked.state).toBe('active');
        expect(marked.holdReason).toBeUndefined();
        expect((await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 })).map((x) => x.id)).not.toContain(m.id);
        const after = await q.recordAttempt(m.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'deferred' }], retryAt: Date.now() + 3_600_000 });
        expect(after.state).toBe('queued');
        expect(after.notBefore).toBeLessThanOrEqual(Date.now());
      });

      it('browse by what a recipient\'s last reply says (reply, case-insensitive): "mailq | grep"', async () => {
        const yahoo = await q.enqueue(request({ recipients: [{ address: 'a@yahoo.example' }, { address: 'b@other.example' }] }));
        const full = await q.enqueue(request({ recipients: [{ address: 'c@full.example' }] }));
        const fresh = await q.enqueue(request({ recipients: [{ address: 'd@new.example' }], notBefore: Date.now() + 3_600_000 }));
        const got = await q.reserveDue({ owner: OWNER, limit: 100, leaseMs: 60_000 });
        const lease = (id: string) => got.find((m) => m.id === id)!.lease!.token;
        await q.recordAttempt(yahoo.id, lease(yahoo.id), {
          outcomes: [
            { address: 'a@yahoo.example', outcome: 'deferred', reply: { code: 421, enhanced: '4.7.0', message: '[TSS04] Messages from 192.0.2.7 temporarily deferred' } },
            { address: 'b@other.example', outcome: 'delivered', reply: { code: 250, message: 'ok' } },
          ],
          retryAt: Date.now() + 3_600_000,
        });
        await q.recordAttempt(full.id, lease(full.id), { outcomes: [{ address: 'c@full.example', outcome: 'deferred', reply: { code: 452, enhanced: '4.2.2', message: 'Mailbox full' } }], retryAt: Date.now() + 3_600_000 });
        const ids = async (reply: string) => (await q.browse({ reply })).items.map((m) => m.id).filter((id) => [yahoo.id, full.id, fresh.id].includes(id));
        expect(await ids('tss04')).toEqual([yahoo.id]);
        expect(await ids('421 4.7.0 [TSS04]')).toEqual([yahoo.id]);
        expect(await ids('4.2.2 mailbox FULL')).toEqual([full.id]);
        expect((await ids('452')).sort()).toEqual([full.id]);
        expect(await ids('no such text anywhere')).toEqual([]);
        expect((await q.browse({ reply: 'TSS04', domain: 'yahoo.example', state: 'queued' })).items.map((m) => m.id)).toEqual([yahoo.id]);
      });

      it('redirect corrects a recipient not yet done: tried afresh at the new address, its ORCPT kept for DSNs; browse finds it by the new domain', async () => {
        const two = [{ address: 'ann@gmial.example' }, { address: 'bob@dest.example', orcpt: 'rfc822;Bob@Dest.example' }];
        const m = await q.enqueue(request({ recipients: two }));
        // A first try defers both, for an hour.
        const r0 = await reserveOne(q, m.id);
        expect(r0.id).toBe(m.id);
        await q.recordAttempt(m.id, r0.lease!.token, {
          outcomes: [{ address: 'ann@gmial.example', outcome: 'deferred', reply: { code: 451, enhanced: '4.4.1', message: 'no route' } }, { address: 'bob@dest.example', outcome: 'deferred' }],
          retryAt: Date.now() + 3_600_000,
        });
        const fixed = await q.redirect(m.id, 'ANN@gmial.example', 'ann@gmail.example');
        expect(fixed.state).toBe('queued');
        expect(fixed.notBefore).toBeLessThanOrEqual(Date.now());
        expect(fixed.recipients[0]).toEqual({ address: 'ann@gmail.example', status: 'pending', orcpt: 'rfc822;ann@gmial.example' });
        expect(fixed.recipients[1]!.address).toBe('bob@dest.example');
        expect((await q.get(m.id))?.recipients[0]?.address).toBe('ann@gmail.example');
        // An ORCPT the sender gave is kept as it was.
        expect((await q.redirect(m.id, 'bob@dest.example', 'robert@dest.example')).recipients[1]).toMatchObject({ address: 'robert@dest.example', orcpt: 'rfc822;Bob@Dest.example' });
        expect((await q.browse({ domain: 'gmail.example' })).items.map((x) => x.id)).toContain(m.id);
        expect((await q.browse({ domain: 'gmial.example' })).items.map((x) => x.id)).not.toContain(m.id);
        // Refused: an address it lacks (404), one it already has (409), while an attempt runs (409), once done (409).
        await expect(q.redirect(m.id, 'nobody@else.example', 'x@y.example')).rejects.toSatisfy((e) => e instanceof RecipientNotPendingError && (e as RecipientNotPendingError).httpStatus === 404);
        await expect(q.redirect(m.id, 'ann@gmail.example', 'Robert@dest.example')).rejects.toSatisfy((e) => (e as { httpStatus?: number }).httpStatus === 409);
        const r = await reserveOne(q, m.id);
        await expect(q.redirect(m.id, 'ann@gmail.example', 'a@b.example')).rejects.toBeInstanceOf(InvalidTransitionError);
        const after = await q.recordAttempt(m.id, r.lease!.token, {
          outcomes: [{ address: 'ann@gmail.example', outcome: 'delivered' }, { address: 'robert@dest.example', outcome: 'deferred' }],
          retryAt: Date.now() + 3_600_000,
        });
        expect(after.recipients.map((x) => [x.address, x.status])).toEqual([['ann@gmail.example', 'delivered'], ['robert@dest.example', 'deferred']]);
        await expect(q.redirect(m.id, 'ann@gmail.example', 'a@b.example')).rejects.toSatisfy((e) => e instanceof RecipientNotPendingError && (e as RecipientNotPendingError).httpStatus === 409);
        // A held mail stays held.
        await q.hold(m.id, 'look');
        expect(await q.redirect(m.id, 'robert@dest.example', 'bob@dest.example')).toMatchObject({ state: 'held', holdReason: 'look' });
      });

      it('bounce of some recipients: only those, merged with a request still waiting; held stays held; unknown or done ones refused', async () => {
        const three = [{ address: 'a@one.example' }, { address: 'b@two.example' }, { address: 'c@three.example' }];
        const m = await q.enqueue(request({ recipients: three, notBefore: Date.now() + 3_600_000 }));
        const first = await q.bounce(m.id, 'typo', ['B@Two.example']);
        expect(first.state).toBe('queued');
        expect(first.bounceRequest).toMatchObject({ reason: 'typo', recipients: ['b@two.example'] });
        expect(first.notBefore).toBeLessThanOrEqual(Date.now());
        const second = await q.bounce(m.id, 'dead domain', ['c@three.example']);
        expect(second.bounceRequest?.reason).toBe('dead domain');
        expect([...second.bounceRequest!.recipients!].sort()).toEqual(['b@two.example', 'c@three.example']);
        await expect(q.bounce(m.id, 'x', ['nobody@else.example'])).rejects.toSatisfy((e) => e instanceof RecipientNotPendingError && (e as RecipientNotPendingError).httpStatus === 404);
        // Its attempt fails the two named, defers the third: the request is done with, the mail waits for its retry.
        const r = await reserveOne(q, m.id);
        const after = await q.recordAttempt(m.id, r.lease!.token, {
          outcomes: [{ address: 'a@one.example', outcome: 'deferred' }, { address: 'b@two.example', outcome: 'failed' }, { address: 'c@three.example', outcome: 'failed' }],
          retryAt: Date.now() + 3_600_000,
        });
        expect(after.state).toBe('queued');
        expect(after.bounceRequest).toBeUndefined();
        expect(after.notBefore).toBeGreaterThan(Date.now() + 3_000_000);
        await expect(q.bounce(m.id, 'x', ['b@two.example'])).rejects.toSatisfy((e) => e instanceof RecipientNotPendingError && (e as RecipientNotPendingError).httpStatus === 409);
        // Naming every recipient left is a whole bounce.
        expect((await q.bounce(m.id, 'all of it', ['a@one.example'])).bounceRequest).toEqual({ reason: 'all of it', at: expect.any(Number) });

        const held = await q.enqueue(request({ recipients: three }));
        await q.hold(held.id, 'look first');
        const h = await q.bounce(held.id, 'typo', ['a@one.example']);
        expect([h.state, h.holdReason, h.bounceRequest?.recipients]).toEqual(['held', 'look first', ['a@one.example']]);
        expect((await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 })).map((x) => x.id)).not.toContain(held.id);
        // A whole bounce replaces a partial one.
        expect((await q.bounce(held.id, 'everything')).bounceRequest).toEqual({ reason: 'everything', at: expect.any(Number) });
      });

      it('bounce of some recipients asked while an attempt runs survives that attempt: due at once after it', async () => {
        const two = [{ address: 'a@one.example' }, { address: 'b@two.example' }];
        const m = await q.enqueue(request({ recipients: two }));
        const r = await reserveOne(q, m.id);
        const marked = await q.bounce(m.id, 'typo', ['b@two.example']);
        expect(marked.state).toBe('active');
        const after = await q.recordAttempt(m.id, r.lease!.token, {
          outcomes: [{ address: 'a@one.example', outcome: 'delivered' }, { address: 'b@two.example', outcome: 'deferred' }],
          retryAt: Date.now() + 3_600_000,
        });
        expect(after.state).toBe('queued');
        expect(after.bounceRequest?.recipients).toEqual(['b@two.example']);
        expect(after.notBefore).toBeLessThanOrEqual(Date.now());
        expect((await reserveOne(q, m.id)).id).toBe(m.id);
      });

      it('setPriority and setNotBefore change the due order', async () => {
        const now = Date.now();
        const a = await q.enqueue(request({ priority: 0, notBefore: now - 10 }));
        const b = await q.enqueue(request({ priority: 0, notBefore: now - 10 }));
        expect((await q.setPriority(b.id, 7)).priority).toBe(7);
        const later = now + 3_600_000;
        expect((await q.setNotBefore(a.id, later)).notBefore).toBe(later);
        const got = await q.reserveDue({ owner: OWNER, limit: 10, leaseMs: 60_000 });
        expect(got.map((m) => m.id)).toEqual([b.id]);
        expect(await q.nextDueAt()).toBe(later);
      });

      it('throws MailNotFoundError for an unknown id', async () => {
        const id = newMailId();
        for (const action of [
          () => q.hold(id), () => q.release(id), () => q.remove(id), () => q.retryNow(id),
          () => q.setPriority(id, 1), () => q.setNotBefore(id, 0),
        ]) {
          await expect(action()).rejects.toBeInstanceOf(MailNotFoundError);
        }
      });
    });

    describe('browse', () => {
      const base = 1_700_000_000_000;
      let all: QueuedMail[];

      /** 40 mails over 4 domains, 3 senders, 3 priorities; some held, one removed, sizes growing. */
      async function fill(): Promise<void> {
        all = [];
        for (let i = 0; i < 40; i++) {
          const m = await q.enqueue(request({
            sender: i % 10 === 0 ? '' : `sender${i % 3}@from.example`,
            recipients: [{ address: `user${i % 5}@dom${i % 4}.example` }, ...(i % 7 === 0 ? [{ address: 'extra@Other.Example' }] : [])],
            priority: i % 3,
            notBefore: base + ((i * 7919) % 40) * 1000,
            receivedAt: base + i * 1000,
            body: Buffer.alloc(100 + i * 10, 'x'),
            subject: i === 13 ? 'Invoice 4711 overdue' : `newsletter ${i}`,
            messageId: `<msg${i}@from.example>`,
          }));
          all.push(m);
        }
        for (const i of [3, 8, 21]) all[i] = await q.hold(all[i]!.id, 'check');
        all[5] = await q.remove(all[5]!.id);
      }

      async function pageAll(filter: Parameters<Queue['browse']>[0], sort: SortField, order: 'asc' | 'desc', limit: number): Promise<QueuedMail[]> {
        const out: QueuedMail[] = [];
        let cursor: string | undefined;
        for (let pages = 0; pages < 200; pages++) {
          const page = await q.browse(filter, { sort, order, limit, ...(cursor ? { cursor } : {}) });
          expect(page.items.length).toBeLessThanOrEqual(limit);
          out.push(...page.items);
          cursor = page.nextCursor;
          if (!cursor) return out;
        }
        throw new Error('pagination did not end');
      }

      function expected(pred: (m: QueuedMail) => boolean, key: (m: QueuedMail) => (number | string)[], desc = false): string[] {
        const cmp = (a: (number | string)[], b: (number | string)[]): number => {
          for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
          return 0;
        };
        return all.filter(pred).sort((a, b) => (desc ? -1 : 1) * cmp(key(a), key(b))).map((m) => m.id);
      }

      const received = (m: QueuedMail): (number | string)[] => [m.receivedAt, m.id];

      beforeEach(fill);

      it('filters by state, domain, sender, recipient, priority and combinations', async () => {
        const cases: [Parameters<Queue['browse']>[0], (m: QueuedMail) => boolean][] = [
          [{}, () => true],
          [{ state: 'held' }, (m) => m.state === 'held'],
          [{ state: ['held', 'removed'] }, (m) => m.state === 'held' || m.state === 'removed'],
          [{ domain: 'dom2.example' }, (m) => m.recipients.some((r) => r.address.endsWith('@dom2.example'))],
          [{ domain: 'OTHER.example' }, (m) => m.recipients.some((r) => r.address === 'extra@Other.Example')],
          [{ sender: 'Sender1@from.example' }, (m) => m.sender === 'sender1@from.example'],
          [{ sender: '' }, (m) => m.sender === ''],
          [{ recipient: 'user3@dom3.example' }, (m) => m.recipients.some((r) => r.address === 'user3@dom3.example')],
          [{ priority: 2 }, (m) => m.priority === 2],
          [{ priority: [0, 1] }, (m) => m.priority !== 2],
          [{ state: 'queued', priority: 1 }, (m) => m.state === 'queued' && m.priority === 1],
          [{ state: 'queued', domain: 'dom1.example' }, (m) => m.state === 'queued' && m.recipients.some((r) => r.address.endsWith('@dom1.example'))],
          [{ since: base + 10_000, until: base + 19_000 }, (m) => m.receivedAt >= base + 10_000 && m.receivedAt <= base + 19_000],
          [{ minSize: 300, maxSize: 400 }, (m) => m.size >= 300 && m.size <= 400],
          [{ q: 'invoice' }, (m) => m.subject === 'Invoice 4711 overdue'],
          [{ q: 'MSG17@' }, (m) => m.messageId === '<msg17@from.example>'],
        ];
        for (const [filter, pred] of cases) {
          const want = expected(pred, received);
          const got = await pageAll(filter, 'received', 'asc', 1000);
          expect(got.map((m) => m.id), JSON.stringify(filter)).toEqual(want);
          const first = await q.browse(filter, { limit: 5 });
          expect(first.total.count, JSON.stringify(filter)).toBeGreaterThanOrEqual(Math.min(5, want.length));
          if (first.total.exact) expect(first.total.count, JSON.stringify(filter)).toBe(want.length);
        }
      });

      it('gives exact totals for state, priority and domain filters', async () => {
        for (const filter of [{}, { state: 'queued' as const }, { priority: 1 }, { domain: 'dom0.example' }]) {
          const page = await q.browse(filter, { limit: 3 });
          const want = all.filter((m) => pageMatches(m, filter)).length;
          expect(page.total, JSON.stringify(filter)).toEqual({ count: want, exact: true });
        }
      });

      it('sorts and paginates without duplicates or gaps', async () => {
        const sorts: [SortField, (m: QueuedMail) => (number | string)[]][] = [
          ['received', received],
          ['priority', (m) => [m.priority, m.receivedAt, m.id]],
          ['nextAttempt', (m) => [m.notBefore, m.id]],
        ];
        for (const [sort, key] of sorts) {
          for (const order of ['asc', 'desc'] as const) {
            for (const filter of [{}, { state: ['queued', 'held'] as ('queued' | 'held')[] }, { domain: 'dom1.example' }]) {
              const want = expected((m) => pageMatches(m, filter), key, order === 'desc');
              const got = await pageAll(filter, sort, order, 7);
              expect(got.map((m) => m.id), `${sort} ${order} ${JSON.stringify(filter)}`).toEqual(want);
            }
          }
        }
      });

      it('rejects a malformed cursor', async () => {
        await expect(q.browse({}, { cursor: 'not-a-cursor!' })).rejects.toThrow();
      });
    });

    describe('stats', () => {
      it('counts by state, priority and destination', async () => {
        const now = Date.now();
        const mk = (prio: number, domain: string, ageMin: number) =>
          q.enqueue(request({ priority: prio, recipients: [{ address: `u@${domain}` }], receivedAt: now - ageMin * 60_000 }));
        await mk(0, 'a.example', 1);
        await mk(0, 'a.example', 7);
        await mk(1, 'a.example', 2000);
        await mk(1, 'b.example', 30);
        const held = await mk(2, 'c.example', 1);
        await q.hold(held.id);
        const gone = await mk(2, 'c.example', 1);
        const r = await reserveOne(q, gone.id, 60_000);
        await q.recordAttempt(gone.id, r.lease!.token, { outcomes: [{ address: 'u@c.example', outcome: 'delivered' }] });
        const s = await q.stats({ now });
        expect(s.byState.delivered).toBe(1);
        expect(s.byState.held).toBe(1);
        expect(s.byState.queued + s.byState.active).toBe(4);
        expect(s.byPriority).toMatchObject({ 0: 2, 1: 2, 2: 1 });
        expect(s.oldestReceivedAt).toBe(now - 2000 * 60_000);
        expect(s.topDestinations[0]).toEqual({ domain: 'a.example', count: 3 });
        expect(s.topDestinations).toContainEqual({ domain: 'b.example', count: 1 });
        expect(s.topDestinations).toContainEqual({ domain: 'c.example', count: 1 });
        const rowA = s.ageByDestination.rows.find((x) => x.domain === 'a.example')!;
        expect(s.ageByDestination.bucketsMinutes).toHaveLength(rowA.counts.length);
        expect(rowA.total).toBe(3);
        // 1 min → bucket 0 (<5), 7 min → bucket 1 (<10), 2000 min → last bucket (over a day).
        expect(rowA.counts[0]).toBe(1);
        expect(rowA.counts[1]).toBe(1);
        expect(rowA.counts[rowA.counts.length - 1]).toBe(1);
        expect(rowA.counts.reduce((a, b) => a + b, 0)).toBe(3);
      });
    });

    describe('subscribe', () => {
      it('reports enqueue, hold, release, remove, reserve and delivery', async () => {
        const events: QueueEvent[] = [];
        const unsubscribe = q.subscribe((e) => events.push(e));
        const a = await q.enqueue(request());
        await q.hold(a.id);
        await q.release(a.id);
        await q.remove(a.id);
        const b = await q.enqueue(request());
        const r = await reserveOne(q, b.id);
        await q.recordAttempt(b.id, r.lease!.token, { outcomes: [{ address: 'bob@dest.example', outcome: 'delivered' }] });
        const want: [string, string][] = [
          ['enqueued', a.id], ['held', a.id], ['released', a.id], ['removed', a.id],
          ['enqueued', b.id], ['reserved', b.id], ['delivered', b.id],
        ];
        await until('all events', async () => events.length >= want.length);
        const seen = events.map((e) => [e.type, e.id]);
        for (const w of want) expect(seen).toContainEqual(w);
        expect(events.find((e) => e.type === 'delivered')?.state).toBe('delivered');
        unsubscribe();
        const n = events.length;
        await q.enqueue(request());
        await new Promise((res) => setTimeout(res, 50));
        expect(events.length).toBe(n);
      });
    });
  });
}

function pageMatches(m: QueuedMail, f: { state?: string | string[]; priority?: number; domain?: string }): boolean {
  if (f.state !== undefined && !(Array.isArray(f.state) ? f.state : [f.state]).includes(m.state)) return false;
  if (f.priority !== undefined && m.priority !== f.priority) return false;
  if (f.domain !== undefined && !m.recipients.some((r) => r.address.toLowerCase().endsWith(`@${f.domain}`))) return false;
  return true;
}
