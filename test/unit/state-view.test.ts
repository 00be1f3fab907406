/**
 * The Kafka backend's state view (src/queue/kafka/state-view.ts) on record sequences that log
 * compaction and late writes produce: a reader may miss any of a key's records but the latest, so
 * a record computed from a generation at or past the view's is accepted, a mail met first in a
 * record whose `prev` is not 0 is adopted, and a stale write (`prev` below the view's generation)
 * is rejected as before; a write landing after this view purged the mail is rejected for
 * PURGED_MEMORY_MS. The same against a real broker's compaction: test/kafka/compaction.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { PURGED_MEMORY_MS, StateView, type StateRecord } from '../../src/queue/kafka/state-view.js';
import { applyHold, applyReserve, applySetPriority, createMail, newMailId } from '../../src/queue/model.js';
import type { QueuedMail, QueueEvent } from '../../src/queue/types.js';

const T0 = 1_800_000_000_000;

function record(prev: number, mail: QueuedMail, o: { w?: string; quiet?: boolean } = {}): Buffer {
  const r: StateRecord = { w: o.w ?? `w${Math.random()}`, prev, mail, ...(o.quiet ? { quiet: true } : {}) };
  return Buffer.from(JSON.stringify(r));
}

/** A mail's history as its writers produce it: enqueued (gen 1), reserved (2), held (3). */
function history(): QueuedMail[] {
  const m0 = createMail({
    id: newMailId(T0), sender: 'a@s.example', recipients: [{ address: 'b@d.example' }], body: Buffer.from('x'),
    priority: 1, notBefore: 0, client: { address: '127.0.0.1' }, classification: { priority: { source: 'default' } },
  }, T0);
  const m1 = applyReserve(m0, 'node-a', 'token', 60_000, T0 + 1);
  const m2 = applyHold(m1, 'operator', T0 + 2);
  return [m0, m1, m2];
}

function view(now = () => T0 + 10): { v: StateView; events: QueueEvent[] } {
  const v = new StateView(now);
  const events: QueueEvent[] = [];
  v.subscribe((e) => events.push(e));
  return { v, events };
}

describe('state view after log compaction', () => {
  it('adopts a mail met first in a later record, and goes on from it', () => {
    const [m0, m1, m2] = history();
    expect([m0!.generation, m1!.generation, m2!.generation]).toEqual([1, 2, 3]);
    const { v, events } = view();
    // Only the held record is left: its writer computed it from generation 2.
    v.apply(m2!.id, record(m1!.generation, m2!));
    expect(v.mails.get(m2!.id)?.state).toBe(m2!.state);
    expect(v.mails.get(m2!.id)?.generation).toBe(3);
    expect(v.rejectedLatest.size).toBe(0);
    expect(events.map((e) => e.type)).toEqual(['enqueued']);
    // The next change, computed from generation 3 by any node, is accepted as usual.
    const m3 = applySetPriority(m2!, 3, T0 + 3);
    v.apply(m3.id, record(3, m3));
    expect(v.mails.get(m3.id)?.priority).toBe(3);
    expect(v.rejectedLatest.size).toBe(0);
  });

  it('still rejects a stale write on a mail it read from the beginning', () => {
    const [m0, m1, m2] = history();
    const { v } = view();
    v.apply(m0!.id, record(0, m0!));
    v.apply(m0!.id, record(1, m1!));
    v.apply(m0!.id, record(2, m2!));
    // Another node's priority change computed from generation 2, landing after the hold.
    v.apply(m0!.id, record(2, applySetPriority(m1!, 3, T0 + 3)));
    expect(v.mails.get(m0!.id)?.state).toBe('held');
    expect(v.mails.get(m0!.id)?.priority).toBe(1);
    expect(v.rejectedLatest.has(m0!.id)).toBe(true);
  });

  it('takes a record past its generation: the records between were compacted away during its read', () => {
    const [m0, m1, m2] = history();
    const { v, events } = view();
    // Generation 1 read, generation 2 (reserved) removed by a run of the cleaner the read crossed.
    v.apply(m0!.id, record(0, m0!));
    v.apply(m0!.id, record(2, m2!));
    expect(v.mails.get(m0!.id)?.state).toBe('held');
    expect(v.rejectedLatest.size).toBe(0);
    expect(events.map((e) => e.type)).toEqual(['enqueued', 'held']);
    void m1;
  });

  it('ends with the state others hold when the cleaner kept a record that had lost its race', () => {
    const [m0, m1, m2] = history();
    // Two writers computed from generation 2 (reserved): the hold won, a priority change lost.
    // The cleaner kept the loser (the key's latest then) and removed the records before it; a
    // reader of what is left adopts it, until the repair sweep's re-assertion of the winner.
    const loser = applySetPriority(m1!, 0, T0 + 2);
    expect(loser.generation).toBe(m2!.generation);
    const { v } = view();
    v.apply(m0!.id, record(2, loser));
    expect(v.mails.get(m0!.id)?.priority).toBe(0);
    v.apply(m0!.id, record(3, m2!, { quiet: true }));
    expect(v.mails.get(m0!.id)?.state).toBe('held');
    expect(v.mails.get(m0!.id)?.priority).toBe(1);
    expect(v.rejectedLatest.size).toBe(0);
    // A stale re-assertion (written from an older generation) is not taken.
    v.apply(m0!.id, record(2, m1!, { quiet: true }));
    expect(v.mails.get(m0!.id)?.state).toBe('held');
    expect(v.rejectedLatest.has(m0!.id)).toBe(true);
  });

  it('rejects a write landing after it purged the mail, for PURGED_MEMORY_MS', () => {
    const [m0, m1, m2] = history();
    let now = T0 + 10;
    const { v, events } = view(() => now);
    v.apply(m0!.id, record(0, m0!));
    v.apply(m0!.id, record(1, m1!));
    v.apply(m0!.id, null, now);
    expect(v.mails.has(m0!.id)).toBe(false);
    v.apply(m0!.id, record(2, m2!));
    expect(v.mails.has(m0!.id)).toBe(false);
    expect(v.rejectedLatest.has(m0!.id)).toBe(true);
    expect(events.map((e) => e.type)).toEqual(['enqueued', 'reserved', 'purged']);
    // Long after: a record for it then is taken as what compaction left.
    now += PURGED_MEMORY_MS + 1;
    v.apply(m0!.id, record(2, m2!));
    expect(v.mails.get(m0!.id)?.state).toBe('held');
  });

  it('does not remember a tombstone older than PURGED_MEMORY_MS read at start', () => {
    const [m0, m1, m2] = history();
    const now = T0 + 2 * PURGED_MEMORY_MS;
    const { v } = view(() => now);
    v.apply(m0!.id, record(0, m0!));
    v.apply(m0!.id, null, T0);
    // A later record for the same key (written after that old tombstone) is what compaction left.
    v.apply(m0!.id, record(1, m1!));
    expect(v.mails.get(m0!.id)?.state).toBe('active');
    void m2;
  });
});
