/**
 * Active mail (leased for a delivery attempt) is indexed under 'queued' in the state-keyed index
 * families, so a reservation rewrites two index keys instead of fourteen. What must not change:
 * browse by state (active alone, queued alone, both, none) lists exactly the mails in those
 * states, with the filters and sorts, and their totals are right; a spool written by an earlier
 * version (active mail under 'active' keys) is put right at start.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logger.js';
import { newMailId } from '../../src/queue/model.js';
import { indexKeys, keyDiff } from '../../src/queue/spool/indexes.js';
import { SpoolQueue } from '../../src/queue/spool/spool-queue.js';
import type { BrowseFilter, MailState, QueuedMail } from '../../src/queue/types.js';
import { makeTmpDir, type TmpDir } from '../helpers/tmp.js';

let tmp: TmpDir;
let q: SpoolQueue;

async function open(): Promise<SpoolQueue> {
  const s = new SpoolQueue({ dir: tmp.path, retainFinishedMs: 3_600_000, maxSize: 2 ** 30, logger: silentLogger() });
  await s.start();
  return s;
}

async function enqueue(i: number, sender = `s${i}@example.org`): Promise<QueuedMail> {
  return q.enqueue({
    id: newMailId(Date.now() - 10_000 + i),
    sender,
    recipients: [{ address: `u${i}@dest${i % 2}.example` }],
    body: Buffer.from(`Subject: m${i}\r\n\r\nbody\r\n`),
    priority: i % 3,
    notBefore: 0,
    receivedAt: Date.now() - 10_000 + i,
  } as Parameters<SpoolQueue['enqueue']>[0]);
}

/** Every page of a browse, followed by cursor. */
async function all(filter: BrowseFilter, sort: 'received' | 'priority' | 'nextAttempt' = 'received'): Promise<{ ids: string[]; total: { count: number; exact: boolean } }> {
  const ids: string[] = [];
  let cursor: string | undefined;
  let total: { count: number; exact: boolean } | undefined;
  do {
    const page = await q.browse(filter, { sort, limit: 7, ...(cursor ? { cursor } : {}) });
    total ??= page.total;
    ids.push(...page.items.map((m) => m.id));
    cursor = page.nextCursor;
  } while (cursor);
  return { ids, total: total! };
}

beforeEach(async () => {
  tmp = await makeTmpDir('spool-active-ix-');
  q = await open();
});

afterEach(async () => {
  await q.close();
  await tmp.cleanup();
});

describe('active mail in the index', () => {
  it('browse by state lists exactly the mails in it, in every sort, with right totals', async () => {
    const mails: QueuedMail[] = [];
    for (let i = 0; i < 30; i++) mails.push(await enqueue(i, i % 4 === 0 ? 'Shared@Example.org' : undefined));
    const reserved = await q.reserveDue({ owner: 'test', limit: 12, leaseMs: 60_000, lowPriorityShare: 0 });
    expect(reserved).toHaveLength(12);
    await q.hold(mails.find((m) => !reserved.some((r) => r.id === m.id))!.id);
    const byState = new Map<string, MailState>();
    for (const m of mails) byState.set(m.id, (await q.get(m.id))!.state);
    const expected = (states: MailState[], extra: (m: QueuedMail) => boolean = () => true) =>
      mails.filter((m) => states.includes(byState.get(m.id)!) && extra(m)).map((m) => m.id).sort();

    for (const sort of ['received', 'priority', 'nextAttempt'] as const) {
      for (const states of [['active'], ['queued'], ['queued', 'active'], ['held', 'active']] as MailState[][]) {
        const got = await all({ state: states }, sort);
        expect([...got.ids].sort(), `${sort} ${states.join(',')}`).toEqual(expected(states));
        expect(new Set(got.ids).size).toBe(got.ids.length);
      }
      const everything = await all({}, sort);
      expect([...everything.ids].sort()).toEqual(mails.map((m) => m.id).sort());
    }
    expect((await all({ state: 'active' })).total).toEqual({ count: 12, exact: true });
    expect((await all({ state: 'queued' })).total).toEqual({ count: 17, exact: true });

    // A selector (sender) with a state: the selector's index holds active mail under queued too.
    const shared = (m: QueuedMail) => m.sender === 'Shared@Example.org';
    for (const states of [['active'], ['queued'], ['queued', 'active']] as MailState[][]) {
      const got = await all({ sender: 'shared@example.org', state: states }, 'priority');
      expect([...got.ids].sort(), states.join(',')).toEqual(expected(states, shared));
      expect(got.total.count).toBeGreaterThanOrEqual(expected(states, shared).length);
    }
    expect((await all({ sender: 'shared@example.org', state: ['queued', 'active'] })).total).toEqual({ count: expected(['queued', 'active'], shared).length, exact: true });

    // Finished: the active ones leave, delivered ones are found under their own state.
    for (const r of reserved) {
      await q.recordAttempt(r.id, r.lease!.token, { outcomes: r.recipients.map((x) => ({ address: x.address, outcome: 'delivered' as const, reply: { code: 250, message: 'ok' } })) });
    }
    expect((await all({ state: 'active' })).ids).toEqual([]);
    expect([...(await all({ state: 'delivered' })).ids].sort()).toEqual(reserved.map((r) => r.id).sort());
    expect((await all({ state: 'queued' })).ids.sort()).toEqual(expected(['queued']));
  });

  it('a reservation rewrites only the due and lease keys', async () => {
    const m = await enqueue(1);
    const [r] = await q.reserveDue({ owner: 'test', limit: 1, leaseMs: 60_000, lowPriorityShare: 0 });
    const diff = keyDiff(indexKeys(m), indexKeys(r!));
    expect(diff.remove.map((k) => k[0])).toEqual(['q']);
    expect(diff.add.map((k) => k[0])).toEqual(['a']);
  });

  it('a spool whose active mail has entries under "active" (earlier versions) is put right at start', async () => {
    const kept = await enqueue(1, 'Old@Example.org');
    const [r] = await q.reserveDue({ owner: 'old', limit: 1, leaseMs: 60_000, lowPriorityShare: 0 });
    // Rewrite its entries as an earlier version wrote them.
    const legacy = keyDiff(indexKeys(r!), indexKeys(r!, true));
    expect(legacy.add.length).toBeGreaterThan(0);
    await q.env.transaction(() => {
      for (const k of legacy.remove) q.ix.removeSync(k);
      for (const k of legacy.add) q.ix.putSync(k, Buffer.from([1]));
    });
    await q.close();

    q = await open();
    const back = await q.get(kept.id);
    expect(back?.state).toBe('queued'); // the orphan lease was released
    expect((await all({ state: 'queued', sender: 'old@example.org' })).ids).toEqual([kept.id]);
    expect((await all({ state: 'queued' }, 'nextAttempt')).ids).toEqual([kept.id]);
    const leftovers = [...q.ix.getKeys({})].filter((k) => (k as unknown[]).includes('active'));
    expect(leftovers).toEqual([]);
    expect(await q.reserveDue({ owner: 'new', limit: 5, leaseMs: 60_000, lowPriorityShare: 0 })).toHaveLength(1);
  });
});
