/**
 * The browse and per-mail routes against a real server and a real, populated spool: every
 * filter, each sort, cursor pagination, the detail with the parsed message (text, never HTML),
 * the raw download, each single action with its state rules, and 400s for bad input.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QueuedMail } from '../../src/queue/types.js';
import { PRIO, populate, startHarness, type Harness } from './harness.js';

let h: Harness;
let mails: Map<string, QueuedMail>;
const id = (subject: string) => mails.get(subject)!.id;
const subjects = (items: { subject?: string }[]) => items.map((m) => m.subject).sort();

beforeAll(async () => {
  h = await startHarness();
  mails = await populate(h);
});
afterAll(async () => h?.close());

describe('GET /api/messages', () => {
  it('lists every mail with a summary, the total and no cursor when all fit', async () => {
    const { status, body } = await h.json('GET', '/api/messages?limit=100');
    expect(status).toBe(200);
    expect(body.items).toHaveLength(8);
    expect(body.total).toEqual({ count: 8, exact: expect.any(Boolean) });
    expect(body.nextCursor).toBeUndefined();
    const urgent = body.items.find((m: any) => m.subject === 'urgent wire transfer');
    expect(urgent).toMatchObject({ state: 'queued', priority: 30, priorityName: 'urgent', sender: 'alice@corp.example', recipientCount: 1 });
    expect(urgent.recipients[0]).toMatchObject({ address: 'ceo@example.com', status: 'pending' });
    // A list is a summary: no history, no parsed body.
    expect(urgent.history).toBeUndefined();
    expect(urgent.parsed).toBeUndefined();
  });

  it('filters by state', async () => {
    const held = await h.json('GET', '/api/messages?state=held');
    expect(subjects(held.body.items)).toEqual(['held by rule']);
    const both = await h.json('GET', '/api/messages?state=held,queued&limit=100');
    expect(both.body.items).toHaveLength(8);
    const none = await h.json('GET', '/api/messages?state=delivered');
    expect(none.body.items).toEqual([]);
  });

  it('filters by priority name, number and comma list', async () => {
    expect(subjects((await h.json('GET', '/api/messages?priority=bulk')).body.items)).toEqual(['weekly newsletter 1', 'weekly newsletter 2']);
    expect(subjects((await h.json('GET', '/api/messages?priority=30')).body.items)).toEqual(['urgent wire transfer']);
    expect(subjects((await h.json('GET', '/api/messages?priority=urgent,high')).body.items)).toEqual(['big report', 'urgent wire transfer']);
  });

  it('filters by sender (and <> for bounces), recipient and domain', async () => {
    expect(subjects((await h.json('GET', '/api/messages?sender=NEWS@lists.example')).body.items)).toEqual(['weekly newsletter 1', 'weekly newsletter 2']);
    expect(subjects((await h.json('GET', '/api/messages?sender=%3C%3E')).body.items)).toEqual(['bounce of something']);
    expect(subjects((await h.json('GET', '/api/messages?recipient=c@example.org')).body.items)).toEqual(['weekly newsletter 2']);
    expect(subjects((await h.json('GET', '/api/messages?domain=slow.example')).body.items)).toEqual(['held by rule', 'with attachment']);
  });

  it('filters by received time (ISO and epoch ms), size and subject/message-id text', async () => {
    const hourAgo = new Date(Date.now() - 60 * 60_000).toISOString();
    const recent = (await h.json('GET', `/api/messages?since=${encodeURIComponent(hourAgo)}&limit=100`)).body.items;
    expect(subjects(recent)).not.toContain('weekly newsletter 1');
    expect(subjects(recent)).not.toContain('bounce of something');
    expect(subjects(recent)).toContain('weekly newsletter 2');
    const old = (await h.json('GET', `/api/messages?until=${Date.now() - 60 * 60_000}`)).body.items;
    expect(subjects(old)).toEqual(['bounce of something', 'weekly newsletter 1']);
    expect(subjects((await h.json('GET', '/api/messages?minSize=100KB')).body.items)).toEqual(['big report']);
    const small = (await h.json('GET', '/api/messages?maxSize=100000&limit=100')).body.items;
    expect(small).toHaveLength(7);
    expect(subjects((await h.json('GET', '/api/messages?q=NEWSLETTER')).body.items)).toEqual(['weekly newsletter 1', 'weekly newsletter 2']);
    const mid = id('big report');
    expect(subjects((await h.json('GET', `/api/messages?q=${mid.toLowerCase()}`)).body.items)).toEqual(['big report']);
  });

  it('combines filters (AND)', async () => {
    const r = await h.json('GET', '/api/messages?domain=example.org&priority=bulk&q=newsletter%202');
    expect(subjects(r.body.items)).toEqual(['weekly newsletter 2']);
  });

  it('sorts by received, priority and next attempt, both ways', async () => {
    const recv = (await h.json('GET', '/api/messages?sort=received&order=asc&limit=100')).body.items;
    const times = recv.map((m: any) => m.receivedAt);
    expect(times).toEqual([...times].sort((a, b) => a - b));
    const recvDesc = (await h.json('GET', '/api/messages?sort=received&order=desc&limit=100')).body.items;
    expect(recvDesc.map((m: any) => m.id)).toEqual(recv.map((m: any) => m.id).reverse());
    const prio = (await h.json('GET', '/api/messages?sort=priority&order=desc&limit=100')).body.items;
    expect(prio[0].priorityName).toBe('urgent');
    const levels = prio.map((m: any) => m.priority);
    expect(levels).toEqual([...levels].sort((a, b) => b - a));
    const next = (await h.json('GET', '/api/messages?sort=nextAttempt&order=asc&limit=100')).body.items;
    const nb = next.map((m: any) => m.notBefore);
    expect(nb).toEqual([...nb].sort((a, b) => a - b));
  });

  it('pages with a cursor: every mail once, in order', async () => {
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const r = await h.json('GET', `/api/messages?sort=received&order=asc&limit=3${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      expect(r.status).toBe(200);
      expect(r.body.items.length).toBeLessThanOrEqual(3);
      seen.push(...r.body.items.map((m: any) => m.id));
      cursor = r.body.nextCursor;
      pages++;
    } while (cursor && pages < 10);
    expect(pages).toBe(3);
    expect(seen).toHaveLength(8);
    expect(new Set(seen).size).toBe(8);
    expect(seen).toEqual([...seen].sort());
  });

  it.each([
    ['state=frozen', /state/],
    ['priority=mega', /priority/],
    ['priority=7', /priority/],
    ['since=yesterday', /since/],
    ['minSize=lots', /minSize/],
    ['sort=size', /sort/],
    ['order=sideways', /order/],
    ['limit=0', /limit/],
    ['limit=5000', /limit/],
    ['colour=blue', /colour|additional/],
    ['since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z', /since/],
  ])('400 with a JSON message for %s', async (query, message) => {
    const r = await h.json('GET', `/api/messages?${query}`);
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ statusCode: 400, error: 'Bad Request' });
    expect(r.body.message).toMatch(message);
  });

  it('400 for a cursor the server did not give out', async () => {
    const r = await h.json('GET', '/api/messages?cursor=not-a-cursor');
    expect(r.status).toBe(400);
    expect(r.body.message).toMatch(/cursor/);
  });
});

describe('GET /api/messages/:id', () => {
  it('gives the envelope, recipients, classification and the parsed message', async () => {
    const m = mails.get('with attachment')!;
    const { status, body } = await h.json('GET', `/api/messages/${m.id}`);
    expect(status).toBe(200);
    expect(body).toMatchObject({
      id: m.id, state: 'queued', sender: 'alice@corp.example', priority: 10, priorityName: 'normal',
      notBefore: m.notBefore, size: m.size, attempts: 0, history: [],
      client: { address: '127.0.0.1', helo: 'client.test' },
      classification: { priority: { source: 'default' } },
    });
    expect(body.recipients).toEqual([expect.objectContaining({ address: 'dave@slow.example', status: 'pending' })]);
    expect(body.parsed.subject).toBe('with attachment');
    expect(body.parsed.from).toContain('alice@corp.example');
    expect(body.parsed.to).toContain('dave@slow.example');
    expect(body.parsed.text).toContain('This is "with attachment"');
    expect(body.parsed.attachments).toEqual([{ filename: 'invoice.pdf', contentType: 'application/pdf', size: 'PDF-1.4 pretend'.length }]);
    const names = body.parsed.headers.map((x: any) => x.name.toLowerCase());
    expect(names).toEqual(expect.arrayContaining(['received', 'from', 'to', 'subject', 'message-id', 'content-type']));
  });

  it('shows each recipient\'s status and last reply, and the attempt history', async () => {
    const mail = await h.enqueue({ subject: 'tried once', to: ['ok@example.com', 'later@slow.example'], dueInMs: -1000 });
    const [leased] = await h.queue.reserveDue({ owner: 'worker-t', limit: 10, leaseMs: 60_000 });
    expect(leased!.id).toBe(mail.id);
    const at = Date.now();
    await h.queue.recordAttempt(mail.id, leased!.lease!.token, {
      outcomes: [
        { address: 'ok@example.com', outcome: 'delivered', reply: { code: 250, enhanced: '2.0.0', message: 'queued as 123' }, remoteHost: 'mx.example.com' },
        { address: 'later@slow.example', outcome: 'deferred', reply: { code: 451, enhanced: '4.7.1', message: 'greylisted, try later' }, remoteHost: 'mx.slow.example' },
      ],
      history: [
        { at, host: 'mx.example.com', recipients: ['ok@example.com'], outcome: 'delivered', reply: { code: 250, message: 'queued as 123' }, durationMs: 40 },
        { at, host: 'mx.slow.example', recipients: ['later@slow.example'], outcome: 'deferred', reply: { code: 451, enhanced: '4.7.1', message: 'greylisted, try later' }, durationMs: 30 },
      ],
      retryAt: at + 300_000,
    });
    const { body } = await h.json('GET', `/api/messages/${mail.id}`);
    expect(body).toMatchObject({ state: 'queued', attempts: 1, notBefore: at + 300_000 });
    expect(body.lease).toBeUndefined();
    expect(body.recipients).toEqual([
      expect.objectContaining({ address: 'ok@example.com', status: 'delivered', lastReply: expect.objectContaining({ code: 250 }), remoteHost: 'mx.example.com' }),
      expect.objectContaining({ address: 'later@slow.example', status: 'deferred', lastReply: { code: 451, enhanced: '4.7.1', message: 'greylisted, try later' }, replyKind: 'greylisted' }),
    ]);
    // A delivered recipient has no kind of trouble.
    expect(body.recipients[0].replyKind).toBeUndefined();
    expect(body.history).toHaveLength(2);
    expect(body.history[1]).toMatchObject({ host: 'mx.slow.example', outcome: 'deferred', reply: { code: 451 } });
    const list = await h.json('GET', '/api/messages?q=tried%20once');
    expect(list.body.items[0].lastReply).toMatchObject({ code: expect.any(Number) });
    // Found by what its reply said, alone or with other filters; a dry run of a bulk retry by it counts it.
    expect((await h.json('GET', '/api/messages?reply=GREYLISTED')).body.items.map((m: any) => m.id)).toEqual([mail.id]);
    expect((await h.json('GET', '/api/messages?reply=451%204.7.1&domain=slow.example')).body.items.map((m: any) => m.id)).toEqual([mail.id]);
    expect((await h.json('GET', '/api/messages?reply=over%20quota')).body.items).toEqual([]);
    const dry = await h.json('POST', '/api/messages/actions', { body: { filter: { reply: 'greylisted' }, action: 'retry', dryRun: true } });
    expect(dry.body).toMatchObject({ matched: 1 });
  });

  it('an active mail shows who holds its lease, never the lease token', async () => {
    const mail = await h.enqueue({ subject: 'in flight', dueInMs: -1000 });
    const [leased] = await h.queue.reserveDue({ owner: 'worker-z', limit: 10, leaseMs: 60_000 });
    const res = await h.api('GET', `/api/messages/${mail.id}`);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ state: 'active', lease: { owner: 'worker-z', until: expect.any(Number) } });
    expect(text).not.toContain(leased!.lease!.token);
    await h.queue.releaseLease(mail.id, leased!.lease!.token);
  });

  it('never returns HTML: an HTML-only mail comes back as text', async () => {
    const { body } = await h.json('GET', `/api/messages/${id('<img src=x onerror=alert(1)>')}`);
    expect(body.subject).toBe('<img src=x onerror=alert(1)>');
    expect(body.parsed.hasHtml).toBe(true);
    expect(body.parsed.text).toContain('bold');
    expect(body.parsed.text).not.toContain('<b>');
    expect(JSON.stringify(body.parsed)).not.toContain('<script>');
    expect(body.parsed.html).toBeUndefined();
  });

  it('cuts the text preview at about 4 KB', async () => {
    const { body } = await h.json('GET', `/api/messages/${id('big report')}`);
    expect(body.parsed.text.length).toBeLessThanOrEqual(4096);
    expect(body.parsed.textTruncated).toBe(true);
  });

  it('accepts a lower-case id; 404 for an unknown one; 400 for a malformed one', async () => {
    expect((await h.json('GET', `/api/messages/${id('big report').toLowerCase()}`)).status).toBe(200);
    const missing = await h.json('GET', '/api/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV');
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ statusCode: 404, error: 'Not Found' });
    const bad = await h.json('GET', '/api/messages/not-an-id');
    expect(bad.status).toBe(400);
    expect(bad.body.message).toMatch(/id/);
  });

  it('GET /raw downloads the stored bytes as message/rfc822', async () => {
    const m = mails.get('with attachment')!;
    const res = await h.api('GET', `/api/messages/${m.id}/raw`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^message\/rfc822/);
    expect(res.headers.get('content-disposition')).toBe(`attachment; filename="${m.id}.eml"`);
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(bytes.length).toBe(m.size);
    expect(bytes.toString()).toContain('Subject: with attachment');
    expect((await h.api('GET', '/api/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV/raw')).status).toBe(404);
  });
});

describe('actions on one mail', () => {
  it('hold then release, with 409 when the state does not allow it', async () => {
    const target = id('urgent wire transfer');
    const held = await h.json('POST', `/api/messages/${target}/hold`, { body: { reason: 'checking with finance' } });
    expect(held.status).toBe(200);
    expect(held.body).toMatchObject({ state: 'held', holdReason: 'checking with finance' });
    expect((await h.queue.get(target))!.state).toBe('held');
    const retryHeld = await h.json('POST', `/api/messages/${target}/retry`);
    expect(retryHeld.status).toBe(409);
    expect(retryHeld.body.message).toMatch(/held/);
    const released = await h.json('POST', `/api/messages/${target}/release`);
    expect(released.body.state).toBe('queued');
    const again = await h.json('POST', `/api/messages/${target}/release`);
    expect(again.status).toBe(409);
    expect(again.body).toMatchObject({ statusCode: 409, error: 'Conflict' });
  });

  it('retry makes a delayed mail due now', async () => {
    const target = id('weekly newsletter 2');
    const before = await h.queue.get(target);
    expect(before!.notBefore).toBeGreaterThan(Date.now());
    const r = await h.json('POST', `/api/messages/${target}/retry`);
    expect(r.status).toBe(200);
    expect(r.body.notBefore).toBeLessThanOrEqual(Date.now());
    expect((await h.queue.get(target))!.notBefore).toBeLessThanOrEqual(Date.now());
  });

  it('PATCH sets priority by name or number and notBefore by ISO or epoch', async () => {
    const target = id('big report');
    const byName = await h.json('PATCH', `/api/messages/${target}`, { body: { priority: 'bulk' } });
    expect(byName.body).toMatchObject({ priority: PRIO.bulk, priorityName: 'bulk' });
    const byNumber = await h.json('PATCH', `/api/messages/${target}`, { body: { priority: 30 } });
    expect(byNumber.body.priorityName).toBe('urgent');
    const at = Date.parse('2030-01-01T00:00:00Z');
    const iso = await h.json('PATCH', `/api/messages/${target}`, { body: { notBefore: '2030-01-01T00:00:00Z' } });
    expect(iso.body.notBefore).toBe(at);
    const both = await h.json('PATCH', `/api/messages/${target}`, { body: { priority: 'high', notBefore: at + 1000 } });
    expect(both.body).toMatchObject({ priority: 20, notBefore: at + 1000 });
    const stored = await h.queue.get(target);
    expect(stored).toMatchObject({ priority: 20, notBefore: at + 1000 });
    expect(stored!.classification.priority.source).toBe('operator');
  });

  it.each([
    [{ priority: 'mega' }, /priority/],
    [{ priority: 7 }, /priority/],
    [{ notBefore: 'soon' }, /notBefore/],
    [{}, /fewer than 1|properties/],
    [{ colour: 'blue' }, /additional/],
  ])('PATCH 400 for %j', async (body, message) => {
    const r = await h.json('PATCH', `/api/messages/${id('big report')}`, { body });
    expect(r.status).toBe(400);
    expect(r.body.message).toMatch(message);
  });

  it('redirect corrects a recipient, audited; 404, 409 and 400 say what is wrong', async () => {
    const target = id('with attachment');
    const r = await h.json('POST', `/api/messages/${target}/redirect`, { body: { from: 'DAVE@slow.example', to: 'dave@fast.example' } });
    expect(r.status).toBe(200);
    expect(r.body.recipients).toEqual([expect.objectContaining({ address: 'dave@fast.example', status: 'pending' })]);
    expect((await h.queue.get(target))!.recipients[0]).toMatchObject({ address: 'dave@fast.example', orcpt: 'rfc822;dave@slow.example' });
    const audit = await h.json('GET', '/api/audit?limit=1');
    expect(audit.body.items[0]).toMatchObject({ action: 'redirect', ids: [target], detail: { from: 'DAVE@slow.example', to: 'dave@fast.example' } });
    const unknown = await h.json('POST', `/api/messages/${target}/redirect`, { body: { from: 'dave@slow.example', to: 'x@y.example' } });
    expect([unknown.status, unknown.body.message]).toEqual([404, expect.stringMatching(/has no recipient dave@slow\.example/)]);
    const same = await h.json('POST', `/api/messages/${target}/redirect`, { body: { from: 'dave@fast.example', to: 'Dave@Fast.example' } });
    expect(same.status).toBe(200);
    for (const body of [{ from: 'dave@fast.example', to: 'not an address' }, { from: 'dave@fast.example' }, { from: 'dave@fast.example', to: 'a@b.example', why: 'x' }]) {
      const bad = await h.json('POST', `/api/messages/${target}/redirect`, { body });
      expect(bad.status, JSON.stringify(body)).toBe(400);
      expect(bad.body.message).toMatch(/to|required|additional/);
    }
    const taken = await h.json('POST', `/api/messages/${id('weekly newsletter 1')}/redirect`, { body: { from: 'a@example.org', to: 'B@example.org' } });
    expect([taken.status, taken.body.message]).toEqual([409, expect.stringMatching(/already has the recipient B@example\.org/)]);
    // A held mail stays held.
    const held = await h.json('POST', `/api/messages/${id('held by rule')}/redirect`, { body: { from: 'eve@slow.example', to: 'eve@fast.example' } });
    expect(held.body).toMatchObject({ state: 'held', recipients: [expect.objectContaining({ address: 'eve@fast.example' })] });
  });

  it('DELETE removes for good; a removed mail cannot be held or removed from delivered', async () => {
    const target = id('bounce of something');
    const r = await h.json('DELETE', `/api/messages/${target}`);
    expect(r.status).toBe(200);
    expect(r.body.state).toBe('removed');
    expect((await h.queue.get(target))!.state).toBe('removed');
    expect((await h.json('POST', `/api/messages/${target}/hold`)).status).toBe(409);
    expect((await h.json('DELETE', '/api/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV')).status).toBe(404);
  });

  it('unknown action → 404 JSON; a hold body with unknown keys → 400', async () => {
    const r = await h.json('POST', `/api/messages/${id('big report')}/explode`);
    expect(r.status).toBe(404);
    expect(r.body).toMatchObject({ statusCode: 404, error: 'Not Found' });
    const bad = await h.json('POST', `/api/messages/${id('big report')}/hold`, { body: { why: 'x' } });
    expect(bad.status).toBe(400);
  });
});
