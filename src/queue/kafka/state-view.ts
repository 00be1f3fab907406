/**
 * The per-node view of the state topic: every node reads `<prefix>.state` from the beginning and
 * applies its records here, in log order. This is where the Kafka backend's consistency comes from.
 *
 * Conditional records (a compare-and-set decided by the log): each state record carries `prev`,
 * the generation its writer based the change on (0 for a new mail). A record is applied only when
 * `prev` equals the generation the view holds for that mail at that point of the log; otherwise
 * it is rejected. All nodes read the same partition in the same order, so all of them accept and
 * reject the same records: two nodes reserving the same mail both write, the first record in the
 * log wins everywhere, and the loser learns it lost when its own view reaches its record.
 * A record whose `mail.generation` equals `prev` is a re-assertion (no change, no event): the
 * repair sweep writes one when a key's latest record was rejected, so that log compaction (which
 * keeps only the latest record per key) can never leave a rejected record as a mail's state.
 *
 * Log compaction: a reader sees, of each key's records, the latest and an ordered subset of the
 * ones before it (Kafka's guarantee for a compacted topic). One that stays within the topic's head
 * (here within `min.compaction.lag.ms`, a minute) sees them all; one that reads from further back
 * (a node starting, a view read on from a snapshot's offsets) may miss any of them, even between
 * two it sees, when its read crosses a run of the cleaner (found by the Kafka crash soak with fast
 * compaction: the view kept a mail at generation 5, rejected its `delivered` record written from
 * generation 7, and the node delivered it again). So a record is accepted when its `prev` is at
 * least the generation the view holds, not only equal to it: a writer computed it from generation
 * `prev`, so that generation was accepted, and a view behind it missed the records leading there.
 * Where a reader misses nothing, a `prev` above the view's generation never comes (every node
 * applies the same records in the same order), so this changes nothing for it. A mail met first
 * in a record whose `prev` is not 0 is adopted likewise (its first records compacted away). A
 * record that lost its race and was kept by the cleaner as its key's latest (before its repair
 * came) can be taken this way by a reader that missed the winner; the repair sweep's re-assertion
 * then comes at the winner's generation, which is the loser's too when both were computed from
 * the same one, and replaces it. The one exception is a mail this view purged itself a short
 * while ago (`PURGED_MEMORY_MS`): a write landing after its tombstone is a late one, rejected, and
 * the repair sweep tombstones it again.
 *
 * The view is in memory (a Map plus sorted due/lease/finished indexes); browse and stats scan the
 * live set. That is fine for the ~10^5 mails one node is sized for here; a larger deployment would
 * put the same records into the spool's LMDB indexes (see README).
 */
import { EventEmitter } from 'node:events';
import { QueueError } from '../errors.js';
import { AGE_BUCKETS_MINUTES, ageBucket, eventTypeFor, isTerminal, matchesFilter, recipientDomains } from '../model.js';
import type {
  BrowseFilter, BrowseOptions, BrowsePage, MailId, MailState, Millis, QueuedMail, QueueEvent, QueueStats, SortField,
} from '../types.js';
import { MAIL_STATES } from '../types.js';
import { SortedKeys } from './sorted-keys.js';

/** The JSON value of a state record. A null value (tombstone) purges the mail. */
export interface StateRecord {
  /** Unique id of this write, so its writer can learn the outcome. */
  w: string;
  /** Generation this change was computed from; 0 for a new mail. */
  prev: number;
  mail: QueuedMail;
  /** No change-feed event (lease renewals, repairs). */
  quiet?: boolean;
}

/** A view's bookkeeping kept in a snapshot with its mails. */
export interface SnapshotExtras {
  /** Mails whose latest record was rejected (the repair sweep's work). */
  rejected: MailId[];
  /** Mails this view purged lately, with when. */
  purged: [MailId, Millis][];
}

export interface WriteOutcome {
  accepted: boolean;
  /** The view's mail after this record (the winner's version when rejected). */
  mail?: QueuedMail;
}

export class InvalidCursorError extends QueueError {
  constructor(message = 'Invalid browse cursor') {
    super(message, 501, '5.5.4', 400);
  }
}

/** How long this view remembers a mail it purged, against writes landing after the tombstone. */
export const PURGED_MEMORY_MS = 10 * 60_000;

type Tuple = (string | number)[];

function cmpTuple(a: Tuple, b: Tuple): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x === y) continue;
    if (typeof x === 'number' && typeof y === 'number') return x - y;
    return String(x) < String(y) ? -1 : 1;
  }
  return a.length - b.length;
}

function sortTuple(m: QueuedMail, sort: SortField): Tuple {
  if (sort === 'priority') return [m.priority, m.receivedAt, m.id];
  if (sort === 'nextAttempt') return [m.notBefore, m.id];
  return [m.receivedAt, m.id];
}

export class StateView {
  readonly mails = new Map<MailId, QueuedMail>();
  /** queued mail per priority class, by notBefore. */
  readonly queuedByPriority = new Map<number, SortedKeys>();
  /** active mail by lease.until. */
  readonly activeByLease = new SortedKeys();
  /**
   * Finished mail by updatedAt (purge order), apart by who finished it: this instance (its write
   * ids start with `ownWrites`) or another node (or this node before a restart).
   */
  readonly finishedHere = new SortedKeys();
  readonly finishedElsewhere = new SortedKeys();
  /** Keys whose latest record in the log was rejected, with when it was seen (repair sweep). */
  readonly rejectedLatest = new Map<MailId, Millis>();
  /** Mails this view purged, with when, for PURGED_MEMORY_MS (in purge order: pruned from the front). */
  private readonly purged = new Map<MailId, Millis>();
  private readonly waiters = new Map<string, (o: WriteOutcome) => void>();
  private readonly events = new EventEmitter();

  constructor(private readonly now: () => Millis, private readonly ownWrites = '') {
    this.events.setMaxListeners(0);
  }

  /** Resolves when the record written with id `w` has been applied or rejected by this view. */
  awaitWrite(w: string): Promise<WriteOutcome> {
    return new Promise((resolve) => this.waiters.set(w, resolve));
  }

  forgetWrite(w: string): void {
    this.waiters.delete(w);
  }

  subscribe(listener: (e: QueueEvent) => void): () => void {
    this.events.on('event', listener);
    return () => this.events.off('event', listener);
  }

  /**
   * Applies one record of the state topic (value null = tombstone). `timestamp` is the record's
   * (ms): a tombstone older than PURGED_MEMORY_MS, read at start, is not remembered.
   */
  apply(id: MailId, value: Buffer | null, timestamp?: Millis): void {
    const before = this.mails.get(id);
    if (value === null) {
      this.rejectedLatest.delete(id);
      if (before) {
        this.unindex(before);
        this.mails.delete(id);
        const now = this.now();
        if (timestamp === undefined || timestamp > now - PURGED_MEMORY_MS) this.rememberPurged(id, now);
        this.emit({ type: 'purged', id, state: before.state, at: now });
      }
      return;
    }
    let rec: StateRecord;
    try {
      rec = JSON.parse(value.toString('utf8')) as StateRecord;
    } catch {
      return; // not ours (or corrupt): never let one bad record stop the view
    }
    if (rec.mail?.id !== id || typeof rec.prev !== 'number') {
      this.reject(id, rec, before);
      return;
    }
    // At or past the view's generation (records before it may have been compacted away); for a
    // mail the view does not hold, a new one or one whose first records were compacted away,
    // unless this view purged it lately (a late write).
    const purgedAt = this.purged.get(id);
    const accepted = before
      ? rec.prev >= before.generation
      : rec.prev === 0 || !(purgedAt !== undefined && purgedAt > this.now() - PURGED_MEMORY_MS);
    if (!accepted) {
      this.reject(id, rec, before);
      return;
    }
    this.rejectedLatest.delete(id);
    const after = rec.mail;
    if (before) this.unindex(before);
    this.mails.set(id, after);
    this.index(after, this.ownWrites !== '' && typeof rec.w === 'string' && rec.w.startsWith(this.ownWrites));
    this.settle(rec.w, { accepted: true, mail: after });
    if (!before || (!rec.quiet && after.generation !== rec.prev)) this.emitChange(before, after);
  }

  /** What a snapshot holds of the view besides its mails (view-snapshot.ts). */
  snapshotExtras(): SnapshotExtras {
    return { rejected: [...this.rejectedLatest.keys()], purged: [...this.purged] };
  }

  /** Fills an empty view from a snapshot, without events (nothing listens before the queue has started). */
  load(mails: Iterable<QueuedMail>, extras: SnapshotExtras): void {
    const now = this.now();
    for (const m of mails) {
      this.mails.set(m.id, m);
      this.index(m, false);
    }
    for (const id of extras.rejected) this.rejectedLatest.set(id, now);
    for (const [id, at] of extras.purged) if (at > now - PURGED_MEMORY_MS) this.purged.set(id, at);
  }

  private reject(id: MailId, rec: StateRecord, before: QueuedMail | undefined): void {
    this.rejectedLatest.set(id, this.now());
    this.settle(rec.w, { accepted: false, ...(before ? { mail: before } : {}) });
  }

  private rememberPurged(id: MailId, now: Millis): void {
    this.purged.delete(id);
    this.purged.set(id, now);
    for (const [old, at] of this.purged) {
      if (at > now - PURGED_MEMORY_MS) break;
      this.purged.delete(old);
    }
  }

  private settle(w: string, o: WriteOutcome): void {
    const waiter = this.waiters.get(w);
    if (!waiter) return;
    this.waiters.delete(w);
    waiter(o);
  }

  private emitChange(before: QueuedMail | undefined, after: QueuedMail): void {
    const type = eventTypeFor(before, after);
    const e: QueueEvent = { type, id: after.id, state: after.state, at: after.updatedAt };
    if (type === 'updated' || type === 'deferred') {
      e.priority = after.priority;
      e.notBefore = after.notBefore;
    }
    this.emit(e);
  }

  private emit(e: QueueEvent): void {
    this.events.emit('event', e);
  }

  private index(m: QueuedMail, ownWrite: boolean): void {
    if (m.state === 'queued') {
      let set = this.queuedByPriority.get(m.priority);
      if (!set) this.queuedByPriority.set(m.priority, (set = new SortedKeys()));
      set.add(m.notBefore, m.id);
    } else if (m.state === 'active') {
      this.activeByLease.add(m.lease?.until ?? 0, m.id);
    } else if (isTerminal(m.state)) {
      (ownWrite ? this.finishedHere : this.finishedElsewhere).add(m.updatedAt, m.id);
    }
  }

  private unindex(m: QueuedMail): void {
    if (m.state === 'queued') this.queuedByPriority.get(m.priority)?.delete(m.notBefore, m.id);
    else if (m.state === 'active') this.activeByLease.delete(m.lease?.until ?? 0, m.id);
    else if (isTerminal(m.state)) {
      this.finishedHere.delete(m.updatedAt, m.id);
      this.finishedElsewhere.delete(m.updatedAt, m.id);
    }
  }

  /** Due mail per class (high first), each in notBefore order, at most `limit` per class. */
  dueByClass(now: Millis, limit: number, skip: Set<MailId>): { priority: number; items: QueuedMail[] }[] {
    const byClass = new Map<number, QueuedMail[]>();
    for (const [priority, set] of this.queuedByPriority) {
      const items: QueuedMail[] = [];
      for (const e of set.upTo(now)) {
        if (items.length >= limit) break;
        if (skip.has(e.id)) continue;
        const m = this.mails.get(e.id);
        if (m) items.push(m);
      }
      if (items.length) byClass.set(priority, items);
    }
    let lapsed = 0;
    for (const e of this.activeByLease.upTo(now)) {
      if (lapsed++ >= limit) break;
      if (skip.has(e.id)) continue;
      const m = this.mails.get(e.id);
      if (!m) continue;
      const list = byClass.get(m.priority) ?? [];
      list.push(m);
      byClass.set(m.priority, list);
    }
    const byDue = (a: QueuedMail, b: QueuedMail): number => a.notBefore - b.notBefore || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    return [...byClass.entries()].sort((a, b) => b[0] - a[0]).map(([priority, items]) => ({ priority, items: items.sort(byDue) }));
  }

  nextDueAt(): Millis | undefined {
    let best: number | undefined;
    for (const set of this.queuedByPriority.values()) {
      const f = set.first();
      if (f && (best === undefined || f.k < best)) best = f.k;
    }
    return best;
  }

  browse(filter: BrowseFilter, opts: BrowseOptions = {}): BrowsePage {
    const sort = opts.sort ?? 'received';
    const order = opts.order ?? 'asc';
    const limit = Math.min(1000, Math.max(1, opts.limit ?? 50));
    let after: Tuple | undefined;
    if (opts.cursor !== undefined) after = this.decodeCursor(opts.cursor, sort, order);
    const sign = order === 'desc' ? -1 : 1;
    const all = [...this.mails.values()].filter((m) => matchesFilter(m, filter));
    const keyed = all.map((m) => ({ m, t: sortTuple(m, sort) })).sort((a, b) => sign * cmpTuple(a.t, b.t));
    const rest = after ? keyed.filter((x) => sign * cmpTuple(x.t, after) > 0) : keyed;
    const page = rest.slice(0, limit);
    const last = page[page.length - 1];
    return {
      items: page.map((x) => x.m),
      ...(rest.length > limit && last ? { nextCursor: Buffer.from(JSON.stringify({ s: sort, o: order, t: last.t })).toString('base64url') } : {}),
      total: { count: all.length, exact: true },
    };
  }

  private decodeCursor(cursor: string, sort: SortField, order: 'asc' | 'desc'): Tuple {
    try {
      const c = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as { s: string; o: string; t: Tuple };
      if (c.s !== sort || c.o !== order || !Array.isArray(c.t)) throw new Error('mismatch');
      return c.t;
    } catch {
      throw new InvalidCursorError();
    }
  }

  stats(now: Millis, topN: number): QueueStats {
    const byState = Object.fromEntries(MAIL_STATES.map((s) => [s, 0])) as Record<MailState, number>;
    const byPriority: Record<string, number> = {};
    const byDomain = new Map<string, { total: number; counts: number[] }>();
    let oldestReceivedAt: number | undefined;
    for (const m of this.mails.values()) {
      byState[m.state]++;
      if (isTerminal(m.state)) continue;
      byPriority[String(m.priority)] = (byPriority[String(m.priority)] ?? 0) + 1;
      if (oldestReceivedAt === undefined || m.receivedAt < oldestReceivedAt) oldestReceivedAt = m.receivedAt;
      const bucket = Math.max(0, ageBucket(m.receivedAt, now));
      for (const d of recipientDomains(m)) {
        let row = byDomain.get(d);
        if (!row) byDomain.set(d, (row = { total: 0, counts: AGE_BUCKETS_MINUTES.map(() => 0) }));
        row.total++;
        row.counts[bucket]!++;
      }
    }
    const top = [...byDomain.entries()].sort((a, b) => b[1].total - a[1].total || a[0].localeCompare(b[0])).slice(0, topN);
    return {
      at: now,
      byState,
      byPriority,
      ...(oldestReceivedAt !== undefined ? { oldestReceivedAt } : {}),
      topDestinations: top.map(([domain, r]) => ({ domain, count: r.total })),
      ageByDestination: { bucketsMinutes: AGE_BUCKETS_MINUTES, rows: top.map(([domain, r]) => ({ domain, total: r.total, counts: r.counts })) },
    };
  }
}

