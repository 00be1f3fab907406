/**
 * How a node reading the Kafka settings topic turns records back into changes: the sections of one
 * publish together, whatever compaction left of it (src/queue/kafka/settings.ts).
 */
import { expect, it } from 'vitest';
import { PublishAssembler, type SettingsRecord } from '../../src/queue/kafka/settings.js';

function reader() {
  const changes: string[][] = [];
  const assembler = new PublishAssembler((records) => changes.push(records.map((r) => `${r.offset}:${r.key}`)));
  let offset = 0;
  const add = (key: string, publish?: [string, number]) => {
    const record: SettingsRecord = { offset: offset++, key, value: Buffer.from('null'), ...(publish ? { publish: { id: publish[0], parts: publish[1] } } : {}) };
    assembler.add(record);
  };
  return { changes, add, end: () => assembler.end() };
}

it('hands over the sections of one publish together, once all its parts are read', () => {
  const r = reader();
  r.add('priorities', ['p1', 2]);
  expect(r.changes).toEqual([]);
  r.add('rules', ['p1', 2]);
  r.add('relay.reject', ['p2', 1]);
  expect(r.changes).toEqual([['0:priorities', '1:rules'], ['2:relay.reject']]);
});

it('applies what compaction left of a publish when a record of another one follows, or at the end of the topic', () => {
  const r = reader();
  // p1 wrote priorities and rules; a later publish replaced rules, so compaction removed p1's.
  r.add('priorities', ['p1', 2]);
  r.add('rules', ['p2', 1]);
  expect(r.changes).toEqual([['0:priorities'], ['1:rules']]);
  // The last publish lost a part too, and nothing follows it.
  r.add('delivery.paused', ['p3', 3]);
  r.add('delivery.routes', ['p3', 3]);
  expect(r.changes).toHaveLength(2);
  r.end();
  expect(r.changes).toEqual([['0:priorities'], ['1:rules'], ['2:delivery.paused', '3:delivery.routes']]);
  r.end();
  expect(r.changes).toHaveLength(3);
});

it('takes records without publish headers (written by an older build) one at a time', () => {
  const r = reader();
  r.add('relay.reject');
  r.add('priorities', ['p1', 2]);
  r.add('delivery.paused');
  expect(r.changes).toEqual([['0:relay.reject'], ['1:priorities'], ['2:delivery.paused']]);
});
