/**
 * POST /api/messages/actions against a real spool: each action, dry runs that change nothing,
 * removing all mail to a domain in one call, paging through more matches than one page (and,
 * with a small page, acting on each page before listing the next), and 400s for bad filters,
 * actions and priorities.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Queue } from '../../src/queue/types.js';
import { PRIO, startHarness, type Harness } from './harness.js';

let h: Harness;

beforeAll(async () => {
  h = await startHarness();
  // 620 mails to doomed.example (more than one bulk page of 500), a few elsewhere.
  const batch: Promise<unknown>[] = [];
  for (let i = 0; i < 620; i++) batch.push(h.enqueue({ subject: `doomed ${i}`, to: [`u${i}@doomed.example`], priority: PRIO.bulk }));
  await Promise.all(batch);
  for (let i = 0; i < 5; i++) await h.enqueue({ subject: `keep ${i}`, to: [`k${i}@keep.example`], priority: PRIO.normal });
  await h.enqueue({ subject: 'mixed', to: ['x@doomed.example', 'y@keep.example'] });
  await h.enqueue({ subject: 'held keep', to: ['h@keep.example'], hold: 'by rule' });
});
afterAll(async () => h?.close());

const bulk = (body: unknown, token?: string) => h.json('POST', '/api/messages/actions', { body, ...(token ? { token } : {}) });

describe('POST /api/messages/actions', () => {
  it('dry run counts without changing anything', async () => {
    const r = await bulk({ filter: { domain: 'doomed.example' }, action: 'remove', dryRun: true });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ dryRun: true, matched: 621, changed: 0 });
    expect(r.body.ids.length).toBeGreaterThan(0);
    const still = await h.json('GET', '/api/messages?domain=doomed.example&state=queued&limit=1');
    expect(still.body.total.count).toBe(621);
  });

  it('hold and release by filter; matched counts only mails the action applies to', async () => {
    const hold = await bulk({ filter: { domain: 'keep.example' }, action: 'hold', reason: 'investigating' });
    expect(hold.body).toMatchObject({ matched: 6, changed: 6, failed: 0 }); // 'held keep' is already held
    const held = await h.json('GET', '/api/messages?domain=keep.example&state=held&limit=100');
    expect(held.body.items).toHaveLength(7);
    const release = await bulk({ filter: { domain: 'keep.example', state: 'held' }, action: 'release' });
    expect(release.body).toMatchObject({ matched: 7, changed: 7 });
    const dry = await bulk({ filter: { domain: 'keep.example' }, action: 'release', dryRun: true });
    expect(dry.body.matched).toBe(0);
  });

  it('retry by filter makes matching mail due now', async () => {
    const r = await bulk({ filter: { domain: 'keep.example', q: 'keep 1' }, action: 'retry' });
    expect(r.body).toMatchObject({ matched: 1, changed: 1 });
    const [m] = (await h.json('GET', '/api/messages?q=keep%201')).body.items;
    expect(m.notBefore).toBeLessThanOrEqual(Date.now());
  });

  it('bounce by filter and by id: each mail marked with the reason and due now, a held one released for it', async () => {
    const dry = await bulk({ filter: { domain: 'keep.example' }, action: 'bounce', dryRun: true });
    expect(dry.body).toMatchObject({ matched: 7, changed: 0 }); // held mail counts: it can be bounced
    const r = await bulk({ filter: { domain: 'keep.example', q: 'keep 2' }, action: 'bounce', reason: 'list closed' });
    expect(r.body).toMatchObject({ matched: 1, changed: 1 });
    const [m] = (await h.json('GET', '/api/messages?q=keep%202')).body.items;
    expect(m.bounceRequest.reason).toBe('list closed');
    expect(m.notBefore).toBeLessThanOrEqual(Date.now());
    const [held] = (await h.json('GET', '/api/messages?q=held%20keep')).body.items;
    const one = await h.json('POST', `/api/messages/${held.id}/bounce`, { body: { reason: 'phishing' } });
    expect(one.status).toBe(200);
    expect(one.body).toMatchObject({ id: held.id, state: 'queued', bounceRequest: { reason: 'phishing' } });
    expect((await h.json('POST', `/api/messages/${held.id}/bounce`, { body: { reason: 'x'.repeat(501) } })).status).toBe(400);
  });

  it('priority by filter, by name or level; mails already at that level do not count', async () => {
    const r = await bulk({ filter: { domain: 'keep.example', priority: 'normal' }, action: 'priority', priority: 'urgent' });
    expect(r.body).toMatchObject({ matched: 7, changed: 7 });
    const again = await bulk({ filter: { domain: 'keep.example' }, action: 'priority', priority: 30, dryRun: true });
    expect(again.body.matched).toBe(0);
    const urgent = await h.json('GET', '/api/messages?domain=keep.example&priority=urgent&limit=100');
    expect(urgent.body.items).toHaveLength(7);
  });

  it('removes all mail to a domain in one call, across several pages', async () => {
    const r = await bulk({ filter: { domain: 'doomed.example' }, action: 'remove' });
    expect(r.body).toMatchObject({ matched: 621, changed: 621, failed: 0, skipped: 0 });
    const live = await h.json('GET', '/api/messages?domain=doomed.example&state=queued,active,held&limit=1');
    expect(live.body.items).toEqual([]);
    const removed = await h.json('GET', '/api/messages?domain=doomed.example&state=removed&limit=1000');
    expect(removed.body.items).toHaveLength(621);
    // The others are untouched.
    const keep = await h.json('GET', '/api/messages?domain=keep.example&state=queued&limit=100');
    expect(keep.body.items.map((m: any) => m.subject).sort()).toEqual(['held keep', 'keep 0', 'keep 1', 'keep 2', 'keep 3', 'keep 4']);
  });

  it.each([
    [{ filter: { domain: 'x.example' }, action: 'explode' }, /action/],
    [{ filter: { colour: 'red' }, action: 'remove' }, /colour|additional/],
    [{ filter: { state: 'frozen' }, action: 'hold' }, /state/],
    [{ filter: { priority: 'mega' }, action: 'hold' }, /priority/],
    [{ filter: {}, action: 'priority' }, /priority/],
    [{ filter: {}, action: 'priority', priority: 'mega' }, /priority/],
    [{ filter: {}, action: 'hold', priority: 'urgent' }, /priority/],
    [{ action: 'remove' }, /filter/],
    [{ filter: { since: 'last week' }, action: 'remove' }, /since/],
  ])('400 for %j', async (body, message) => {
    const r = await bulk(body);
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ statusCode: 400, error: 'Bad Request' });
    expect(r.body.message).toMatch(message);
  });
});

describe('bulk actions page through the matches', () => {
  let p: Harness;
  /** Queue calls the admin server made, in order: browse with its limit, and each action. */
  const calls: { op: string; limit?: number }[] = [];
  const recording = (queue: Queue): Queue => new Proxy(queue, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        if (prop === 'browse') calls.push({ op: 'browse', limit: (args[1] as { limit?: number } | undefined)?.limit });
        else if (prop === 'remove' || prop === 'setPriority') calls.push({ op: String(prop) });
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });

  beforeAll(async () => {
    p = await startHarness({ bulkPageSize: 7, wrapQueue: recording });
    await Promise.all(Array.from({ length: 30 }, (_, i) => p.enqueue({ subject: `paged ${i}`, to: [`p${i}@paged.example`], ageMinutes: 30 - i })));
    await p.enqueue({ subject: 'bystander', to: ['b@other.example'] });
  });
  afterAll(async () => p?.close());

  it('a dry run that must walk (priority) counts every page, holding one page at a time', async () => {
    calls.length = 0;
    const r = await p.json('POST', '/api/messages/actions', { body: { filter: { domain: 'paged.example' }, action: 'priority', priority: 'urgent', dryRun: true } });
    expect(r.body).toMatchObject({ matched: 30, changed: 0 });
    expect(r.body.ids).toHaveLength(20); // a sample, not every id
    const browses = calls.filter((c) => c.op === 'browse');
    expect(browses.length).toBeGreaterThanOrEqual(5); // 30 mails, 7 a page
    expect(browses.every((c) => c.limit === 7)).toBe(true);
    expect(calls.some((c) => c.op === 'setPriority')).toBe(false);
  });

  it('removes more mails than one page, acting on each page before listing the next', async () => {
    calls.length = 0;
    const r = await p.json('POST', '/api/messages/actions', { body: { filter: { domain: 'paged.example' }, action: 'remove' } });
    expect(r.body).toMatchObject({ matched: 30, changed: 30, skipped: 0, failed: 0 });
    expect(new Set(r.body.ids).size).toBe(30);
    // Every page of 7 is acted on before the next page is listed: at most 7 removals between two
    // listings, and the first removal comes before the second listing (nothing is collected first).
    const sequence = calls.filter((c) => c.op === 'browse' || c.op === 'remove').map((c) => c.op);
    const firstRemove = sequence.indexOf('remove');
    const secondBrowse = sequence.indexOf('browse', sequence.indexOf('browse') + 1);
    expect(firstRemove).toBeGreaterThan(0);
    expect(firstRemove).toBeLessThan(secondBrowse);
    const runs = sequence.join(' ').split('browse').map((run) => run.trim().split(' ').filter(Boolean).length);
    expect(Math.max(...runs)).toBe(7);
    expect(runs.reduce((a, b) => a + b, 0)).toBe(30);
    // Nothing was skipped or done twice: all 30 are removed, the bystander is not.
    const removed = await p.json('GET', '/api/messages?domain=paged.example&state=removed&limit=100');
    expect(removed.body.items).toHaveLength(30);
    const other = await p.json('GET', '/api/messages?domain=other.example');
    expect(other.body.items.map((m: any) => m.state)).toEqual(['queued']);
  });
});
