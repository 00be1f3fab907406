/**
 * Browse benchmark of the admin API over a big embedded spool (issue 4: "a filtered page from
 * 1,000,000 queued mails in under 100 ms through the API").
 *
 *   npx tsc -p . && node dist/bench/admin-browse.js --count 1000000
 *   node dist/bench/admin-browse.js --dir /tmp/ab --keep          # fill once and keep it
 *   node dist/bench/admin-browse.js --dir /tmp/ab --reuse --keep  # measure again without refilling
 *   … --only 'sort priority'                                      # only the cases whose name matches
 *
 * 1. Fills `count` mails through SpoolQueue.enqueue (2000 in flight, so group commit batches them):
 *    50 recipient domains with a skewed (Zipf-like) share, 20,000 senders (also skewed), four
 *    priority classes, ~5% held by a rule, ~20% delayed into the future, sizes from 300 bytes to
 *    ~60 KB, received over the last 3 days. Then some real attempts through reserveDue +
 *    recordAttempt: deferred with history, delivered and bounced mail (terminal states).
 * 2. Starts the real admin server (createAdminServer) on that queue on 127.0.0.1:0 and measures,
 *    over HTTP with the bearer token, GET /api/messages pages of 50 for each kind of filter and sort:
 *    the first page and a deep page (the cursor after `--depth` pages), p50/p99 of `--runs` requests
 *    each, with the items a page held and the total (exact or estimated). For filters that the
 *    indexes cannot narrow (q, size) a page stops after a bounded number of mails examined, so it
 *    can come back short with a cursor: "fillPage" then follows cursors until 50 items (or the end)
 *    and reports how many requests and how long that took, which is the real cost of such a search.
 * 3. Times GET /api/stats.
 * Prints one JSON summary on stdout (progress on stderr).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createAdminServer } from '../src/admin/index.js';
import { ConfigStore } from '../src/config/store.js';
import { silentLogger } from '../src/logger.js';
import { createMetrics } from '../src/metrics.js';
import { newMailId } from '../src/queue/model.js';
import { SpoolQueue } from '../src/queue/spool/spool-queue.js';
import type { EnqueueRequest, QueuedMail } from '../src/queue/types.js';
import { percentileOf, runBench } from './lib.js';
import { seededRandom as rng } from '../test/helpers/rng.js';

interface Args { count: number; dir?: string; keep: boolean; reuse: boolean; runs: number; depth: number; only?: RegExp }

function parseArgs(argv: string[]): Args {
  const a: Args = { count: 1_000_000, keep: false, reuse: false, runs: 30, depth: 20 };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (argv[i] === '--count') { a.count = Number(v); i++; }
    else if (argv[i] === '--dir') { a.dir = v; i++; }
    else if (argv[i] === '--runs') { a.runs = Number(v); i++; }
    else if (argv[i] === '--depth') { a.depth = Number(v); i++; }
    else if (argv[i] === '--only') { a.only = new RegExp(v ?? '', 'i'); i++; }
    else if (argv[i] === '--keep') a.keep = true;
    else if (argv[i] === '--reuse') a.reuse = true;
  }
  if (!Number.isInteger(a.count) || a.count < 1) throw new Error('--count must be a positive integer');
  return a;
}

const TOKEN = 'bench-admin-token-0123456789abcdef';
const HOUR = 3_600_000;
const PRIORITIES = { urgent: 30, high: 20, normal: 10, bulk: 0 } as const;
const DOMAIN_COUNT = 50;
const SENDER_COUNT = 20_000;
const DOMAINS = Array.from({ length: DOMAIN_COUNT }, (_, i) => `dest${i}.example`);

function log(msg: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}


/** Index in [0, n) with a Zipf-like skew: index 0 is the most frequent, about 1/(i+1). */
function skewed(r: number, n: number): number {
  // Inverse of the continuous 1/x distribution over [1, n+1).
  return Math.min(n - 1, Math.floor(Math.exp(r * Math.log(n + 1)) - 1));
}

const SUBJECTS = ['Invoice', 'Your order has shipped', 'Weekly newsletter', 'Password reset', 'Meeting notes', 'Re: quarterly report', 'Delivery notification', 'Welcome aboard'];

function fillRequest(i: number, count: number, now: number, random: () => number): EnqueueRequest {
  const receivedAt = now - 72 * HOUR + Math.floor((i / count) * 72 * HOUR);
  const domain = DOMAINS[skewed(random(), DOMAIN_COUNT)]!;
  const recipients = [{ address: `user${Math.floor(random() * 200_000)}@${domain}` }];
  if (random() < 0.08) recipients.push({ address: `cc${Math.floor(random() * 5000)}@${DOMAINS[Math.floor(random() * DOMAIN_COUNT)]}` });
  const p = random();
  const priority = p < 0.02 ? PRIORITIES.urgent : p < 0.12 ? PRIORITIES.high : p < 0.62 ? PRIORITIES.normal : PRIORITIES.bulk;
  const delayed = random() < 0.2;
  const held = random() < 0.05;
  const s = random();
  // Most mail is small; a few percent carry attachments.
  const padding = s < 0.9 ? 200 + Math.floor(random() * 2000) : s < 0.99 ? 5_000 + Math.floor(random() * 20_000) : 40_000 + Math.floor(random() * 20_000);
  const subject = `${SUBJECTS[i % SUBJECTS.length]} #${i}`;
  const messageId = `<m${i}.${receivedAt}@source.example>`;
  return {
    id: newMailId(receivedAt),
    sender: `sender${skewed(random(), SENDER_COUNT)}@src${i % 13}.example`,
    recipients,
    body: Buffer.from(`Subject: ${subject}\r\nMessage-ID: ${messageId}\r\n\r\n${'x'.repeat(padding)}\r\n`),
    priority,
    notBefore: delayed ? now + Math.floor(random() * 48 * HOUR) : receivedAt,
    ...(held ? { hold: { reason: 'rule quarantine' } } : {}),
    client: { address: '192.0.2.1', helo: 'bench.example' },
    classification: { priority: { source: 'default' } },
    subject,
    messageId,
    receivedAt,
  };
}

async function openSpool(dir: string): Promise<SpoolQueue> {
  const q = new SpoolQueue({ dir, retainFinishedMs: 7 * 24 * HOUR, maxSize: 64 * 2 ** 30, logger: silentLogger() });
  await q.start();
  return q;
}

async function fill(q: SpoolQueue, count: number): Promise<{ seconds: number; perSecond: number }> {
  const now = Date.now();
  const random = rng(42);
  const t0 = performance.now();
  let next = 0;
  async function worker(): Promise<void> {
    while (next < count) {
      const i = next++;
      await q.enqueue(fillRequest(i, count, now, random));
      if (i % 100_000 === 0 && i) log(`filled ${i} (${Math.round(i / ((performance.now() - t0) / 1000))}/s)`);
    }
  }
  await Promise.all(Array.from({ length: 2000 }, worker));
  const seconds = (performance.now() - t0) / 1000;
  return { seconds: Math.round(seconds), perSecond: Math.round(count / seconds) };
}

/**
 * Real attempts on a slice of the due mail: deferred with history (queued again later), delivered
 * and bounced, so browse by state and the details have something beyond fresh mail.
 */
async function attempts(q: SpoolQueue, count: number): Promise<Record<string, number>> {
  const outcomes = { deferred: 0, delivered: 0, bounced: 0 };
  const target = Math.max(30, Math.floor(count / 40));
  while (outcomes.deferred + outcomes.delivered + outcomes.bounced < target) {
    const got = await q.reserveDue({ owner: 'bench', limit: 500, leaseMs: 60_000 });
    if (!got.length) break;
    const now = Date.now();
    await Promise.all(got.map((m, k) => {
      const kind = k % 3 === 0 ? 'delivered' : k % 3 === 1 ? 'deferred' : (k % 9 === 2 ? 'failed' : 'deferred');
      const outcome = kind === 'failed' ? 'failed' : kind;
      outcomes[outcome === 'failed' ? 'bounced' : outcome]++;
      return q.recordAttempt(m.id, m.lease!.token, attemptOf(m, outcome, now));
    }));
  }
  return outcomes;
}

function attemptOf(m: QueuedMail, outcome: 'delivered' | 'deferred' | 'failed', now: number) {
  const reply = outcome === 'delivered' ? { code: 250, enhanced: '2.0.0', message: 'OK queued' }
    : outcome === 'deferred' ? { code: 451, enhanced: '4.7.1', message: 'Greylisted, try again later' }
      : { code: 550, enhanced: '5.1.1', message: 'No such user' };
  const addresses = m.recipients.map((r) => r.address);
  return {
    outcomes: addresses.map((address) => ({ address, outcome, reply, remoteHost: 'mx.bench.example' })),
    history: [{ at: now, host: 'mx.bench.example', recipients: addresses, outcome, reply, durationMs: 120 }],
    ...(outcome === 'deferred' ? { retryAt: now + HOUR } : {}),
    now,
  };
}


interface Page { items: { id: string }[]; nextCursor?: string; total: { count: number; exact: boolean } }

class Client {
  constructor(private readonly base: string) {}

  async get<T>(path: string): Promise<{ ms: number; body: T }> {
    const t0 = performance.now();
    const res = await fetch(this.base + path, { headers: { authorization: `Bearer ${TOKEN}` } });
    const text = await res.text();
    const ms = performance.now() - t0;
    if (res.status !== 200) throw new Error(`GET ${path}: ${res.status} ${text.slice(0, 300)}`);
    return { ms, body: JSON.parse(text) as T };
  }
}

function pagePath(query: string, cursor?: string): string {
  const q = new URLSearchParams(query);
  q.set('limit', '50');
  if (cursor) q.set('cursor', cursor);
  return `/api/messages?${q}`;
}

async function timed(c: Client, path: string, runs: number): Promise<{ times: number[]; page: Page }> {
  const times: number[] = [];
  let page!: Page;
  for (let i = 0; i < runs; i++) {
    const r = await c.get<Page>(path);
    times.push(r.ms);
    page = r.body;
  }
  return { times, page };
}

/** Follows cursors until 50 items are collected or the result ends (bounded by maxRequests). */
async function fillPage(c: Client, query: string, maxRequests: number): Promise<{ requests: number; items: number; ms: number; complete: boolean }> {
  let cursor: string | undefined;
  let items = 0;
  let requests = 0;
  const t0 = performance.now();
  do {
    const r = await c.get<Page>(pagePath(query, cursor));
    requests++;
    items += r.body.items.length;
    cursor = r.body.nextCursor;
  } while (cursor && items < 50 && requests < maxRequests);
  return { requests, items, ms: Math.round(performance.now() - t0), complete: items >= 50 || !cursor };
}

/** The cursor after `depth` pages, or undefined when the result is shorter. */
async function deepCursor(c: Client, query: string, depth: number): Promise<{ cursor?: string; pages: number }> {
  let cursor: string | undefined;
  let pages = 0;
  for (; pages < depth; pages++) {
    const r = await c.get<Page>(pagePath(query, cursor));
    if (!r.body.nextCursor) break;
    cursor = r.body.nextCursor;
  }
  return { ...(cursor ? { cursor } : {}), pages };
}

/** The sender of a mail far down the skew (a sender with a handful of mails). */
async function rareSender(c: Client): Promise<string> {
  const r = await c.get<{ items: { sender: string }[] }>('/api/messages?domain=dest49.example&limit=200');
  const senders = r.body.items.map((m) => m.sender).sort((a, b) => Number(/\d+/.exec(b)?.[0]) - Number(/\d+/.exec(a)?.[0]));
  return senders[0] ?? 'nobody@nowhere.example';
}

const CASES: [kind: string, query: string][] = [
  ['all, received desc (console default)', ''],
  ['domain (largest)', 'domain=dest0.example'],
  ['domain (mid)', 'domain=dest8.example'],
  ['domain (smallest)', 'domain=dest49.example'],
  ['domain + state queued', 'domain=dest3.example&state=queued'],
  ['state held', 'state=held'],
  ['state queued', 'state=queued'],
  ['state delivered', 'state=delivered'],
  ['state bounced', 'state=bounced'],
  ['priority urgent', 'priority=urgent'],
  ['priority bulk + state queued', 'priority=bulk&state=queued'],
  ['sender (frequent)', 'sender=sender0@src0.example'],
  ['sender (rare)', 'RARE_SENDER'],
  ['recipient', 'recipient=user7@dest0.example'],
  ['q subject, common (Invoice)', 'q=invoice'],
  ['q subject, rare (one mail)', 'q=%23777777'],
  ['q subject, none', 'q=no-such-subject'],
  ['reply, common (greylisted)', 'reply=greylisted'],
  ['reply, none', 'reply=no-such-reply'],
  ['reply, a code alone (no byte check)', 'reply=999'],
  ['minSize 40KB', 'minSize=40KB'],
  ['since/until 1 h window', 'SINCE_UNTIL'],
  ['sort received asc', 'sort=received&order=asc'],
  ['sort priority desc', 'sort=priority&order=desc'],
  ['sort priority desc, state queued', 'sort=priority&order=desc&state=queued'],
  ['sort nextAttempt asc', 'sort=nextAttempt&order=asc'],
  ['sort nextAttempt asc, state queued', 'sort=nextAttempt&order=asc&state=queued'],
  ['domain (largest), sort priority', 'domain=dest0.example&sort=priority&order=desc'],
  ['domain (smallest), sort priority', 'domain=dest49.example&sort=priority&order=desc'],
  ['domain (mid), sort nextAttempt', 'domain=dest8.example&sort=nextAttempt&order=asc'],
  ['sender (frequent), sort priority', 'sender=sender0@src0.example&sort=priority&order=desc'],
  ['priority high, sort nextAttempt', 'priority=high&sort=nextAttempt&order=asc'],
];

async function measure(c: Client, args: Args): Promise<Record<string, unknown>> {
  const results: Record<string, unknown> = {};
  const firstAll: number[] = [];
  const deepAll: number[] = [];
  const now = Date.now();
  for (const [kind, raw] of CASES) {
    if (args.only && !args.only.test(kind)) continue;
    const query = raw === 'SINCE_UNTIL' ? `since=${now - 30 * HOUR}&until=${now - 29 * HOUR}` : raw === 'RARE_SENDER' ? `sender=${encodeURIComponent(await rareSender(c))}` : raw;
    await c.get<Page>(pagePath(query)); // warm-up
    const first = await timed(c, pagePath(query), args.runs);
    firstAll.push(...first.times);
    const deep = await deepCursor(c, query, args.depth);
    const deepTimes = deep.cursor ? await timed(c, pagePath(query, deep.cursor), args.runs) : undefined;
    if (deepTimes) deepAll.push(...deepTimes.times);
    const short = first.page.items.length < 50 && first.page.nextCursor !== undefined;
    results[kind] = {
      query,
      firstPage: { p50: percentileOf(first.times, 50), p99: percentileOf(first.times, 99), items: first.page.items.length },
      ...(deepTimes ? { deepPage: { page: deep.pages + 1, p50: percentileOf(deepTimes.times, 50), p99: percentileOf(deepTimes.times, 99), items: deepTimes.page.items.length } } : {}),
      total: first.page.total,
      // A short page with a cursor: the filter is checked mail by mail; show what a full page costs.
      ...(short ? { fillPage: await fillPage(c, query, 1000) } : {}),
    };
    log(`${kind}: ${JSON.stringify(results[kind])}`);
  }
  return {
    overall: {
      firstPage: { p50: percentileOf(firstAll, 50), p99: percentileOf(firstAll, 99), max: percentileOf(firstAll, 100) },
      deepPage: { p50: percentileOf(deepAll, 50), p99: percentileOf(deepAll, 99), max: percentileOf(deepAll, 100) },
    },
    cases: results,
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const dir = args.dir ?? (await mkdtemp(join(tmpdir(), 'admin-browse-')));
  const summary: Record<string, unknown> = { count: args.count, dir, node: process.version, runs: args.runs, deepPageAfter: args.depth };
  const spoolDir = join(dir, 'spool');
  const reuse = args.reuse && existsSync(join(spoolDir, 'meta.mdb'));
  if (!reuse) await rm(spoolDir, { recursive: true, force: true });
  // The config first: a bad one must fail before a long fill, not after.
  await mkdir(dir, { recursive: true });
  const overlay = join(dir, 'config.json');
  await writeFile(overlay, JSON.stringify({
    spool: { dir: spoolDir },
    admin: { listen: '127.0.0.1:0', token: TOKEN },
    log: { level: 'silent', pretty: false },
  }));
  const config = new ConfigStore(overlay);
  const q = await openSpool(spoolDir);
  if (reuse) {
    log(`reusing the spool in ${spoolDir}`);
  } else {
    log(`filling ${args.count} mails into ${spoolDir}`);
    summary.fill = await fill(q, args.count);
    log(`fill done: ${JSON.stringify(summary.fill)}; attempts`);
    summary.attempts = await attempts(q, args.count);
  }
  summary.byState = (await q.stats()).byState;

  const logger = silentLogger();
  const admin = await createAdminServer({ config, queue: q, logger, metrics: createMetrics(), dataDir: dir });
  const c = new Client(await admin.listen());
  try {
    log('browse over HTTP');
    summary.browse = await measure(c, args);
    await c.get('/api/stats');
    const stats: number[] = [];
    for (let i = 0; i < 10; i++) stats.push((await c.get('/api/stats')).ms);
    summary.statsMs = { p50: percentileOf(stats, 50), max: percentileOf(stats, 100) };
    summary.rssMb = Math.round(process.memoryUsage().rss / 2 ** 20);
  } finally {
    await admin.close();
    await q.close();
    if (!args.keep) await rm(dir, { recursive: true, force: true });
  }
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
}

runBench(main);
