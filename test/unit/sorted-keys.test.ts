/**
 * The Kafka view's sorted set (src/queue/kafka/sorted-keys.ts), against a plain sorted array:
 * random adds (duplicates included), deletes (of absent entries too) and walks, at sizes that
 * split chunks and empty them again.
 */
import { describe, expect, it } from 'vitest';
import { SortedKeys, type KeyEntry } from '../../src/queue/kafka/sorted-keys.js';
import { seededRandom as rng } from '../helpers/rng.js';

const byKey = (a: KeyEntry, b: KeyEntry) => a.k - b.k || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

describe('SortedKeys', () => {
  for (const seed of [1, 2, 20261205]) {
    it(`keeps the order, size, first entry and walks of a sorted array through 20,000 random changes (seed ${seed})`, () => {
      const rand = rng(seed);
      const set = new SortedKeys();
      const ref = new Map<string, KeyEntry>();
      const sorted = () => [...ref.values()].sort(byKey);
      for (let step = 0; step < 20_000; step++) {
        // Grow to a few thousand entries (many chunks), then shrink to nothing, then grow again.
        const phase = Math.floor(step / 5_000) % 2;
        const k = Math.floor(rand() * 500);
        const id = `m${Math.floor(rand() * 3_000)}`;
        if (rand() < (phase === 0 ? 0.75 : 0.2)) {
          set.add(k, id);
          ref.set(`${k}|${id}`, { k, id });
        } else {
          // Often an entry that is there, sometimes one that is not.
          const present = [...ref.values()];
          const e = present.length && rand() < 0.8 ? present[Math.floor(rand() * present.length)]! : { k, id };
          set.delete(e.k, e.id);
          ref.delete(`${e.k}|${e.id}`);
        }
        if (step % 997 === 0 || step === 19_999) {
          const want = sorted();
          expect(set.size).toBe(want.length);
          expect(set.first()).toEqual(want[0]);
          expect([...set.upTo(Number.MAX_SAFE_INTEGER)]).toEqual(want);
          const cut = Math.floor(rand() * 500);
          expect([...set.upTo(cut)]).toEqual(want.filter((e) => e.k <= cut));
        }
      }
    });
  }

  it('takes entries in any order and gives them back sorted', () => {
    const set = new SortedKeys();
    const rand = rng(7);
    const entries = Array.from({ length: 10_000 }, (_, i) => ({ k: Math.floor(rand() * 1e6), id: `id${i}` }));
    for (const e of entries) set.add(e.k, e.id);
    set.add(entries[0]!.k, entries[0]!.id); // again: no duplicate
    expect(set.size).toBe(10_000);
    expect([...set.upTo(Infinity)]).toEqual([...entries].sort(byKey));
    for (const e of entries) set.delete(e.k, e.id);
    expect(set.size).toBe(0);
    expect(set.first()).toBeUndefined();
    expect([...set.upTo(Infinity)]).toEqual([]);
  });
});
