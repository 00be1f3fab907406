/**
 * The rest of the API against a real server and spool: the SSE change feed, removal racing a
 * worker's lease, statistics and rates, Prometheus metrics, the durable audit log, config
 * changes with validation and effect, and the rule tester.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QueuedMail } from '../../src/queue/types.js';
import { OPERATOR, PRIO, populate, startHarness, type Harness } from './harness.js';

let h: Harness;
let mails: Map<string, QueuedMail>;

beforeAll(async () => {
  h = await startHarness({ heartbeatMs: 200 });
  mails = await populate(h);
});
afterAll(async () => h?.close());

/** Reads SSE events from /api/events until `until` is satisfied. */
async function openEvents() {
  const controller = new AbortController();
  const res = await fetch(`${h.url}/api/events`, { headers: { authorization: `Bearer ${OPERATOR}` }, signal: controller.signal });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  const events: { event: string; data: any }[] = [];
  let raw = '';
  const pump = async (until: () => boolean, timeoutMs = 5000) => {
    const deadline = Date.now() + timeoutMs;
    while (!until()) {
      if (Date.now() > deadline) throw new Error(`no such event; got ${JSON.stringify(events)}`);
      const { value, done } = await reader.read();
      if (done) throw new Error('stream ended');
      const text = decoder.decode(value, { stream: true });
      raw += text;
      buffer += text;
      let i: number;
      while ((i = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event && data) events.push({ event, data: JSON.parse(data) });
      }
    }
  };
  return { events, pump, raw: () => raw, close: () => controller.abort() };
}

describe('GET /api/events', () => {
  it('delivers an event after an enqueue and after a hold, with heartbeats', async () => {
    const stream = await openEvents();
    try {
      const mail = await h.enqueue({ subject: 'live one' });
      await stream.pump(() => stream.events.some((e) => e.event === 'enqueued' && e.data.id === mail.id));
      expect((await h.json('POST', `/api/messages/${mail.id}/hold`)).status).toBe(200);
      await stream.pump(() => stream.events.some((e) => e.event === 'held' && e.data.id === mail.id));
      const held = stream.events.find((e) => e.event === 'held')!;
      expect(held.data).toMatchObject({ type: 'held', id: mail.id, state: 'held', at: expect.any(Number) });
      await stream.pump(() => stream.raw().includes(': heartbeat'), 3000);
    } finally {
      stream.close();
    }
  });

  it('closing the server ends open streams (close does not hang)', async () => {
    const other = await startHarness();
    const res = await fetch(`${other.url}/api/events`, { headers: { authorization: `Bearer ${OPERATOR}` } });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    await reader.read();
    await other.close();
    const rest = await reader.read().catch(() => ({ done: true }));
    expect(rest.done).toBe(true);
  });
});

describe('removal is final', () => {
  it('removing a mail a worker holds the lease on makes checkLease false; it is never handed out again', async () => {
    const mail = await h.enqueue({ subject: 'being delivered', to: ['x@race.example'], dueInMs: -1000 });
    const [leased] = await h.queue.reserveDue({ owner: 'worker-1', limit: 10, leaseMs: 300 });
    expect(leased!.id).toBe(mail.id);
    const token = leased!.lease!.token;
    expect(await h.queue.checkLease(mail.id, token)).toBe(true);
    const r = await h.json('DELETE', `/api/messages/${mail.id}`);
    expect(r.status).toBe(200);
    expect(r.body.state).toBe('removed');
    // The worker asks just before the final "." of DATA: it must not deliver.
    expect(await h.queue.checkLease(mail.id, token)).toBe(false);
    // Its lease runs out; it is never due again.
    await new Promise((res) => setTimeout(res, 400));
    expect(await h.queue.reserveDue({ owner: 'worker-2', limit: 10, leaseMs: 1000 })).toEqual([]);
    expect((await h.queue.get(mail.id))!.state).toBe('removed');
    const { body } = await h.json('GET', `/api/messages/${mail.id}`);
    expect(body.state).toBe('removed');
  });
});

describe('GET /api/stats', () => {
  it('counts by state and priority, the oldest mail, destinations, qshape and rates', async () => {
    h.metrics.acceptedTotal.inc({ listener: 'test' }, 6);
    h.metrics.deliveredTotal.inc({ via: 'mx' }, 3);
    const { status, body } = await h.json('GET', '/api/stats');
    expect(status).toBe(200);
    const live = await h.json('GET', '/api/messages?state=queued,active,held&limit=1000');
    const n = live.body.items.length;
    expect(body.byState.queued + body.byState.active + body.byState.held).toBe(n);
    expect(body.byState.removed).toBeGreaterThanOrEqual(1);
    expect(body.byPriorityName.bulk).toBe(2);
    expect(body.byPriorityName.urgent).toBeGreaterThanOrEqual(1);
    expect(body.byPriority[String(PRIO.bulk)]).toBe(2);
    // The bounce was received 3000 minutes ago.
    expect(body.oldestAgeSeconds).toBeGreaterThanOrEqual(3000 * 60 - 5);
    expect(body.topDestinations[0]).toMatchObject({ domain: 'example.com' });
    const org = body.ageByDestination.rows.find((r: any) => r.domain === 'example.org');
    expect(org.total).toBe(2);
    expect(body.ageByDestination.bucketLabels[0]).toBe('0-5m');
    expect(body.ageByDestination.bucketsMinutes.at(-1)).toBeNull();
    // newsletter 2 is 30 min old (20-40), newsletter 1 is 90 min old (80-160).
    expect(org.counts[3]).toBe(1);
    expect(org.counts[5]).toBe(1);
    expect(body.rates.acceptedPerMinute).toBeGreaterThan(0);
    expect(body.rates.deliveredPerMinute).toBeGreaterThan(0);
    expect(body.rates.bouncedPerMinute).toBe(0);
    // The server started within the test: the rates cover the seconds since.
    expect(body.ratesWindowSeconds).toBeGreaterThanOrEqual(1);
    expect(body.ratesWindowSeconds).toBeLessThanOrEqual(60);
  });

  it('400 for a bad topN', async () => {
    expect((await h.json('GET', '/api/stats?topN=0')).status).toBe(400);
  });
});

describe('GET /metrics', () => {
  it('is Prometheus text with queue depth by state and priority, updated at scrape', async () => {
    const res = await h.api('GET', '/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await res.text();
    expect(text).toMatch(/^spoolhouse_queue_depth\{state="queued",priority="bulk"\} 2$/m);
    expect(text).toMatch(/^spoolhouse_queue_depth\{state="removed",priority="all"\} [1-9]/m);
    expect(text).toMatch(/^spoolhouse_accepted_total\{listener="test"\} 6$/m);
    expect(text).toContain('# TYPE spoolhouse_delivery_seconds histogram');
    await h.enqueue({ subject: 'one more bulk', priority: PRIO.bulk });
    const again = await (await h.api('GET', '/metrics')).text();
    expect(again).toMatch(/^spoolhouse_queue_depth\{state="queued",priority="bulk"\} 3$/m);
  });
});

describe('GET /api/audit', () => {
  it('records who, when, what, on which mails and from where — newest first, durable, paginated', async () => {
    const a = mails.get('weekly newsletter 1')!.id;
    const b = mails.get('weekly newsletter 2')!.id;
    await h.json('POST', `/api/messages/${a}/hold`);
    await h.json('POST', `/api/messages/${a}/release`);
    await h.json('POST', `/api/messages/${a}/release`); // 409: recorded as an error
    await h.json('PATCH', `/api/messages/${b}`, { body: { priority: 'high' } });
    await h.json('POST', '/api/messages/actions', { body: { filter: { domain: 'example.org' }, action: 'hold' } });
    const { body } = await h.json('GET', '/api/audit?limit=3');
    expect(body.items.map((e: any) => e.action)).toEqual(['bulk.hold', 'update', 'release']);
    const [bulk, update, failed] = body.items;
    expect(bulk).toMatchObject({ actor: 'admin', role: 'operator', ip: '127.0.0.1', result: 'ok', filter: { domain: 'example.org' } });
    expect(bulk.ids.sort()).toEqual([a, b].sort());
    expect(update).toMatchObject({ ids: [b], detail: { priority: PRIO.high }, result: 'ok' });
    expect(failed).toMatchObject({ ids: [a], result: 'error', status: 409 });
    expect(typeof bulk.at).toBe('number');
    expect(body.nextCursor).toBeDefined();
    const older = await h.json('GET', `/api/audit?limit=3&cursor=${body.nextCursor}`);
    expect(older.body.items.map((e: any) => e.action)).toEqual(['release', 'hold', expect.any(String)]);
    expect(older.body.items[0].result).toBe('ok');
    // On disk, one JSON object per line, oldest first.
    const lines = readFileSync(join(h.dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.at(-1).action).toBe('bulk.hold');
    expect(lines.length).toBeGreaterThanOrEqual(5);
    expect(JSON.stringify(lines)).not.toContain(OPERATOR);
    expect((await h.json('GET', '/api/audit?cursor=abc')).status).toBe(400);
  });
});

describe('config', () => {
  it('GET /api/config shows the running priorities, rules and delivery limits', async () => {
    const { status, body } = await h.json('GET', '/api/config');
    expect(status).toBe(200);
    expect(body.priorities).toMatchObject({ classes: { urgent: 30, high: 20, normal: 10, bulk: 0 }, default: 'normal' });
    expect(body.rules).toEqual([]);
    expect(body.delivery.limits.default).toMatchObject({ connections: 20 });
  });

  it('PUT validates: a bad value is a 400 naming the key, and nothing changes', async () => {
    const r = await h.json('PUT', '/api/config', { body: { rules: [{ name: 'x', match: { senderDomain: 'a.example' }, priority: 'mega' }] } });
    expect(r.status).toBe(400);
    expect(r.body.problems).toEqual(expect.arrayContaining([expect.objectContaining({ key: 'rules.0.priority' })]));
    expect(r.body.message).toMatch(/rules\.0\.priority.*mega/);
    expect(h.config.current.rules).toEqual([]);
    const limits = await h.json('PUT', '/api/config', { body: { delivery: { limits: { default: { connections: 0 }, domains: {} } } } });
    expect(limits.status).toBe(400);
    expect(limits.body.message).toMatch(/delivery\.limits\.default\.connections/);
    const other = await h.json('PUT', '/api/config', { body: { smtp: { banner: 'x' } } });
    expect(other.status).toBe(400);
    const empty = await h.json('PUT', '/api/config', { body: {} });
    expect(empty.status).toBe(400);
  });

  it('PUT switches the door\'s DNS checks (smtp.dnsbl, smtp.helo, smtp.spf, relay.checkSenderDomain), validated like the rest', async () => {
    const r = await h.json('PUT', '/api/config', { body: {
      smtp: { dnsbl: ['zen.example.org'], helo: { rejectNonFqdn: true }, spf: { check: true, reject: ['fail', 'softfail'] } },
      relay: { checkSenderDomain: true },
    } });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.smtp).toEqual({
      dnsbl: [{ zone: 'zen.example.org', answers: null }],
      helo: { rejectInvalid: false, rejectNonFqdn: true, rejectUnknown: false },
      spf: { check: true, reject: ['fail', 'softfail'] },
    });
    expect(r.body.relay.checkSenderDomain).toBe(true);
    expect(h.config.current.smtp.spf.reject).toEqual(['fail', 'softfail']);
    const bad = await h.json('PUT', '/api/config', { body: { smtp: { spf: { reject: ['pass'] } } } });
    expect(bad.status).toBe(400);
    expect(bad.body.problems).toEqual(expect.arrayContaining([expect.objectContaining({ key: expect.stringMatching(/^smtp\.spf\.reject/) })]));
    expect((await h.json('PUT', '/api/config', { body: { smtp: { tls: null } } })).status).toBe(400); // not a run-time key
    const off = await h.json('PUT', '/api/config', { body: { smtp: { dnsbl: [], helo: { rejectNonFqdn: false }, spf: { check: false, reject: ['fail'] } }, relay: { checkSenderDomain: false } } });
    expect(off.body.smtp.dnsbl).toEqual([]);
    expect((await h.json('GET', '/api/config')).body.relay.checkSenderDomain).toBe(false);
  });

  it('PUT sets the routes (delivery.routes) as a whole map, validated like the rest', async () => {
    const r = await h.json('PUT', '/api/config', { body: { delivery: { routes: { 'gmail.com': 'relay.example.net:2525', 'example.org': '10.0.0.5' } } } });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.delivery.routes).toEqual({ 'gmail.com': 'relay.example.net:2525', 'example.org': '10.0.0.5' });
    const fewer = await h.json('PUT', '/api/config', { body: { delivery: { routes: { 'example.org': '10.0.0.6:25' } } } });
    expect(fewer.body.delivery.routes).toEqual({ 'example.org': '10.0.0.6:25' }); // a domain left out is removed
    const bad = await h.json('PUT', '/api/config', { body: { delivery: { routes: { 'example.org': 'not a host!' } } } });
    expect(bad.status).toBe(400);
    expect(bad.body.problems).toEqual(expect.arrayContaining([expect.objectContaining({ key: expect.stringMatching(/^delivery\.routes/) })]));
    expect((await h.json('PUT', '/api/config', { body: { delivery: { routes: {} } } })).body.delivery.routes).toEqual({});
    expect(h.config.current.delivery.routes).toEqual({});
  });

  it('PUT pauses and resumes delivery to domains (delivery.paused), validated like the rest', async () => {
    const r = await h.json('PUT', '/api/config', { body: { delivery: { paused: ['gmail.com', '*'] } } });
    expect(r.status).toBe(200);
    expect(r.body.delivery.paused).toEqual(['gmail.com', '*']);
    expect(h.config.current.delivery.paused).toEqual(['gmail.com', '*']);
    // The limits stay as they were when only the pause changes.
    expect(r.body.delivery.limits.default).toMatchObject({ connections: 20 });
    const bad = await h.json('PUT', '/api/config', { body: { delivery: { paused: ['not a domain!'] } } });
    expect(bad.status).toBe(400);
    expect(bad.body.problems).toEqual(expect.arrayContaining([expect.objectContaining({ key: 'delivery.paused.0' })]));
    const resumed = await h.json('PUT', '/api/config', { body: { delivery: { paused: [] } } });
    expect(resumed.body.delivery.paused).toEqual([]);
    expect((await h.json('GET', '/api/config')).body.delivery.paused).toEqual([]);
  });

  it('PUT replaces relay.reject (an operator blocking a sender mid-incident), validated like the rest', async () => {
    const reject = [{ sender: '*@spam.example' }, { client: '198.51.100.0/24', reply: '550 5.7.1 Not from your network' }];
    const r = await h.json('PUT', '/api/config', { body: { relay: { reject } } });
    expect(r.status).toBe(200);
    expect(r.body.relay.reject).toEqual([{ sender: '*@spam.example' }, { client: ['198.51.100.0/24'], reply: '550 5.7.1 Not from your network' }]);
    expect(h.config.current.relay.reject).toEqual(r.body.relay.reject);
    const bad = await h.json('PUT', '/api/config', { body: { relay: { reject: [{ client: '10.0.0.0/33' }, { reply: '250 2.0.0 fine' }] } } });
    expect(bad.status).toBe(400);
    expect(bad.body.problems.map((p: { key: string }) => p.key)).toEqual(expect.arrayContaining(['relay.reject.0.client', 'relay.reject.1.reply']));
    expect((await h.json('PUT', '/api/config', { body: { relay: { networks: ['0.0.0.0/0'] } } })).status).toBe(400); // only reject
    const cleared = await h.json('PUT', '/api/config', { body: { relay: { reject: [] } } });
    expect(cleared.body.relay.reject).toEqual([]);
    expect((await h.json('GET', '/api/config')).body.relay.reject).toEqual([]);
  });

  it('PUT saves and applies rules and limits at once; a domain left out is removed', async () => {
    const rules = [
      { name: 'newsletters', match: { header: { name: 'Precedence', value: 'bulk' } }, priority: 'bulk', delay: '10m' },
      { name: 'quarantine', match: { senderDomain: '*.suspicious.example' }, hold: true },
    ];
    const r = await h.json('PUT', '/api/config', { body: { rules, delivery: { limits: { default: { connections: 20, messagesPerConnection: 100, rate: null }, domains: { 'gmail.com': { connections: 5, rate: '10/s' } } } } } });
    expect(r.status).toBe(200);
    expect(r.body.rules.map((x: any) => x.name)).toEqual(['newsletters', 'quarantine']);
    expect(r.body.rules[0].delay).toBe(600_000);
    expect(h.config.current.rules).toHaveLength(2);
    expect(h.config.current.delivery.limits.domains['gmail.com']).toMatchObject({ connections: 5, rate: '10/s' });
    const saved = JSON.parse(readFileSync(h.config.overlayFile, 'utf8'));
    expect(saved.rules).toHaveLength(2);
    // The running rules now classify differently.
    const t = await h.json('POST', '/api/rules/test', { body: { envelope: { sender: 'x@mail.suspicious.example', recipients: ['a@b.example'] }, headers: [], size: 10 } });
    expect(t.body).toMatchObject({ matched: true, rule: 'quarantine', hold: true, priorityName: 'normal', proposed: false });
    const removeDomain = await h.json('PUT', '/api/config', { body: { delivery: { limits: { default: { connections: 20 }, domains: {} } } } });
    expect(removeDomain.status).toBe(200);
    expect(h.config.current.delivery.limits.domains).toEqual({});
    const cfg = await h.json('GET', '/api/config');
    expect(cfg.body.rules).toHaveLength(2);
    const audit = await h.json('GET', '/api/audit?limit=1');
    expect(audit.body.items[0]).toMatchObject({ action: 'config.update', result: 'ok' });
  });

  it('keeps a rejecting rule through GET, and the tester says what it would answer', async () => {
    const running = (await h.json('GET', '/api/config')).body.rules;
    const rules = [
      { name: 'invoice-scam', match: { header: { name: 'Subject', value: '*invoice overdue*' } }, reject: '550 5.7.1 Message content rejected' },
      { name: 'phish-url', match: { body: '*phish.example*' }, hold: true },
    ];
    expect((await h.json('PUT', '/api/config', { body: { rules } })).status).toBe(200);
    try {
      expect((await h.json('GET', '/api/config')).body.rules).toEqual(rules);
      const t = await h.json('POST', '/api/rules/test', { body: { envelope: { sender: 'a@b.example', recipients: ['c@d.example'] }, headers: 'Subject: Invoice overdue', size: 10 } });
      expect(t.body).toMatchObject({ matched: true, rule: 'invoice-scam', reject: '550 5.7.1 Message content rejected' });
      const other = await h.json('POST', '/api/rules/test', { body: { envelope: { sender: 'a@b.example', recipients: ['c@d.example'] }, headers: 'Subject: hello', size: 10 } });
      expect(other.body).toMatchObject({ matched: false, reject: null });
      const byBody = await h.json('POST', '/api/rules/test', { body: { envelope: { sender: 'a@b.example', recipients: ['c@d.example'] }, headers: 'Subject: hello', body: 'see https://phish.example/x', size: 10 } });
      expect(byBody.body).toMatchObject({ matched: true, rule: 'phish-url', hold: true, reject: null });
    } finally {
      await h.json('PUT', '/api/config', { body: { rules: running } }); // the later tests use them
    }
  });

  it('priorities can be changed (a new class, a new default)', async () => {
    const r = await h.json('PUT', '/api/config', { body: { priorities: { classes: { urgent: 30, high: 20, normal: 10, bulk: 0, critical: 40 }, default: 'normal', lowPriorityShare: 0.2 } } });
    expect(r.status).toBe(200);
    expect(h.config.current.priorities.classes.critical).toBe(40);
    const list = await h.json('GET', '/api/messages?priority=critical');
    expect(list.status).toBe(200);
    const bad = await h.json('PUT', '/api/config', { body: { priorities: { default: 'nonesuch' } } });
    expect(bad.status).toBe(400);
    expect(bad.body.message).toMatch(/priorities\.default/);
  });
});

describe('POST /api/rules/test', () => {
  it('says which running rule matched and what follows; no match gives the default class', async () => {
    const hit = await h.json('POST', '/api/rules/test', {
      body: { envelope: { sender: 'news@lists.example', recipients: ['a@example.org'] }, headers: 'Subject: hi\nPrecedence: bulk', size: 2048 },
    });
    expect(hit.status).toBe(200);
    expect(hit.body).toMatchObject({ matched: true, rule: 'newsletters', ruleIndex: 0, priorityName: 'bulk', priority: 0, delayMs: 600_000, hold: false });
    expect(hit.body.classification.priority).toEqual({ source: 'rule', rule: 'newsletters' });
    const miss = await h.json('POST', '/api/rules/test', { body: { sender: 'a@b.example', recipients: ['c@d.example'], headers: [] } });
    expect(miss.body).toMatchObject({ matched: false, rule: null, priorityName: 'normal', delayMs: 0, hold: false });
  });

  it('tests a proposed rule set without saving it, and validates it', async () => {
    const proposed = [{ name: 'vip', match: { authUser: 'ceo' }, priority: 'urgent' }];
    const r = await h.json('POST', '/api/rules/test', { body: { envelope: { sender: 'a@corp.example', recipients: ['x@y.example'], authUser: 'ceo' }, headers: [], size: 1, rules: proposed } });
    expect(r.body).toMatchObject({ matched: true, rule: 'vip', priorityName: 'urgent', proposed: true });
    expect(h.config.current.rules.map((x) => x.name)).toEqual(['newsletters', 'quarantine']);
    const bad = await h.json('POST', '/api/rules/test', { body: { sender: 'a@b.c', recipients: [], rules: [{ name: 'x', match: {}, priority: 'urgent' }] } });
    expect(bad.status).toBe(400);
    expect(bad.body.message).toMatch(/rules\.0/);
    const junk = await h.json('POST', '/api/rules/test', { body: { sender: 'a@b.c', size: -1 } });
    expect(junk.status).toBe(400);
  });
});
