/**
 * A backend's records, indexes and counters stay true to its mails through any sequence of
 * operations and restarts (run by test/spool/random-ops.test.ts and test/contract/kafka-random-ops.test.ts): seeded random enqueues (held, delayed, due; one to three recipients;
 * the null sender), reservations, attempts with every outcome, final "."s committed and settled,
 * lease releases, operator actions
 * (hold, release, remove, bounce, redirect, retry now, priority, not-before) and close/reopen.
 * The test keeps the last version of each mail the spool returned, and checks every few steps:
 * - `get` returns that version (after a restart of the spool, an active mail comes back queued,
 *   its lease given back);
 * - a browse with no filter, page by page, lists every mail once, in received order;
 * - browses with random filters, sorts and page sizes list exactly the mails `matchesFilter` takes,
 *   and an exact total is their number;
 * - `stats().byState` counts them.
 * A refused action (a transition the state does not allow) must be a QueueError and change nothing.
 * A failure names the seed and the step; FUZZ_SEED=N repeats it, FUZZ_STEPS=N makes it longer.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { matchesFilter, newMailId } from '../../src/queue/model.js';
import { QueueError } from '../../src/queue/errors.js';
import type { BrowseFilter, EnqueueRequest, MailState, QueuedMail, SortField } from '../../src/queue/types.js';
import { seededRandom } from '../helpers/rng.js';
import type { ContractHandle } from './queue-contract.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261205);
const STATES: MailState[] = ['queued', 'active', 'held', 'delivered', 'bounced', 'expired', 'removed'];
const SENDERS = ['alice@corp.example', 'Bob@Corp.Example', '', 'news@lists.example'];
const DOMAINS = ['d0.example', 'd1.example', 'D2.example', 'd3.example'];
const REPLIES = [
  { code: 250, enhanced: '2.0.0', message: 'Ok queued' },
  { code: 451, enhanced: '4.7.1', message: 'Greylisted, try later' },
  { code: 421, enhanced: '4.7.0', message: '[TSS04] Messages temporarily deferred' },
  { code: 550, enhanced: '5.1.1', message: 'No such user here' },
  { code: 552, message: 'Mailbox over quota' },
];

export interface WalkOptions {
  steps: number;
  /** A restart gives the leases of the process that is gone back at once (the spool: one process per directory). */
  restartReleasesLeases: boolean;
}

export function randomWalk(name: string, open: () => Promise<ContractHandle>, o: WalkOptions): void {
  let h: ContractHandle | undefined;
  afterEach(async () => {
    await h?.cleanup().catch(() => undefined);
    h = undefined;
  });

  describe(`${name} under random operations and restarts`, () => {
    it(`keeps records, indexes and counters consistent (seed ${SEED})`, async () => {
      h = await open();
      let q = h.queue;
      const STEPS = Number(process.env.FUZZ_STEPS ?? o.steps);
      const rnd = seededRandom(SEED);
      const int = (n: number) => Math.floor(rnd() * n);
      const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
      const known = new Map<string, QueuedMail>();
      const base = Date.now() - 3_600_000;
      let step = 0;
      const where = () => `seed ${SEED}, step ${step}`;
      const refusals = { expected: 0 };

      /** Runs an action that may be refused for the mail's state: a QueueError, and the mail unchanged. */
      const attempt = async (id: string, action: () => Promise<QueuedMail>) => {
        try {
          known.set(id, await action());
        } catch (err) {
          expect(err, `${where()}: ${(err as Error).message}`).toBeInstanceOf(QueueError);
          refusals.expected++;
          expect(await q.get(id), `${where()}: a refused action changed ${id}`).toEqual(known.get(id));
        }
      };

      const check = async () => {
        for (const [id, mail] of known) expect(await q.get(id), `${where()}: get ${id}`).toEqual(mail);
        const everything = [...known.values()].sort((a, b) => a.receivedAt - b.receivedAt || (a.id < b.id ? -1 : 1));
        expect(await browseAll({}, 'received', 'asc', 1 + int(7)), `${where()}: browse all`).toEqual(everything.map((m) => m.id));
        for (let n = 0; n < 6; n++) {
          const filter = randomFilter();
          const sort = pick<SortField>(['received', 'priority', 'nextAttempt']);
          const order = pick(['asc', 'desc'] as const);
          const want = everything.filter((m) => matchesFilter(m, filter));
          const got = await browseAll(filter, sort, order, 1 + int(9));
          expect([...got].sort(), `${where()}: browse ${JSON.stringify(filter)} by ${sort} ${order}`).toEqual(want.map((m) => m.id).sort());
          if (sort === 'received') expect(got, `${where()}: order`).toEqual((order === 'asc' ? want : [...want].reverse()).map((m) => m.id));
          const first = await q.browse(filter, { sort, order, limit: 5 });
          if (first.total.exact) expect(first.total.count, `${where()}: total of ${JSON.stringify(filter)}`).toBe(want.length);
        }
        const stats = await q.stats();
        for (const s of STATES) expect(stats.byState[s] ?? 0, `${where()}: stats ${s}`).toBe(everything.filter((m) => m.state === s).length);
      };

      const browseAll = async (filter: BrowseFilter, sort: SortField, order: 'asc' | 'desc', limit: number): Promise<string[]> => {
        const ids: string[] = [];
        let cursor: string | undefined;
        for (let pages = 0; pages < 1000; pages++) {
          const page = await q.browse(filter, { sort, order, limit, ...(cursor ? { cursor } : {}) });
          ids.push(...page.items.map((m) => m.id));
          if (!page.nextCursor) return ids;
          cursor = page.nextCursor;
        }
        throw new Error(`${where()}: browse did not end`);
      };

      const randomFilter = (): BrowseFilter => {
        const f: BrowseFilter = {};
        if (rnd() < 0.5) f.state = rnd() < 0.5 ? pick(STATES) : STATES.filter(() => rnd() < 0.4);
        if (rnd() < 0.3) f.priority = rnd() < 0.5 ? pick([0, 10, 20, 30]) : [0, 10, 20, 30].filter(() => rnd() < 0.5);
        if (rnd() < 0.2) f.sender = pick(SENDERS).toUpperCase();
        if (rnd() < 0.2) f.domain = pick(DOMAINS).toLowerCase();
        if (rnd() < 0.15) f.recipient = `U${int(4)}@${pick(DOMAINS)}`;
        if (rnd() < 0.2) f.since = base + int(3_600_000);
        if (rnd() < 0.2) f.until = base + int(3_600_000);
        if (rnd() < 0.15) f.minSize = int(400);
        if (rnd() < 0.15) f.maxSize = int(400);
        if (rnd() < 0.15) f.q = pick(['invoice', 'NEWS', 'x', '<', '@corp']);
        if (rnd() < 0.15) f.reply = pick(['451', 'greylisted', '4.7.0 [tss04]', 'quota', '550 5.1.1', 'nothing like it']);
        return f;
      };

      const live = (states: MailState[]) => [...known.values()].filter((m) => states.includes(m.state));

      for (step = 0; step < STEPS; step++) {
        const roll = rnd();
        const now = Date.now();
        if (roll < 0.3 || known.size < 5) {
          const receivedAt = base + int(3_600_000);
          const id = newMailId(receivedAt);
          const recipients = Array.from({ length: 1 + int(3) }, () => ({ address: `u${int(4)}@${pick(DOMAINS)}` }))
            .filter((r, i, all) => all.findIndex((x) => x.address === r.address) === i);
          const subject = pick(['Invoice 7', 'news of the week', 'hello', 'x']);
          const mail = await q.enqueue({
            id, sender: pick(SENDERS), recipients, body: Buffer.from(`Subject: ${subject}\r\n\r\n${'b'.repeat(int(300))}\r\n`),
            priority: pick([0, 10, 20, 30]), notBefore: rnd() < 0.6 ? now - 1000 : now + 3_600_000, receivedAt,
            subject, messageId: `<${id}@corp.example>`, client: { address: '127.0.0.1' },
            ...(rnd() < 0.1 ? { hold: { reason: 'rule quarantine' } } : {}),
          } as EnqueueRequest);
          known.set(id, mail);
        } else if (roll < 0.45) {
          for (const m of await q.reserveDue({ owner: 'fuzz', limit: 1 + int(4), leaseMs: 60_000 })) known.set(m.id, m);
        } else if (roll < 0.65) {
          const active = live(['active']);
          if (!active.length) continue;
          const m = pick(active);
          const open = m.recipients.filter((r) => r.status !== 'delivered' && r.status !== 'failed' && r.status !== 'expired');
          const outcomes = open.filter(() => rnd() < 0.8).map((r) => {
            const reply = pick(REPLIES);
            const outcome = reply.code < 300 ? 'delivered' as const : reply.code < 500 ? (rnd() < 0.1 ? 'expired' as const : 'deferred' as const) : 'failed' as const;
            return { address: r.address, outcome, reply };
          });
          await attempt(m.id, () => q.recordAttempt(m.id, m.lease!.token, { outcomes, retryAt: now + 1000 + int(600_000) }));
        } else if (roll < 0.7) {
          const active = live(['active']);
          if (!active.length) continue;
          const m = pick(active);
          // A final "." sent (holds and removals refused until it settles or the attempt is
          // recorded), one settled, or the lease given back.
          const which = rnd();
          if (which < 0.4) await q.commitDelivery(m.id, m.lease!.token);
          else if (which < 0.6) await q.settleDelivery(m.id, m.lease!.token);
          else await q.releaseLease(m.id, m.lease!.token);
          known.set(m.id, (await q.get(m.id))!);
        } else if (roll < 0.97) {
          const m = pick([...known.values()]);
          const action = pick(['hold', 'release', 'remove', 'bounce', 'redirect', 'retryNow', 'setPriority', 'setNotBefore'] as const);
          await attempt(m.id, () => {
            switch (action) {
              case 'hold': return q.hold(m.id, 'operator');
              case 'release': return q.release(m.id);
              case 'remove': return q.remove(m.id, 'operator');
              case 'bounce': return q.bounce(m.id, 'operator');
              case 'redirect': return q.redirect(m.id, pick(m.recipients).address, `moved${int(100)}@${pick(DOMAINS)}`);
              case 'retryNow': return q.retryNow(m.id);
              case 'setPriority': return q.setPriority(m.id, pick([0, 10, 20, 30]));
              case 'setNotBefore': return q.setNotBefore(m.id, now + int(7_200_000) - 3_600_000);
            }
          });
        } else {
          q = await h.reopen();
          for (const [id, m] of known) {
            if (m.state !== 'active') continue;
            const after = (await q.get(id))!;
            if (o.restartReleasesLeases) {
              // The leases of the process that is gone are given back.
              expect(after.state, `${where()}: ${id} after a restart`).toBe('queued');
              expect(after.lease).toBeUndefined();
            }
            known.set(id, after);
          }
        }
        if (step % 20 === 19) await check();
      }
      await check();
      // The walk went through the states and refusals it is meant to.
      const states = new Set([...known.values()].map((m) => m.state));
      for (const s of ['queued', 'held', 'delivered', 'bounced', 'removed'] as MailState[]) expect(states.has(s), `some mail ${s}`).toBe(true);
      expect(refusals.expected).toBeGreaterThan(0);
    });
  });
}
