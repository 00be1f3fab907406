/**
 * Run-time settings shared through the Kafka cluster (Queue.sharedSettings, the `<p>.settings`
 * topic), between queue instances on the real broker: a section one node publishes reaches every
 * node in one order, and a node that starts later begins with the last value of each section.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KafkaQueue } from '../../src/queue/kafka/kafka-queue.js';
import type { KafkaSettings } from '../../src/queue/kafka/settings.js';
import { kafkaBrokers, uniquePrefix } from './broker.js';
import { openKafkaQueue, until } from './helpers.js';

describe('kafka shared settings', () => {
  const prefix = uniquePrefix('settings');
  const open: KafkaQueue[] = [];
  const node = async () => {
    const q = await openKafkaQueue(kafkaBrokers(), prefix);
    open.push(q);
    return q;
  };
  let a: KafkaQueue;
  let b: KafkaQueue;

  beforeAll(async () => {
    a = await node();
    b = await node();
  }, 120_000);
  afterAll(async () => {
    await Promise.all(open.map((q) => q.close()));
  });

  it('delivers what one node publishes to every node, this one included, in the order published, each publish as one change', async () => {
    const seenA: Record<string, unknown>[] = [];
    const seenB: Record<string, unknown>[] = [];
    a.sharedSettings.subscribe((sections) => seenA.push(sections));
    b.sharedSettings.subscribe((sections) => seenB.push(sections));
    await a.sharedSettings.publish({ 'relay.reject': [{ sender: 'one@bad.example' }] });
    // Two sections changed together (one PUT): one call with both, on every node.
    await b.sharedSettings.publish({ 'relay.reject': [{ sender: 'two@bad.example' }], 'delivery.paused': ['slow.example'] });
    const expected = [
      { 'relay.reject': [{ sender: 'one@bad.example' }] },
      { 'relay.reject': [{ sender: 'two@bad.example' }], 'delivery.paused': ['slow.example'] },
    ];
    await until('both nodes read both changes', async () => seenA.length >= 2 && seenB.length >= 2, 15_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(seenA).toEqual(expected);
    expect(seenB).toEqual(expected);
  });

  it('keeps a node reading after its consumer stopped for good: a new one takes only what is new', async () => {
    const seen: Record<string, unknown>[] = [];
    b.sharedSettings.subscribe((sections) => seen.push(sections));
    const before = seen.length; // the last value of each section, at subscribe (one call)
    expect(before).toBe(1);
    const settings = b.sharedSettings as KafkaSettings;
    settings.onConsumerCrash({ error: new Error('simulated: not retriable'), restart: false });
    await a.sharedSettings.publish({ 'delivery.paused': ['later.example'] });
    await until('node B reads the change made after its consumer was replaced', async () => seen.length > before, 20_000, 200);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(seen.slice(before)).toEqual([{ 'delivery.paused': ['later.example'] }]);
    await b.sharedSettings.publish({ 'delivery.paused': ['slow.example'] });
    await until('and the next one', async () => seen.length > before + 1, 15_000);
  });

  it('starts a later node with the last value of every section, before its queue is open', async () => {
    await a.sharedSettings.publish({ rules: [{ name: 'vip', match: { senderDomain: 'vip.example' }, priority: 'urgent' }] });
    const c = await node();
    const atStart: Record<string, unknown>[] = [];
    c.sharedSettings.subscribe((sections) => atStart.push(sections));
    expect(atStart).toHaveLength(1);
    expect(atStart[0]).toEqual({
      'relay.reject': [{ sender: 'two@bad.example' }],
      'delivery.paused': ['slow.example'],
      rules: [{ name: 'vip', match: { senderDomain: 'vip.example' }, priority: 'urgent' }],
    });
  });
});
