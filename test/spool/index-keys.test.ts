import { describe, expect, it } from 'vitest';
import { indexKeys, keyDiff, type IndexKey } from '../../src/queue/spool/indexes.js';
import type { QueuedMail } from '../../src/queue/types.js';

function mail(over: Partial<QueuedMail>, recipients: number): QueuedMail {
  return {
    id: '01TESTMAIL', sender: 'Sender@Example.org', priority: 5, notBefore: 1000, receivedAt: 900, updatedAt: 900, state: 'queued',
    recipients: Array.from({ length: recipients }, (_, i) => ({ address: `r${i}@d${i % 3}.example`, state: 'pending', attempts: 0 })),
    ...over,
  } as unknown as QueuedMail;
}

const str = (keys: IndexKey[]) => keys.map((k) => JSON.stringify(k)).sort();

describe('keyDiff', () => {
  for (const recipients of [1, 3, 40]) {
    it(`turns one mail's keys into the other's (${recipients} recipient${recipients > 1 ? 's' : ''})`, () => {
      const before = indexKeys(mail({}, recipients));
      const after = indexKeys(mail({ state: 'active', lease: { owner: 'n', token: 't', until: 5000 }, priority: -0 } as Partial<QueuedMail>, recipients));
      const { remove, add } = keyDiff(before, after);
      // Applying the diff to the old set gives exactly the new set, and nothing is removed and re-added.
      const applied = new Set(str(before));
      for (const k of str(remove)) expect(applied.delete(k)).toBe(true);
      for (const k of str(add)) {
        expect(applied.has(k)).toBe(false);
        applied.add(k);
      }
      expect([...applied].sort()).toEqual(str(after));
      // Keys that do not involve the state or priority stay put.
      expect(remove.length).toBeLessThan(before.length + 1);
      expect(str(remove).some((k) => k.includes('"queued"'))).toBe(true);
    });
  }

  it('finds nothing to do between equal key sets, and everything to add from none', () => {
    const keys = indexKeys(mail({}, 2));
    expect(keyDiff(keys, indexKeys(mail({}, 2)))).toEqual({ remove: [], add: [] });
    expect(keyDiff([], keys)).toEqual({ remove: [], add: keys });
  });
});
