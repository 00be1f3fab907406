/**
 * Browse over the spool's indexes, never a full scan.
 *
 * A page is produced by choosing index ranges ("sources") whose keys come out in the requested
 * sort order, merging them (one source per state or priority asked for), and checking each
 * candidate against the whole filter (matchesFilter from model.ts). The cursor is the sort tuple of
 * the last entry examined, so pages never repeat or skip a mail that stays put, and a page can stop
 * early: at most EXAMINE_BUDGET entries are looked at per page, which bounds latency for filters an
 * index cannot narrow (q, size). A short page with a nextCursor just means "keep going".
 *
 * When sender / recipient / domain narrows the set to at most SMALL_SET mails and the sort is not by
 * received time (those indexes are received-ordered), the set is loaded and sorted in memory.
 * A bigger set sorted by priority is walked class by class through the selector's own index, keeping
 * the entries whose [state, priority, received, id] key exists in the `sp` family: a key probe costs
 * a quarter of loading a mail, and every entry walked is in the set, so a small domain or sender
 * among a million mails still fills its page (see selectorByPriority). The budget counts a probe as
 * PROBE_COST of a load.
 *
 * Active mail is indexed under 'queued' (indexes.ts): the queued ranges yield it too and the filter
 * check drops it when only queued is asked for (totals of sender / recipient / time-window ranges
 * are then estimates); a filter on active alone lists the `a` family (the leases held) in memory.
 *
 * `q` (subject or Message-ID contains) and `reply` (a last reply contains) have no index: they are
 * checked mail by mail. A mail's stored bytes are first searched for the text (qPrefilter, and for
 * `reply` its longest word that is not a number: replyPrefilter), and only the mails that pass are
 * decoded. The search costs about three quarters of a decode now (2.7 against 3.7 µs a mail on
 * 2026-12-05; half, 11 against 22 µs, when it was written, before records shared their
 * structures), and it is counted as half (PREFILTER_COST): a page with it examines twice as many
 * mails and takes about 15 ms instead of 7.5, and crossing 1,000,000 mails takes about as long
 * either way (4.4 s in 251 requests against 4.6 s in 500, `bench/admin-browse.ts`).
 *
 * Totals are exact when counters or a bounded range count answer them (state, priority, domain,
 * sender, recipient and their combinations with state, and a time window of up to WINDOW_COUNT_CAP
 * mails with any of those), and otherwise an upper-bound estimate
 * with exact:false (e.g. with q, size or time bounds).
 */
import type { Database } from 'lmdb';
import { QueueError } from '../errors.js';
import { matchesFilter } from '../model.js';
import type { BrowseFilter, BrowseOptions, BrowsePage, MailState, QueuedMail, SortField } from '../types.js';
import { MAIL_STATES } from '../types.js';
import { HIGH, indexState, type IndexKey } from './indexes.js';

export interface BrowseStore {
  ix: Database<Buffer, IndexKey>;
  mails: Database<QueuedMail, string>;
  counter(key: IndexKey): number;
}

export class InvalidCursorError extends QueueError {
  constructor(message = 'Invalid browse cursor') {
    super(message, 501, '5.5.4', 400);
  }
}

const EXAMINE_BUDGET = 2000;
/** What a raw-bytes check (qPrefilter) is counted against EXAMINE_BUDGET, where a decode counts 1 (see the top of this file). */
const PREFILTER_COST = 0.5;
/** The UTF-8 of the only characters whose lower case holds an ASCII letter: İ (→ i̇) and the Kelvin sign (→ k). */
const ASCII_FROM_LOWERCASE = [Buffer.from('\u0130'), Buffer.from('\u212a')];
/** What an index-key probe costs against EXAMINE_BUDGET, where loading a mail costs 1 (measured ~4.5 µs vs ~20 µs). */
const PROBE_COST = 0.25;
const SMALL_SET = 3000;
const COUNT_CAP = 200_000;
/** Keys counted at most for an exact total of a time window (counting is ~0.8 µs a key). */
const WINDOW_COUNT_CAP = 20_000;

type Tuple = (string | number)[];

interface Source {
  prefix: IndexKey;
  /** Leading elements of the sort tuple that are fixed by the prefix. */
  fixed: Tuple;
  /** Bounds on the first suffix element (received time), when the sort is by received. */
  lo?: number;
  hi?: number;
  /** Entries failing this (checked on the key alone) are yielded with `skip`, so the cursor moves past them. */
  accept?: (suffix: Tuple) => boolean;
}

interface Entry { tuple: Tuple; id: string; skip?: boolean }

interface Cursor {
  s: SortField;
  o: 'asc' | 'desc';
  t: Tuple;
}

function listOf<T>(v: T | T[] | undefined): T[] | undefined {
  return v === undefined ? undefined : [...new Set(Array.isArray(v) ? v : [v])];
}

export function cmpTuple(a: Tuple, b: Tuple): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x === y) continue;
    if (typeof x === 'number' && typeof y === 'number') return x - y;
    if (typeof x === 'number') return -1;
    if (typeof y === 'number') return 1;
    return x < y ? -1 : 1;
  }
  return a.length - b.length;
}

export function sortTuple(m: QueuedMail, sort: SortField): Tuple {
  if (sort === 'priority') return [m.priority, m.receivedAt, m.id];
  if (sort === 'nextAttempt') return [m.notBefore, m.id];
  return [m.receivedAt, m.id];
}

function encodeCursor(c: Cursor): string {
  return Buffer.from(JSON.stringify(c)).toString('base64url');
}

function decodeCursor(s: string, sort: SortField, order: 'asc' | 'desc'): Tuple {
  let c: Cursor;
  try {
    c = JSON.parse(Buffer.from(s, 'base64url').toString('utf8')) as Cursor;
  } catch {
    throw new InvalidCursorError();
  }
  if (!c || c.s !== sort || c.o !== order || !Array.isArray(c.t)) throw new InvalidCursorError('Cursor belongs to another sort order');
  return c.t;
}

/** The index family prefix narrowing by sender, recipient or domain, if the filter has one. */
function selector(f: BrowseFilter): IndexKey | undefined {
  if (f.sender !== undefined) return ['S', f.sender.toLowerCase()];
  if (f.recipient !== undefined) return ['R', f.recipient.toLowerCase()];
  if (f.domain !== undefined) return ['d', f.domain.toLowerCase()];
  return undefined;
}

/** The states whose index ranges hold the mails of `states`: active mail is indexed under queued (indexes.ts). */
function ixStates(states: readonly MailState[] | undefined): MailState[] {
  return [...new Set((states ?? MAIL_STATES).map(indexState))];
}

/** The ranges of `states` also hold mail of another state (queued asked without active, or the reverse): range counts are upper bounds. */
function rangesOverCount(states: readonly MailState[] | undefined): boolean {
  return !!states && states.includes('active') !== states.includes('queued');
}

function selectorSources(sel: IndexKey, states: MailState[] | undefined, f: BrowseFilter): Source[] {
  return ixStates(states).map((s) => ({ prefix: [...sel, s], fixed: [], lo: f.since, hi: f.until }));
}

/** Index ranges that yield the mails of the filter's states / priorities in `sort` order. */
function sortSources(sort: SortField, states: MailState[] | undefined, prios: number[] | undefined, f: BrowseFilter): Source[] {
  const out: Source[] = [];
  for (const s of ixStates(states)) {
    if (sort === 'received') {
      const t = { lo: f.since, hi: f.until };
      if (prios) for (const p of prios) out.push({ prefix: ['sp', s, p], fixed: [], ...t });
      else out.push({ prefix: ['s', s], fixed: [], ...t });
    } else if (sort === 'priority') {
      if (prios) for (const p of prios) out.push({ prefix: ['sp', s, p], fixed: [p] });
      else out.push({ prefix: ['sp', s], fixed: [] });
    } else {
      out.push({ prefix: ['sn', s], fixed: [] });
    }
  }
  return out;
}

/** Iterates one source's keys in order, strictly after the cursor. */
function* walk(ix: BrowseStore['ix'], src: Source, desc: boolean, cursor: Tuple | undefined): Generator<Entry> {
  const p = src.prefix;
  let from: IndexKey | undefined;
  if (cursor) {
    const head = cursor.slice(0, src.fixed.length);
    const c = cmpTuple(head, src.fixed);
    if (desc ? c < 0 : c > 0) return;
    if (c === 0) from = [...p, ...cursor.slice(src.fixed.length)];
  }
  const low: IndexKey = src.lo !== undefined ? [...p, src.lo] : p;
  const high: IndexKey = src.hi !== undefined ? [...p, src.hi, HIGH] : [...p, HIGH];
  const range = desc
    ? { start: from ?? high, end: low, reverse: true, exclusiveStart: !!from }
    : { start: from ?? low, end: high, exclusiveStart: !!from };
  for (const key of ix.getKeys(range)) {
    const suffix = key.slice(p.length) as Tuple;
    const entry: Entry = { tuple: [...src.fixed, ...suffix], id: String(key[key.length - 1]) };
    if (src.accept && !src.accept(suffix)) entry.skip = true;
    yield entry;
  }
}

/** k-way merge of sources by sort tuple. */
function* merge(ix: BrowseStore['ix'], sources: Source[], desc: boolean, cursor: Tuple | undefined): Generator<Entry> {
  const its = sources.map((s) => walk(ix, s, desc, cursor));
  try {
    const heads = its.map((it) => it.next());
    for (;;) {
      let best = -1;
      for (let i = 0; i < heads.length; i++) {
        const h = heads[i]!;
        if (h.done) continue;
        if (best < 0) { best = i; continue; }
        const c = cmpTuple(h.value.tuple, (heads[best]!.value as { tuple: Tuple }).tuple);
        if (desc ? c > 0 : c < 0) best = i;
      }
      if (best < 0) return;
      const v = heads[best]!.value as Entry;
      heads[best] = its[best]!.next();
      yield v;
    }
  } finally {
    // An unfinished LMDB range holds a read snapshot; left open, LMDB could never reuse freed
    // pages and the file (and the mapped RSS) would grow with every write.
    for (const it of its) it.return(undefined);
  }
}

function rangeCount(ix: BrowseStore['ix'], src: Source, cap: number): number {
  const p = src.prefix;
  return ix.getCount({
    start: src.lo !== undefined ? [...p, src.lo] : p,
    end: src.hi !== undefined ? [...p, src.hi, HIGH] : [...p, HIGH],
    limit: cap,
  });
}

/** The exact total when counters or a capped range count give it; else an estimate. */
function total(store: BrowseStore, f: BrowseFilter, states: MailState[] | undefined, prios: number[] | undefined): { count: number; exact: boolean } {
  const window = windowCount(store, f, states, prios);
  if (window !== undefined) return { count: window, exact: true };
  const residual = f.since !== undefined || f.until !== undefined || f.minSize !== undefined || f.maxSize !== undefined || !!f.q || !!f.reply;
  const sels = [f.sender, f.recipient, f.domain].filter((x) => x !== undefined).length;
  const stateList = states ?? MAIL_STATES;
  let count: number;
  let exact = !residual && sels <= 1;
  if (f.sender !== undefined || f.recipient !== undefined) {
    count = 0;
    if (rangesOverCount(states)) exact = false;
    for (const src of selectorSources(selector(f)!, states, {})) {
      const n = rangeCount(store.ix, src, COUNT_CAP);
      count += n;
      if (n >= COUNT_CAP) exact = false;
    }
    if (prios) exact = false;
  } else if (f.domain !== undefined) {
    const d = f.domain.toLowerCase();
    count = stateList.reduce((n, s) => n + store.counter(['c', 'dd', d, s]), 0);
    if (prios) exact = false;
  } else if (prios) {
    count = 0;
    for (const s of stateList) for (const p of prios) count += store.counter(['c', 'sp', s, p]);
  } else {
    count = stateList.reduce((n, s) => n + store.counter(['c', 's', s]), 0);
  }
  return { count, exact };
}

/**
 * The exact count of a time window (since/until, alone or with states, priorities or one of
 * sender / recipient / domain): the received-ordered ranges are counted key by key, up to
 * WINDOW_COUNT_CAP keys (about 15 ms); a wider window gets the counters' upper bound instead.
 */
function windowCount(store: BrowseStore, f: BrowseFilter, states: MailState[] | undefined, prios: number[] | undefined): number | undefined {
  if (f.since === undefined && f.until === undefined) return undefined;
  if (f.minSize !== undefined || f.maxSize !== undefined || f.q || f.reply || rangesOverCount(states)) return undefined;
  const sels = [f.sender, f.recipient, f.domain].filter((x) => x !== undefined).length;
  const sel = selector(f);
  if (sels > 1 || (sel && prios)) return undefined;
  const sources = sel ? selectorSources(sel, states, f) : sortSources('received', states, prios, f);
  let n = 0;
  for (const src of sources) {
    n += rangeCount(store.ix, src, WINDOW_COUNT_CAP + 1 - n);
    if (n > WINDOW_COUNT_CAP) return undefined;
  }
  return n;
}

export function browseIndexed(store: BrowseStore, f: BrowseFilter, opts: BrowseOptions): BrowsePage {
  const sort = opts.sort ?? 'received';
  const order = opts.order ?? 'asc';
  const desc = order === 'desc';
  const limit = Math.min(1000, Math.max(1, Math.floor(opts.limit ?? 50)));
  const cursor = opts.cursor ? decodeCursor(opts.cursor, sort, order) : undefined;
  const states = listOf(f.state);
  const prios = listOf(f.priority);
  const sel = selector(f);
  // Active mail only: the leases held, few, listed from the `a` family (not the queued ranges they are indexed in).
  if (states && states.every((s) => s === 'active')) return pageInMemory(store, [{ prefix: ['a'], fixed: [] }], f, sort, order, limit, cursor);
  const estimate = total(store, f, states, prios);

  let entries: Iterable<Entry> | undefined;
  if (sel && sort !== 'received') {
    const selSources = selectorSources(sel, states, f);
    let n = 0;
    for (const s of selSources) n += rangeCount(store.ix, s, SMALL_SET + 1);
    if (n <= SMALL_SET) return pageInMemory(store, selSources, f, sort, order, limit, cursor);
    if (sort === 'priority') {
      const stateList = states ?? MAIL_STATES;
      const classes = (prios ?? classesPresent(store.ix, stateList)).sort((a, b) => (desc ? b - a : a - b));
      if (probingPays(store, estimate.count, stateList, cursor ? Number(cursor[0]) : classes[0])) {
        entries = selectorByPriority(store, sel, stateList, classes, f, desc, cursor);
      }
    }
  }
  const sources = sel && sort === 'received' ? selectorSources(sel, states, f) : sortSources(sort, states, prios, f);
  const items: QueuedMail[] = [];
  const prefilter = bothPrefilters(qPrefilter(f.q), replyPrefilter(f.reply));
  let examined = 0;
  let last: Tuple | undefined;
  let more = false;
  for (const entry of entries ?? merge(store.ix, sources, desc, cursor)) {
    if (items.length >= limit || examined >= EXAMINE_BUDGET) { more = true; break; }
    last = entry.tuple;
    if (entry.skip) { examined += PROBE_COST; continue; }
    if (prefilter) {
      const raw = store.mails.getBinary(entry.id);
      if (!raw || !prefilter(raw)) { examined += PREFILTER_COST; continue; }
    }
    examined++;
    const mail = store.mails.get(entry.id);
    if (mail && matchesFilter(mail, f)) items.push(mail);
  }
  const page: BrowsePage = { items, total: estimate };
  if (more && last) page.nextCursor = encodeCursor({ s: sort, o: order, t: last });
  // The whole result fitted in this first page: the count is known exactly.
  if (!more && !cursor) page.total = { count: items.length, exact: true };
  return page;
}

/** The priority classes that have mail in any of `states`, found by seeking the `sp` index. */
function classesPresent(ix: BrowseStore['ix'], states: readonly MailState[]): number[] {
  const found = new Set<number>();
  for (const s of ixStates(states)) {
    let start: IndexKey = ['sp', s];
    for (;;) {
      const first = [...ix.getKeys({ start, end: ['sp', s, HIGH], limit: 1 })][0];
      if (!first) break;
      const p = first[2] as number;
      found.add(p);
      start = ['sp', s, p, HIGH];
    }
  }
  return [...found];
}

/**
 * Whether, for the page at hand, walking the selector's set with probes beats walking the whole
 * `sp` index and loading each mail. Per mail found the first costs about PROBE_COST / (share of the
 * class being walked: the cursor's, or the first) + 1, the second 1 / (share of the selector's set).
 * Shares come from the counters. Both walks give the same order and cursors, so pages may mix them.
 */
function probingPays(store: BrowseStore, selCount: number, states: readonly MailState[], current: number | undefined): boolean {
  const inScope = states.reduce((n, s) => n + store.counter(['c', 's', s]), 0);
  if (!inScope || !selCount || current === undefined || Number.isNaN(current)) return false;
  const inClass = states.reduce((n, s) => n + store.counter(['c', 'sp', s, current]), 0);
  if (!inClass) return false;
  return PROBE_COST * (inScope / inClass) + 1 < inScope / selCount;
}

/**
 * The selector's set (sender, recipient or domain) in priority order without loading mails that
 * are not on the page: class by class in `classes` order, the selector's per-state ranges merged
 * by received time, each entry kept when its `sp` key exists for that class.
 */
function* selectorByPriority(
  store: BrowseStore, sel: IndexKey, states: readonly MailState[], classes: number[], f: BrowseFilter, desc: boolean, cursor: Tuple | undefined,
): Generator<Entry> {
  for (const p of classes) {
    const sources: Source[] = ixStates(states).map((s) => ({
      prefix: [...sel, s], fixed: [p], lo: f.since, hi: f.until,
      accept: (suffix: Tuple) => store.ix.doesExist(['sp', s, p, ...suffix] as IndexKey),
    }));
    yield* merge(store.ix, sources, desc, cursor);
  }
}

/**
 * A test on a mail's stored (msgpack) bytes that is false only for mails that cannot match `q`:
 * strings are stored as UTF-8, so an ASCII text that is in the subject or Message-ID (ignoring
 * case) is in the bytes (ignoring ASCII case). Read as latin1, every non-ASCII byte is a character
 * whose case folding never gives an ASCII letter; the two Unicode characters whose lower case does
 * hold one send the mail to the full check. Undefined (no shortcut) for a non-ASCII `q`.
 */
export function qPrefilter(q: string | undefined): ((raw: Buffer) => boolean) | undefined {
  if (!q || !/^[\x20-\x7e]+$/.test(q)) return undefined;
  const text = new RegExp(q.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'i');
  return (raw) => text.test(raw.toString('latin1')) || ASCII_FROM_LOWERCASE.some((c) => raw.includes(c));
}

/**
 * The same shortcut for `reply`, which matches "CODE ENHANCED text" of a recipient's last reply:
 * a word of it (no spaces) lies whole inside the code, the enhanced code or the text, as those are
 * joined by spaces, and only the code is stored as a number. So the longest word that is not all
 * digits is in the stored bytes (ignoring case) of every mail that matches. Undefined when there is
 * no such ASCII word (e.g. `reply=421`).
 */
export function replyPrefilter(reply: string | undefined): ((raw: Buffer) => boolean) | undefined {
  if (!reply) return undefined;
  const words = reply.split(' ').filter((w) => /^[\x20-\x7e]+$/.test(w) && !/^[0-9]+$/.test(w));
  const longest = words.reduce<string | undefined>((a, w) => (a === undefined || w.length > a.length ? w : a), undefined);
  return qPrefilter(longest);
}

function bothPrefilters(a: ((raw: Buffer) => boolean) | undefined, b: ((raw: Buffer) => boolean) | undefined): ((raw: Buffer) => boolean) | undefined {
  return a && b ? (raw) => a(raw) && b(raw) : a ?? b;
}

function pageInMemory(
  store: BrowseStore, sources: Source[], f: BrowseFilter, sort: SortField, order: 'asc' | 'desc', limit: number, cursor: Tuple | undefined,
): BrowsePage {
  const desc = order === 'desc';
  const seen = new Set<string>();
  const all: { tuple: Tuple; mail: QueuedMail }[] = [];
  for (const entry of merge(store.ix, sources, false, undefined)) {
    if (seen.has(entry.id)) continue;
    seen.add(entry.id);
    const mail = store.mails.get(entry.id);
    if (mail && matchesFilter(mail, f)) all.push({ tuple: sortTuple(mail, sort), mail });
  }
  all.sort((a, b) => (desc ? -1 : 1) * cmpTuple(a.tuple, b.tuple));
  const after = cursor ? all.filter((x) => (desc ? cmpTuple(x.tuple, cursor) < 0 : cmpTuple(x.tuple, cursor) > 0)) : all;
  const pageItems = after.slice(0, limit);
  const page: BrowsePage = { items: pageItems.map((x) => x.mail), total: { count: all.length, exact: true } };
  if (after.length > limit) page.nextCursor = encodeCursor({ s: sort, o: order, t: pageItems[pageItems.length - 1]!.tuple });
  return page;
}
