/**
 * The embedded spool: the default queue backend, one process owning one directory.
 *
 * Layout of `<dir>`:
 *   LOCK             pid lock: a second process (or a second open in this one) is refused
 *   meta.mdb         LMDB: mails (id → QueuedMail), bodies (id → segment/offset/length),
 *                    ix (secondary indexes, see indexes.ts), meta (counters, the write-ahead checkpoint)
 *   segments/*.seg   message bodies in frames, append-only: also the write-ahead log of new mail (see segments.ts)
 *   segment.spare    the next segment, zero-filled ahead of time (see segments.ts)
 *
 * Guarantees:
 * - Durability: `enqueue` resolves after (1) the mail's frame (body, and for a caller that passes
 *   onDurable the enqueue request itself) is written and fdatasync'ed in a segment and (2) the
 *   LMDB transaction that indexes it is committed with a synchronous flush (overlappingSync
 *   off). `onDurable` is called between the two: from (1) on the mail is never lost, and the
 *   ingress answers 250 then, one flush after the data instead of three (the LMDB commit syncs
 *   its pages, then its meta page). The segments are the write-ahead log of new mail: each
 *   transaction also commits a checkpoint, the frame of the oldest new mail that is still not
 *   indexed after it; at start, `replayLog` indexes every mail whose frame lies past it and is
 *   not indexed (a crash between (1) and (2)). A transaction that fails (ENOSPC, EIO) is retried
 *   for such mail with a later group, and the checkpoint never passes it until it commits.
 *   Until then `get` and `readBody` of that id wait for its commit (up to a second); browse and
 *   stats show it once committed. A crash before (1) completes leaves at most a torn last frame,
 *   which `readFrames` stops at; nothing that was acknowledged can be missing or torn.
 * - Group commit: every write (enqueue, reserve, attempt, operator action) goes through one
 *   writer loop. While one group is being flushed, new requests queue; the next group takes all
 *   of them: one writev + one fdatasync for the bodies, one LMDB commit for everything. There is
 *   no timer: a lone request is flushed at once.
 * - Atomicity: a mail, its index entries and the counters change in one LMDB transaction. Every
 *   transition is computed by the pure functions of model.ts.
 * - Leases after a crash: on start every `active` mail's lease is given back (applyReleaseLease),
 *   because the process that held them is gone (the directory lock guarantees that); such mail is
 *   due at once. Leases of a running process lapse at `lease.until` and the mail is due again.
 * - Due order: priority (high first), then notBefore, then id; `lowPriorityShare` of the mails
 *   handed out go to the earliest due mail of a lower class while a higher class has due mail
 *   (a credit carried across calls, so it holds for limit=1 callers too).
 * - Storage errors: a failed body append is cut back, a failed LMDB commit is rolled back by LMDB;
 *   the callers of that group get SpoolFullError (ENOSPC, map full, maxSize) or
 *   QueueUnavailableError, and the next group tries again. No writemap: a full disk is an error
 *   code, never a SIGBUS.
 * - Finished mail: its body record goes in the same transaction that makes it terminal, and a
 *   segment file is deleted once none of its bodies is live; metadata stays `retainFinishedMs`,
 *   then is purged ('purged' event).
 * - `maxSize` bounds the LMDB map and, separately, the live body bytes in segments.
 * - A free-space floor (`minFreeBytes`, like Postfix's queue_minfree): new mail is refused while
 *   storing it would leave less than that free on the file system. What is left lets delivery,
 *   removals and the other transitions commit on a full disk (each LMDB transaction needs a few
 *   new pages), and removals then give the space back as segments go.
 */
import { mkdir, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import type { Logger } from '../../logger.js';
import { InvalidTransitionError, MailNotFoundError, QueueError, QueueUnavailableError, SpoolFullError, storageError } from '../errors.js';
import {
  AGE_BUCKETS_MINUTES, DueOrder, applyAttempt, applyHold, applyReleaseLease, applyRelease, applyRemove, applyRenewLease,
  applyBounce, applyRedirect, applyReserve, applyRetryNow, applySetNotBefore, applySetPriority, createMail, eventTypeFor, isTerminal, leaseValid,
  newLeaseToken,
} from '../model.js';
import type {
  AttemptResult, BrowseFilter, BrowseOptions, BrowsePage, EnqueueOptions, EnqueueRequest, Lease, MailId, MailState, Millis, Queue, QueueEvent,
  QueuedMail, QueueStats, ReserveOptions,
} from '../types.js';
import { MAIL_STATES } from '../types.js';
import { browseIndexed } from './browse.js';
import { BodyCache } from '../body-cache.js';
import { DirLock } from '../dir-lock.js';
import { HIGH, counterKeys, indexKeys, keyDiff, type IndexKey } from './indexes.js';
import { SegmentStore, comparePositions, type BodyLocation, type LogPosition } from './segments.js';

export interface SpoolQueueOptions {
  dir: string;
  retainFinishedMs: number;
  /** Upper bound of the LMDB map and of live body bytes, each. */
  maxSize: number;
  logger: Logger;
  now?: () => number;
  /**
   * A new segment file is started once the current one reaches this size. Default 16 MiB: small
   * enough that compaction (compactSegments) has little to copy when a few bodies outlive the rest.
   */
  segmentBytes?: number;
  /** Make the next segment ahead of time, zero-filled (see segments.ts). Default true. */
  preallocateSegments?: boolean;
  /** Memory for bodies of recently enqueued mail (read back by delivery without disk I/O). Default 32 MiB; 0 disables. */
  bodyCacheBytes?: number;
  /** How often finished mail past retention is purged. Default: retainFinishedMs/4, 1 s..60 s. */
  purgeIntervalMs?: number;
  /** New mail is refused (SpoolFullError) while storing it would leave less than this free. Default 0: no floor. */
  minFreeBytes?: number;
  /** How long new mail durable in its frame waits before its failed commit is tried again. Default 500 ms. */
  unindexedRetryMs?: number;
}

/** How often appendBodies measures the free space (with a floor), when far from it. */
const SPACE_MEASURE_MS = 250;
/** Counted per body on top of its bytes, for its metadata pages: the estimate of what is left errs low. */
const SPACE_PER_MAIL = 4096;

type BodyTuple = [seg: number, off: number, len: number];

interface WriteOp {
  /** Runs inside the write transaction; throws to fail only this op. */
  run(tx: WriteTx): unknown;
  /** Set for enqueues (and compaction copies): the body to append before the transaction. */
  body?: Buffer;
  /** Set for enqueues: the frame's record, from which replayLog enqueues the mail after a crash. */
  record?: Buffer;
  /** Called once the frame is on disk, before the transaction (see `enqueue`'s onDurable). */
  onDurable?: () => void;
  /** Where the body landed; set by the append (an op with a location is never appended again). */
  location?: BodyLocation;
  /** Where the op's frame starts in the segments (ops with a record). */
  frame?: LogPosition;
  /** Its indexing failed once already (logged then). */
  retried?: boolean;
  /** Called when it leaves `unindexed` (indexed, or found indexed already): get() waits for this. */
  indexed?: () => void;
  resolve(v: unknown): void;
  reject(err: unknown): void;
}

/** meta key of the write-ahead checkpoint: [segment, offset] of the first frame that may be unindexed. */
const CHECKPOINT_KEY: IndexKey = ['w'];
/** How long get() and readBody() of an id handed out by onDurable wait for it to be indexed. */
const INDEXING_WAIT_MS = 1000;
/** New mail due within this long of its enqueue keeps its body in the body cache (see enqueue). */
const BODY_CACHE_DUE_WITHIN_MS = 5_000;
/** Frames replayed per transaction after a crash. */
const REPLAY_BATCH = 500;

/** What a frame's record holds: the enqueue request without its body, and the spool's clock then. */
interface FrameRecord {
  v: 1;
  at: Millis;
  req: Omit<EnqueueRequest, 'body'>;
}

const ONE = Buffer.from([1]);
const EMPTY_BODY = Buffer.alloc(0);
/** Where the mails database keeps its shared record structures (never a mail id: ids are strings). */
const MAIL_STRUCTURES_KEY = Symbol.for('structures');
/** Below this much free space, an EIO from a write is taken for a full disk. */
const LOW_SPACE_BYTES = 8 * 1024 * 1024;

/**
 * lmdb-js rejects a failed commit with a generic error whose `commitError` promise rejects with
 * the real one (errno in `code`) a moment later; unobserved, that promise is an unhandled rejection.
 */
async function lmdbCommitCause(err: unknown): Promise<unknown> {
  const pending = (err as { commitError?: Promise<unknown> } | undefined)?.commitError;
  if (!pending || typeof pending.then !== 'function') return err;
  let timer: NodeJS.Timeout | undefined;
  const cause = await Promise.race([
    pending.then(() => err, (real: unknown) => real),
    new Promise<unknown>((res) => { timer = setTimeout(() => res(err), 1000); }),
  ]);
  clearTimeout(timer);
  const errno = (cause as { code?: unknown })?.code;
  // lmdb-js gives the errno as a number; name it like Node does.
  if (typeof errno === 'number') Object.assign(cause as object, { code: ERRNO_NAMES[errno] ?? errno });
  return cause;
}

const ERRNO_NAMES: Record<number, string> = { 5: 'EIO', 28: 'ENOSPC', 122: 'EDQUOT', 27: 'EFBIG', [-30792]: 'MDB_MAP_FULL' };
const STATS_TOP_N = 20;
const LIVE_STATES = ['queued', 'active', 'held'] as const;

/**
 * A counter key as a Map key, for the in-memory counters only (never stored). A counter key holds
 * a family tag, states, a priority, a domain or a segment number: none contains U+0001, and each
 * position always has the same type, so joining is as unique as JSON and several times cheaper.
 */
function counterId(key: IndexKey): string {
  return key.join('\u0001');
}

/** What one write transaction changes besides the records: counter deltas, events, freed segments. */
class WriteTx {
  readonly deltas = new Map<string, { key: IndexKey; delta: number }>();
  readonly events: QueueEvent[] = [];
  /** Leases taken, renewed (a Lease) or ended (undefined), applied to SpoolQueue.leases on commit. */
  readonly leases = new Map<MailId, Lease | undefined>();
  /** Bodies put in the body cache by this transaction: dropped again if it does not commit. */
  readonly cached: MailId[] = [];

  constructor(private readonly q: SpoolQueue, readonly now: Millis) {}

  count(key: IndexKey, delta: number): void {
    const k = counterId(key);
    const e = this.deltas.get(k);
    if (e) e.delta += delta;
    else this.deltas.set(k, { key, delta });
  }

  /** Persists `after` (replacing `before`), its indexes, counters and body bookkeeping. */
  write(before: QueuedMail | undefined, after: QueuedMail, opts: { body?: BodyLocation; event?: boolean } = {}): void {
    if (before === after) return;
    const q = this.q;
    q.mails.putSync(after.id, after);
    const diff = keyDiff(before ? indexKeys(before) : [], indexKeys(after));
    for (const k of diff.remove) q.ix.removeSync(k);
    for (const k of diff.add) q.ix.putSync(k, ONE);
    if (before) for (const k of counterKeys(before)) this.count(k, -1);
    for (const k of counterKeys(after)) this.count(k, +1);
    if (after.state === 'active' && after.lease) this.leases.set(after.id, after.lease);
    else if (before?.lease) this.leases.set(after.id, undefined);
    if (opts.body) {
      q.bodies.putSync(after.id, [opts.body.seg, opts.body.off, opts.body.len]);
      q.ix.putSync(bodyKey(after.id, opts.body), ONE);
      this.count(['c', 'seg', opts.body.seg], +1);
      this.count(['c', 'bytes'], opts.body.len);
    }
    if (isTerminal(after.state)) this.dropBody(after.id);
    if (opts.event !== false) this.events.push(eventOf(before, after, this.now));
  }

  dropBody(id: MailId): void {
    this.q.bodyCache.delete(id);
    const loc = this.q.bodies.get(id);
    if (!loc) return;
    this.q.bodies.removeSync(id);
    this.q.ix.removeSync(bodyKey(id, { seg: loc[0], off: loc[1], len: loc[2] }));
    this.count(['c', 'seg', loc[0]], -1);
    this.count(['c', 'bytes'], -loc[2]);
  }

  /** Points a live body at its copy (compaction); the old segment loses one live body. */
  moveBody(id: MailId, from: BodyLocation, to: BodyLocation): void {
    this.q.bodies.putSync(id, [to.seg, to.off, to.len]);
    this.q.ix.removeSync(bodyKey(id, from));
    this.q.ix.putSync(bodyKey(id, to), ONE);
    this.count(['c', 'seg', from.seg], -1);
    this.count(['c', 'seg', to.seg], +1);
  }

  /** Deletes a mail record entirely (purge). */
  purge(mail: QueuedMail): void {
    this.q.mails.removeSync(mail.id);
    for (const k of indexKeys(mail)) this.q.ix.removeSync(k);
    for (const k of counterKeys(mail)) this.count(k, -1);
    if (mail.lease) this.leases.set(mail.id, undefined);
    this.dropBody(mail.id);
    this.events.push({ type: 'purged', id: mail.id, state: mail.state, at: this.now });
  }
}

/** ix entry of a live body, by segment: ['B', seg, off, len, id] (what compaction scans). */
function bodyKey(id: MailId, loc: BodyLocation): IndexKey {
  return ['B', loc.seg, loc.off, loc.len, id];
}

/** A sealed segment is compacted when its live bodies are at most this share of its bytes... */
const COMPACT_LIVE_SHARE = 0.25;
/** ...and at most this many (so that looking at a segment stays cheap). */
const COMPACT_MAX_LIVE = 256;
/** Segments compacted per round (bounds the I/O of one round). */
const COMPACT_PER_ROUND = 8;
/** Bytes copied per write group during compaction. */
const COMPACT_CHUNK_BYTES = 4 * 1024 * 1024;

function eventOf(before: QueuedMail | undefined, after: QueuedMail, at: Millis): QueueEvent {
  const type = eventTypeFor(before, after);
  const ev: QueueEvent = { type, id: after.id, state: after.state, at };
  if (type === 'updated' || type === 'deferred' || type === 'enqueued') {
    ev.priority = after.priority;
    ev.notBefore = after.notBefore;
  }
  return ev;
}

export class SpoolQueue implements Queue {
  readonly backend = 'spool' as const;

  /** @internal LMDB handles, used by WriteTx and browse. */
  env!: RootDatabase;
  mails!: Database<QueuedMail, string>;
  bodies!: Database<BodyTuple, string>;
  ix!: Database<Buffer, IndexKey>;
  meta!: Database<number, IndexKey>;

  private readonly log: Logger;
  private readonly now: () => number;
  private readonly segments: SegmentStore;
  /** @internal Recently enqueued bodies (see body-cache.ts); WriteTx drops entries with their bodies. */
  readonly bodyCache: BodyCache;
  private lock?: DirLock;
  private readonly counters = new Map<string, number>();
  /**
   * The lease of each active mail as committed, so that checkLease (asked before every final "."
   * of DATA) needs no read and decoding of the record. Empty at start: releaseOrphanLeases ends
   * every lease a crash left, through WriteTx like any change.
   */
  private readonly leases = new Map<MailId, Lease>();
  /**
   * Lease.sending of the spool: final "."s in flight per active mail (commitDelivery), in memory
   * only (a crash ends every lease anyway). Dropped when the lease ends or changes hands.
   */
  private readonly sending = new Map<MailId, { token: string; n: number }>();
  /** The group whose transitions ran and whose commit is not settled yet (see commitDelivery). */
  private committingTx?: WriteTx;
  /** Non-terminal mail per recipient domain and per priority, kept with the counters. */
  private readonly liveByDomain = new Map<string, number>();
  private readonly liveByPriority = new Map<string, number>();
  private pending: WriteOp[] = [];
  /** Last measurement of the file system's free bytes, counted down by appendBodies (see freeSpace). */
  private space?: { at: number; free: number };
  /** The end of the last group appended to the segments. */
  private appendedEnd: LogPosition = { seg: 0, off: 0 };
  /** The write-ahead checkpoint as last committed (undefined before the first, on an older spool). */
  private checkpoint?: LogPosition;
  /** New mail whose frame is durable (and maybe acknowledged) but whose transaction has not committed; in append order. */
  private readonly unindexed = new Set<WriteOp>();
  /** Such mail of a group whose commit failed, tried again with a later group (retryTimer). */
  private readonly retry: WriteOp[] = [];
  private retryTimer?: NodeJS.Timeout;
  /** New mail given out by onDurable and not indexed yet, by id: resolves once it is (leaveUnindexed). */
  private readonly indexing = new Map<MailId, Promise<void>>();
  /** Set while replayLog runs: the checkpoint stays where it was until every frame is indexed. */
  private replayFrom?: LogPosition;
  /** Refusing new mail for the floor: logged once when it starts and once when it ends. */
  private belowFloor = false;
  private flushing?: Promise<void>;
  private open = false;
  private closing = false;
  private purgeTimer?: NodeJS.Timeout;
  private readonly listeners = new Set<(e: QueueEvent) => void>();
  /** Priority order with lowPriorityShare, its credit carried across calls. */
  private readonly dueOrder = new DueOrder();

  constructor(private readonly opts: SpoolQueueOptions) {
    this.log = opts.logger.child({ component: 'spool' });
    this.now = opts.now ?? Date.now;
    this.segments = new SegmentStore(opts.dir, opts.segmentBytes ?? 16 * 1024 * 1024, opts.preallocateSegments ?? true);
    this.bodyCache = new BodyCache(opts.bodyCacheBytes ?? 32 * 1024 * 1024);
  }

  // ---------------------------------------------------------------- lifecycle

  async start(): Promise<void> {
    const t0 = Date.now();
    await mkdir(this.opts.dir, { recursive: true });
    this.lock = await DirLock.acquire(this.opts.dir);
    try {
      this.env = open({
        path: join(this.opts.dir, 'meta.mdb'),
        maxDbs: 8,
        // Synchronous durability: a commit resolves once flushed, so acknowledging after it is safe.
        overlappingSync: false,
        noSync: false,
        // Never write through the map: on a full disk that would be a SIGBUS, not an error.
        useWritemap: false,
        mapSize: this.opts.maxSize,
        compression: false,
      });
      // Shared record structures (msgpackr): each record holds its values only, its keys are
      // stored once under the structures key. A record is half the size and is decoded 2-3 times
      // faster (spool-transitions: recordAttempt 57-61 vs 75-97 µs a mail). Records written
      // before, as plain maps, still read. msgpackr shares at most 32 shapes (its default, kept:
      // more switches to two-byte record ids); a rarer shape carries its keys in each record.
      // See forgetUnsavedStructures for a failed commit.
      this.mails = this.env.openDB<QueuedMail, string>('mails', { encoding: 'msgpack', sharedStructuresKey: MAIL_STRUCTURES_KEY });
      this.bodies = this.env.openDB<BodyTuple, string>('bodies', { encoding: 'msgpack' });
      this.ix = this.env.openDB<Buffer, IndexKey>('ix', { encoding: 'binary' });
      this.meta = this.env.openDB<number, IndexKey>('meta', { encoding: 'msgpack' });
      const tOpen = Date.now();
      this.loadCounters();
      const found = await this.segments.open();
      this.appendedEnd = this.segments.end;
      this.checkpoint = this.readCheckpoint();
      this.open = true;
      // Before reclaiming: a segment whose mail is only in its frames has no live body yet.
      const replayed = await this.replayLog(found);
      await this.reclaimSegments(found);
      const tSegments = Date.now();
      const released = await this.releaseOrphanLeases();
      await this.ensureBodyIndex();
      this.schedulePurge();
      this.log.info({
        ms: Date.now() - t0, lockAndOpenMs: tOpen - t0, countersAndSegmentsMs: tSegments - tOpen, leasesMs: Date.now() - tSegments,
        mails: this.totalMails(), segments: found.length, releasedLeases: released, replayedFromLog: replayed,
      }, 'spool opened');
    } catch (err) {
      this.open = false;
      await this.segments.close().catch(() => undefined);
      if (this.env) await this.env.close().catch(() => undefined);
      await this.lock.release();
      throw err instanceof QueueError ? err : storageError(err);
    }
  }

  async close(): Promise<void> {
    if (!this.open || this.closing) return;
    this.closing = true;
    if (this.purgeTimer) clearTimeout(this.purgeTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    while (this.flushing) await this.flushing;
    // Durable in their frames, not indexed (commits kept failing): the next start replays them.
    if (this.retry.length) this.log.warn({ mails: this.retry.splice(0).length }, 'spool closed with new mail durable but not indexed; the next start indexes it from its segment');
    this.open = false;
    this.bodyCache.clear();
    await this.segments.close();
    await this.env.close();
    await this.lock?.release();
    this.listeners.clear();
    this.log.info('spool closed');
  }

  private loadCounters(): void {
    for (const { key, value } of this.meta.getRange({ start: ['c'], end: ['c', HIGH] })) {
      this.applyCounter(key, value);
    }
  }

  /** Adds to an in-memory counter (and the per-domain / per-priority views stats() reads). */
  private applyCounter(key: IndexKey, delta: number): number {
    const k = counterId(key);
    const v = (this.counters.get(k) ?? 0) + delta;
    if (v === 0) this.counters.delete(k);
    else this.counters.set(k, v);
    const live = (key[1] === 'dd' && !isTerminal(key[3] as MailState)) ? { map: this.liveByDomain, name: String(key[2]) }
      : (key[1] === 'sp' && !isTerminal(key[2] as MailState)) ? { map: this.liveByPriority, name: String(key[3]) } : undefined;
    if (live) {
      const n = (live.map.get(live.name) ?? 0) + delta;
      if (n === 0) live.map.delete(live.name);
      else live.map.set(live.name, n);
    }
    return v;
  }

  private counter(key: IndexKey): number {
    return this.counters.get(counterId(key)) ?? 0;
  }

  private totalMails(): number {
    return MAIL_STATES.reduce((n, s) => n + this.counter(['c', 's', s]), 0);
  }

  /** Deletes segment files with no live body (left by finished mail or by a crash). */
  private async reclaimSegments(segs: number[]): Promise<void> {
    for (const seg of segs) {
      if (this.counter(['c', 'seg', seg]) > 0) continue;
      // New mail durable in its frame but not indexed yet (its commit failed and waits for a
      // retry) is not counted: its segment stays.
      if (this.holdsUnindexed(seg)) continue;
      if (await this.segments.remove(seg)) this.log.debug({ seg }, 'segment reclaimed');
    }
  }

  /** Spools made before the ['B'] body index get it built once, so their segments can be compacted. */
  private async ensureBodyIndex(): Promise<void> {
    const marker: IndexKey = ['v', 'bodyIndex'];
    if (this.meta.get(marker)) return;
    let start: string | undefined;
    for (;;) {
      const batch = [...this.bodies.getRange({ ...(start === undefined ? {} : { start }), limit: 5000 })]
        .filter(({ key }) => key !== start);
      if (!batch.length) break;
      await this.submit({ run: () => { for (const { key, value } of batch) this.ix.putSync(bodyKey(key, { seg: value[0], off: value[1], len: value[2] }), ONE); } });
      start = batch[batch.length - 1]!.key;
    }
    await this.submit({ run: () => this.meta.putSync(marker, 1) });
  }

  /**
   * Moves the live bodies out of sealed segments that are mostly dead (at most COMPACT_LIVE_SHARE
   * of their bytes and COMPACT_MAX_LIVE bodies still live), so one long-deferred mail does not
   * pin a whole segment file. Each copy is appended and synced like a new body before the
   * metadata points at it, and only if the mail still uses the old copy at that moment; the old
   * file is deleted once it has no live body. Returns how many segments were emptied.
   */
  async compactSegments(): Promise<number> {
    this.assertOpen();
    let emptied = 0;
    for (const seg of (await this.segments.list()).sort((a, b) => a - b)) {
      if (emptied >= COMPACT_PER_ROUND || !this.open || this.closing) break;
      if (seg >= this.segments.currentId) continue;
      const live = this.counter(['c', 'seg', seg]);
      if (live === 0) {
        await this.reclaimSegments([seg]);
        continue;
      }
      if (live > COMPACT_MAX_LIVE) continue;
      const bodies = [...this.ix.getKeys({ start: ['B', seg], end: ['B', seg, HIGH] })]
        .map((k) => ({ id: String(k[4]), loc: { seg, off: Number(k[2]), len: Number(k[3]) } }));
      const liveBytes = bodies.reduce((n, b) => n + b.loc.len, 0);
      const size = await this.segments.size(seg);
      if (size === 0 || liveBytes > size * COMPACT_LIVE_SHARE) continue;
      for (let i = 0; i < bodies.length;) {
        const chunk: typeof bodies = [];
        let bytes = 0;
        while (i < bodies.length && (chunk.length === 0 || bytes + bodies[i]!.loc.len <= COMPACT_CHUNK_BYTES)) {
          bytes += bodies[i]!.loc.len;
          chunk.push(bodies[i++]!);
        }
        await Promise.all(chunk.map(async ({ id, loc }) => {
          let copy: Buffer;
          try {
            copy = await this.segments.readAt(id, loc);
          } catch (err) {
            if (err instanceof MailNotFoundError) return; // finished meanwhile, segment already gone
            throw err;
          }
          const op: Omit<WriteOp, 'resolve' | 'reject'> = {
            body: copy,
            run: (tx) => {
              const now = this.bodies.get(id);
              // Finished, or moved, since it was read: the copy is garbage in the current segment.
              if (!now || now[0] !== loc.seg || now[1] !== loc.off) return false;
              tx.moveBody(id, loc, op.location!);
              return true;
            },
          };
          await this.submit<boolean>(op);
        }));
      }
      if (this.counter(['c', 'seg', seg]) === 0) {
        // The writer reclaims a segment after the commit that emptied it, but after that commit's
        // ops have resolved: delete it here too (a no-op if that was first), so that a segment
        // counted as emptied is gone when this returns.
        await this.reclaimSegments([seg]);
        emptied++;
        this.log.info({ seg, moved: bodies.length, liveBytes, segmentBytes: size }, 'segment compacted');
      }
    }
    return emptied;
  }

  /** The previous owner of the directory is gone: its leases can never be used again. */
  private async releaseOrphanLeases(): Promise<number> {
    let total = 0;
    for (;;) {
      const keys = [...this.ix.getKeys({ start: ['a'], end: ['a', HIGH], limit: 1000 })];
      if (!keys.length) return total;
      total += keys.length;
      await this.submit({
        run: (tx) => {
          for (const key of keys) {
            const mail = this.mails.get(String(key[2]));
            if (mail?.state === 'active' && mail.lease) {
              // A spool written before active mail was indexed as queued (indexes.ts) has its
              // state-keyed entries under 'active': they are moved to 'queued' first (a no-op for
              // mail reserved by this version), then the release changes q/a as usual.
              const legacy = keyDiff(indexKeys(mail, true), indexKeys(mail));
              for (const k of legacy.remove) this.ix.removeSync(k);
              for (const k of legacy.add) this.ix.putSync(k, ONE);
              tx.write(mail, applyReleaseLease(mail, mail.lease.token, tx.now), { event: false });
            }
            // An entry that does not match its mail would otherwise be visited forever.
            if (this.ix.get(key)) this.ix.removeSync(key);
          }
        },
      });
    }
  }

  // ---------------------------------------------------------------- the writer

  private submit<T>(op: Omit<WriteOp, 'resolve' | 'reject'>): Promise<T> {
    if (!this.open) return Promise.reject(new QueueUnavailableError('Spool is not open'));
    return new Promise<T>((resolve, reject) => {
      // The op object itself is queued (not a copy): the writer fills in `location` for its run().
      const queued = op as WriteOp;
      queued.resolve = resolve as (v: unknown) => void;
      queued.reject = reject;
      this.pending.push(queued);
      if (!this.flushing) this.flushing = this.flushLoop();
    });
  }

  /**
   * Two stages, overlapped: while group N's LMDB transaction commits (with its sync), group N+1's
   * bodies are written and fdatasync'ed. A group's transaction is only queued once the previous
   * one has committed, so it never sees (or builds on) writes that might still roll back; a
   * group's bodies are always on disk before its transaction references them.
   */
  private async flushLoop(): Promise<void> {
    // Let requests made in the same tick join the first group.
    await Promise.resolve();
    let committing: Promise<void> | undefined;
    try {
      while (this.pending.length) {
        const group = this.pending;
        this.pending = [];
        const t0 = performance.now();
        const ops = await this.appendBodies(group);
        const appendMs = performance.now() - t0;
        if (committing) await committing;
        committing = ops.length ? this.commitGroup(ops, appendMs).catch((err: unknown) => this.failGroup(ops, err)) : undefined;
        // Nothing new arrived during the append: wait for this commit (arrivals gather meanwhile).
        if (committing && !this.pending.length) {
          await committing;
          committing = undefined;
        }
      }
    } finally {
      if (committing) await committing;
      this.flushing = undefined;
    }
  }

  /** A bug of ours while committing: every op of the group not settled yet fails (settled ones stay). */
  private failGroup(ops: WriteOp[], err: unknown): void {
    this.committingTx = undefined;
    this.forgetUnsavedStructures();
    this.log.error({ err, ops: ops.length }, 'spool group failed unexpectedly');
    const failure = err instanceof QueueError ? err : new QueueUnavailableError(`Spool write failed: ${(err as Error)?.message ?? String(err)}`);
    for (const op of ops) {
      op.reject(failure);
      if (this.unindexed.has(op)) this.retryLater(op);
    }
  }

  /**
   * New mail that is durable in its frame (its sender may have its 250) but whose transaction did
   * not commit is not given up: its enqueue rejects (the caller was told it is durable already),
   * and it joins a later group until it commits; the checkpoint stays before its frame until
   * then, so a crash meanwhile replays it.
   */
  private retryLater(op: WriteOp): void {
    this.retry.push(op);
    if (this.retryTimer || this.closing) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.open || !this.retry.length) return;
      this.pending.unshift(...this.retry.splice(0));
      if (!this.flushing) this.flushing = this.flushLoop();
    }, this.opts.unindexedRetryMs ?? 500);
    this.retryTimer.unref();
  }

  /**
   * Durable new mail whose transaction did not index it: given up only when its own run refused
   * it as a duplicate (its id is indexed already); any other failure (the commit's, or a write
   * inside its run such as a full map) is tried again.
   */
  private settleUnindexed(op: WriteOp, own: unknown): void {
    if (own instanceof InvalidTransitionError) {
      this.leaveUnindexed(op);
      return;
    }
    if (own !== undefined && !op.retried) this.log.error({ err: own, seg: op.frame?.seg, off: op.frame?.off }, 'indexing a durable new mail failed; trying again');
    op.retried = true;
    this.retryLater(op);
  }

  private leaveUnindexed(op: WriteOp): void {
    if (!this.unindexed.delete(op)) return;
    op.indexed?.();
  }

  private holdsUnindexed(seg: number): boolean {
    for (const op of this.unindexed) if (op.location?.seg === seg) return true;
    return false;
  }

  private readCheckpoint(): LogPosition | undefined {
    const v = this.meta.get(CHECKPOINT_KEY) as unknown;
    return Array.isArray(v) && v.length === 2 ? { seg: Number(v[0]), off: Number(v[1]) } : undefined;
  }

  /**
   * The checkpoint a transaction commits: the frame of the oldest new mail that stays unindexed
   * after it (appended meanwhile, or waiting to be tried again), else the end of what was appended.
   * Every frame before it is indexed; replayLog reads from there.
   */
  private checkpointAfter(ops: ReadonlySet<WriteOp>): LogPosition {
    // While replayLog runs, frames it has not indexed yet lie past the checkpoint it started from.
    if (this.replayFrom) return this.replayFrom;
    for (const op of this.unindexed) if (!ops.has(op)) return op.frame!;
    return this.appendedEnd;
  }

  /**
   * After a crash: enqueues the mail whose frames are past the checkpoint and that is not indexed
   * (durable, maybe acknowledged, its transaction cut by the crash). Frames of segments written
   * before frames existed are never read: such a spool has no checkpoint yet.
   */
  private async replayLog(found: number[]): Promise<number> {
    const from = this.checkpoint;
    if (!from) return 0;
    this.replayFrom = from;
    try {
      return await this.replayFrames(found, from);
    } finally {
      this.replayFrom = undefined;
    }
  }

  private async replayFrames(found: number[], from: LogPosition): Promise<number> {
    let ops: Omit<WriteOp, 'resolve' | 'reject'>[] = [];
    let replayed = 0;
    const flush = async () => {
      const batch = ops;
      ops = [];
      const results = await Promise.all(batch.map((op) => this.submit<boolean>(op)));
      replayed += results.filter(Boolean).length;
    };
    for (const seg of found.filter((s) => s >= from.seg).sort((a, b) => a - b)) {
      for (const frame of await this.segments.readFrames(seg, seg === from.seg ? from.off : 0)) {
        if (!frame.record) continue;
        let rec: FrameRecord;
        try {
          rec = JSON.parse(frame.record.toString('utf8')) as FrameRecord;
        } catch (err) {
          this.log.error({ err, seg, off: frame.start.off }, 'unreadable mail record in a segment frame; skipped');
          continue;
        }
        ops.push({
          location: frame.body,
          run: (tx) => {
            // Indexed after the checkpoint was written (a group committed after an older one failed).
            if (this.mails.get(rec.req.id)) return false;
            tx.write(undefined, { ...createMail({ ...rec.req, body: EMPTY_BODY }, rec.at), size: frame.body.len }, { body: frame.body });
            return true;
          },
        });
        if (ops.length >= REPLAY_BATCH) await flush();
      }
    }
    await flush();
    if (replayed) this.log.warn({ mails: replayed }, 'spool: new mail durable in its segment but not indexed at the crash was indexed again from the log');
    return replayed;
  }

  /**
   * After a transaction that did not commit. When a record of a new shape is written, lmdb-js
   * stores the new structure inside that same transaction and msgpackr counts it as stored from
   * then on; had the commit failed, later records of that shape would refer to a structure that
   * is not on disk and could not be read after a restart. So the encoder reloads the structures
   * from disk before its next record (and stores that shape again when it meets it).
   */
  private forgetUnsavedStructures(): void {
    const structures = (this.mails as unknown as { encoder?: { structures?: { uninitialized?: boolean } } }).encoder?.structures;
    if (structures) structures.uninitialized = true;
  }

  /** Commits one group's records in one LMDB transaction and settles each op. */
  private async commitGroup(ops: WriteOp[], appendMs: number): Promise<void> {
    const t1 = performance.now();
    const tx = new WriteTx(this, this.now());
    this.committingTx = tx;
    const results: { ok: boolean; value: unknown }[] = [];
    let tcb0 = 0;
    let tcb1 = 0;
    let checkpoint: LogPosition | undefined;
    try {
      const committed = this.env.transaction(() => {
        tcb0 = performance.now();
        for (const op of ops) {
          try {
            results.push({ ok: true, value: op.run(tx) });
          } catch (err) {
            results.push({ ok: false, value: err });
          }
        }
        for (const { key, delta } of tx.deltas.values()) {
          if (delta === 0) continue;
          const v = this.counter(key) + delta;
          if (v === 0) this.meta.removeSync(key);
          else this.meta.putSync(key, v);
        }
        // Computed here, not before: a group appended while this one waited is unindexed too.
        checkpoint = this.checkpointAfter(new Set(ops));
        if (!this.checkpoint || comparePositions(checkpoint, this.checkpoint) !== 0) {
          // The one meta entry that is not a counter.
          (this.meta as unknown as Database<number[], IndexKey>).putSync(CHECKPOINT_KEY, [checkpoint.seg, checkpoint.off]);
        }
        // lmdb-js keeps its own promise for this commit (awaited by env.close()); it exists only
        // once the transaction runs. Without a handler a failed commit would also surface as an
        // unhandled rejection; the failure itself is handled below, through `committed`.
        this.env.committed.then(undefined, () => undefined);
        tcb1 = performance.now();
      });
      await committed;
      this.log.trace({ ops: ops.length, appendMs: Math.round(appendMs), commitMs: Math.round(performance.now() - t1), waitMs: Math.round(tcb0 - t1), callbackMs: Math.round(tcb1 - tcb0) }, 'spool group committed');
    } catch (err) {
      this.forgetUnsavedStructures();
      for (const id of tx.cached) this.bodyCache.delete(id);
      this.committingTx = undefined;
      const mapped = await this.mapStorageError(await lmdbCommitCause(err));
      this.log.error({ err: mapped.cause ?? err, ops: ops.length }, 'spool commit failed');
      for (const [i, op] of ops.entries()) {
        const own = results[i] && !results[i].ok ? results[i].value : undefined;
        op.reject(own ?? mapped);
        if (this.unindexed.has(op)) this.settleUnindexed(op, own);
      }
      return;
    }
    this.checkpoint = checkpoint;
    this.committingTx = undefined;
    for (const [id, lease] of tx.leases) {
      if (lease) this.leases.set(id, lease);
      else this.leases.delete(id);
      if (lease?.token !== this.sending.get(id)?.token) this.sending.delete(id);
    }
    const freed: number[] = [];
    for (const { key, delta } of tx.deltas.values()) {
      const v = this.applyCounter(key, delta);
      if (key[1] === 'seg' && v === 0) freed.push(Number(key[2]));
    }
    for (const [i, op] of ops.entries()) {
      const r = results[i]!;
      if (r.ok) {
        this.leaveUnindexed(op);
        op.resolve(r.value);
      } else {
        op.reject(r.value);
        if (this.unindexed.has(op)) this.settleUnindexed(op, r.value);
      }
    }
    this.emit(tx.events);
    if (freed.length) await this.reclaimSegments(freed).catch((err) => this.log.error({ err }, 'segment reclaim failed'));
  }

  /**
   * Appends the bodies of the group's enqueues in one write + fdatasync; returns the ops to commit.
   * Refuses (SpoolFullError) what would pass `maxSize` or leave less than `minFreeBytes` free.
   */
  private async appendBodies(group: WriteOp[]): Promise<WriteOp[]> {
    // A retried op keeps the body it appended (`location`).
    const enqueues = group.filter((op) => op.body && !op.location);
    if (!enqueues.length) return group;
    let room = this.opts.maxSize - this.counter(['c', 'bytes']);
    const floor = this.opts.minFreeBytes ?? 0;
    const space = floor > 0 ? await this.freeSpace(floor) : undefined;
    const accepted: WriteOp[] = [];
    const refused = new Set<WriteOp>();
    for (const op of enqueues) {
      const len = op.body!.length;
      if (len > room) {
        refused.add(op);
        op.reject(new SpoolFullError('Spool size limit reached'));
      } else if (space && space.free - len - SPACE_PER_MAIL < floor) {
        refused.add(op);
        op.reject(new SpoolFullError('Insufficient system storage'));
        if (!this.belowFloor) this.log.warn({ freeBytes: space.free, minFreeBytes: floor }, 'spool file system below spool.minFree: new mail refused (452 4.3.1) until space returns');
        this.belowFloor = true;
      } else {
        if (this.belowFloor && space) this.log.info({ freeBytes: space.free, minFreeBytes: floor }, 'spool file system above spool.minFree again: new mail accepted');
        this.belowFloor = false;
        room -= len;
        if (space) space.free -= len + SPACE_PER_MAIL;
        accepted.push(op);
      }
    }
    if (accepted.length) {
      try {
        const { locations, starts, end } = await this.segments.appendGroup(accepted.map((op) => ({ body: op.body!, ...(op.record ? { record: op.record } : {}) })));
        // In one synchronous step with appendedEnd (see checkpointAfter).
        this.appendedEnd = end;
        accepted.forEach((op, i) => {
          op.location = locations[i];
          if (!op.record) return;
          op.frame = starts[i];
          this.unindexed.add(op);
        });
      } catch (err) {
        const mapped = await this.mapStorageError(err);
        this.log.error({ err, count: accepted.length }, 'spool body append failed');
        for (const op of accepted) { refused.add(op); op.reject(mapped); }
        await this.rollSegmentAfterError();
      }
      for (const op of accepted) {
        if (refused.has(op) || !op.onDurable) continue;
        try {
          op.onDurable();
        } catch (err) {
          this.log.error({ err }, 'onDurable callback threw');
        }
      }
    }
    return group.filter((op) => !refused.has(op));
  }

  /**
   * The file system's free bytes: measured every SPACE_MEASURE_MS, and for every group once within
   * `floor` (or 8 MiB) of the floor; counted down by appendBodies in between. A failed statfs counts
   * as plenty (the write itself will then tell).
   */
  private async freeSpace(floor: number): Promise<{ at: number; free: number }> {
    const now = performance.now();
    const near = this.space && this.space.free - floor < Math.max(floor, 8 * 1024 * 1024);
    if (!this.space || near || now - this.space.at > SPACE_MEASURE_MS) {
      let free = Number.MAX_SAFE_INTEGER;
      try {
        const st = await statfs(this.opts.dir);
        free = st.bavail * st.bsize;
      } catch (err) {
        this.log.warn({ err }, 'statfs of the spool directory failed');
      }
      this.space = { at: now, free };
    }
    return this.space;
  }

  /**
   * storageError(), plus: LMDB reports a short write on a full disk as EIO, so an EIO while the
   * file system has (almost) no room left is reported as SpoolFullError (452, try later).
   */
  private async mapStorageError(err: unknown): Promise<QueueError> {
    const mapped = storageError(err);
    if (mapped instanceof SpoolFullError || (err as NodeJS.ErrnoException)?.code !== 'EIO') return mapped;
    try {
      const fs = await statfs(this.opts.dir);
      if (fs.bavail * fs.bsize < LOW_SPACE_BYTES) return new SpoolFullError('Insufficient system storage', err);
    } catch {
      // statfs failing too: report the original error.
    }
    return mapped;
  }

  /** After a failed append the current segment may be in doubt (EIO): start a new one if we can. */
  private async rollSegmentAfterError(): Promise<void> {
    try {
      await this.segments.roll();
    } catch {
      // Still failing (disk full): keep the current segment, which was cut back; retry next time.
    }
  }

  private emit(events: QueueEvent[]): void {
    for (const e of events) {
      for (const l of this.listeners) {
        try {
          l(e);
        } catch (err) {
          this.log.error({ err, mailId: e.id }, 'queue event listener threw');
        }
      }
    }
  }

  // ---------------------------------------------------------------- writes

  async enqueue(req: EnqueueRequest, opts: EnqueueOptions = {}): Promise<QueuedMail> {
    const at = this.now();
    const { body, ...rest } = req;
    // Only a caller that acts on onDurable needs the mail replayable from its frame; for the
    // others a crash before the commit loses nothing they were told was stored.
    const durable = opts.onDurable ? { onDurable: opts.onDurable, record: Buffer.from(JSON.stringify({ v: 1, at, req: rest } satisfies FrameRecord)) } : {};
    const op: Omit<WriteOp, 'resolve' | 'reject'> = {
      body,
      ...durable,
      run: (tx) => {
        const existing = this.mails.get(req.id);
        if (existing) throw new InvalidTransitionError(req.id, existing.state, 'enqueue again');
        // The time of the frame's record, so that a mail indexed again by replayLog is the same.
        const mail = createMail(req, at);
        tx.write(undefined, mail, { body: op.location });
        // Before any event about it; dropped again by commitGroup if the commit fails, so a body
        // in the cache is always one of a stored mail. Only mail due now: held or delayed mail
        // would push out the bodies delivery is about to read, for a read minutes away or never.
        if (!req.hold && req.notBefore - at <= BODY_CACHE_DUE_WITHIN_MS) {
          this.bodyCache.put(mail.id, body);
          tx.cached.push(mail.id);
        }
        return mail;
      },
    };
    if (opts.onDurable) {
      // Its id is given out at onDurable (the 250 names it): get() and readBody() wait until it is
      // indexed, through a failed commit and its retries too.
      let release!: () => void;
      this.indexing.set(req.id, new Promise<void>((r) => { release = r; }));
      op.indexed = () => {
        this.indexing.delete(req.id);
        release();
      };
    }
    const done = this.submit<QueuedMail>(op);
    // Refused before it was durable: never indexed, nothing to wait for.
    if (op.indexed) done.catch(() => { if (!op.frame) op.indexed!(); });
    const mail = await done;
    this.log.debug({ mailId: mail.id, size: mail.size }, 'mail spooled');
    return mail;
  }

  async reserveDue(o: ReserveOptions): Promise<QueuedMail[]> {
    if (o.limit <= 0) return [];
    return this.submit<QueuedMail[]>({ run: (tx) => this.reserveIn(tx, o) });
  }

  private reserveIn(tx: WriteTx, o: ReserveOptions): QueuedMail[] {
    const now = o.now ?? tx.now;
    const classes = this.dueByClass(now, o.limit);
    const out: QueuedMail[] = [];
    while (out.length < o.limit) {
      const pick = this.dueOrder.next(classes, o.lowPriorityShare, (a, b) => cmpDue(a, b) < 0);
      if (!pick) break;
      const mail = this.mails.get(pick.id);
      if (!mail) continue;
      let after: QueuedMail;
      try {
        after = applyReserve(mail, o.owner, newLeaseToken(), o.leaseMs, now);
      } catch {
        continue;
      }
      tx.write(mail, after);
      out.push(after);
    }
    return out;
  }

  /** Due mail per priority class (high first), each sorted by notBefore, at most `limit` per class. */
  private dueByClass(now: Millis, limit: number): { priority: number; items: DueItem[] }[] {
    const byClass = new Map<number, DueItem[]>();
    // Queued: walk the due index class by class, skipping the not-yet-due tail of each class.
    let start: IndexKey = ['q'];
    for (;;) {
      const first = [...this.ix.getKeys({ start, end: ['q', HIGH], limit: 1, exclusiveStart: start.length > 1 })][0];
      if (!first) break;
      const negPrio = first[1] as number;
      const items: DueItem[] = [];
      for (const k of this.ix.getKeys({ start: ['q', negPrio], end: ['q', negPrio, now, HIGH], limit })) {
        items.push({ priority: -negPrio, notBefore: k[2] as number, id: String(k[3]) });
      }
      if (items.length) byClass.set(-negPrio, items);
      start = ['q', negPrio, HIGH];
    }
    // Active with a lapsed lease: due again, in their class at their notBefore.
    for (const k of this.ix.getKeys({ start: ['a'], end: ['a', now, HIGH], limit })) {
      const m = this.mails.get(String(k[2]));
      if (!m) continue;
      const list = byClass.get(m.priority) ?? [];
      list.push({ priority: m.priority, notBefore: m.notBefore, id: m.id });
      byClass.set(m.priority, list);
    }
    return [...byClass.entries()]
      .sort((a, b) => b[0] - a[0])
      .map(([priority, items]) => ({ priority, items: items.sort(cmpDue) }));
  }

  async nextDueAt(): Promise<Millis | undefined> {
    this.assertOpen();
    let best: number | undefined;
    let start: IndexKey = ['q'];
    for (;;) {
      const first = [...this.ix.getKeys({ start, end: ['q', HIGH], limit: 1, exclusiveStart: start.length > 1 })][0];
      if (!first) break;
      const nb = first[2] as number;
      if (best === undefined || nb < best) best = nb;
      start = ['q', first[1] as number, HIGH];
    }
    return best;
  }

  async renewLease(id: MailId, token: string, leaseMs: number): Promise<boolean> {
    return this.submit<boolean>({
      run: (tx) => {
        const mail = this.mails.get(id);
        if (!mail || !leaseValid(mail, token, tx.now)) return false;
        // A renewal is not an operator-visible change: no event.
        tx.write(mail, applyRenewLease(mail, token, leaseMs, tx.now), { event: false });
        return true;
      },
    });
  }

  async checkLease(id: MailId, token: string): Promise<boolean> {
    this.assertOpen();
    return this.leaseHeld(id, token);
  }

  private leaseHeld(id: MailId, token: string): boolean {
    const lease = this.leases.get(id);
    return lease !== undefined && lease.token === token && lease.until > this.now();
  }

  /**
   * Synchronous (no await), so no commit lands in between: false when the committed lease is not
   * this one, or when the group committing now ends it (a hold or removal whose transition ran, not
   * yet on disk); otherwise marked, and a hold or removal that runs later sees the mark (stop).
   */
  async commitDelivery(id: MailId, token: string): Promise<boolean> {
    this.assertOpen();
    if (!this.leaseHeld(id, token)) return false;
    const tx = this.committingTx;
    if (tx?.leases.has(id) && tx.leases.get(id)?.token !== token) return false;
    const mark = this.sending.get(id);
    if (mark?.token === token) mark.n++;
    else this.sending.set(id, { token, n: 1 });
    return true;
  }

  async settleDelivery(id: MailId, token: string): Promise<void> {
    const mark = this.sending.get(id);
    if (mark?.token !== token) return;
    if (--mark.n === 0) this.sending.delete(id);
  }

  /**
   * A hold or removal: the model judges the mail with Lease.sending from memory (and refuses while
   * a final "." is in flight); what is stored is the change of the mail without the mark.
   */
  private stop(id: MailId, transition: (mail: QueuedMail, now: Millis) => QueuedMail): Promise<QueuedMail> {
    return this.change(id, (mail, now) => {
      const mark = this.sending.get(mail.id);
      if (mark && mail.lease?.token === mark.token) transition({ ...mail, lease: { ...mail.lease, sending: mark.n } }, now);
      return transition(mail, now);
    });
  }

  async recordAttempt(id: MailId, token: string, result: AttemptResult): Promise<QueuedMail> {
    return this.change(id, (mail, now) => applyAttempt(mail, token, result, result.now ?? now));
  }

  async releaseLease(id: MailId, token: string): Promise<void> {
    await this.change(id, (mail, now) => applyReleaseLease(mail, token, now));
  }

  hold(id: MailId, reason?: string): Promise<QueuedMail> {
    return this.stop(id, (m, now) => applyHold(m, reason, now));
  }

  release(id: MailId): Promise<QueuedMail> {
    return this.change(id, (m, now) => applyRelease(m, now));
  }

  remove(id: MailId, reason?: string): Promise<QueuedMail> {
    return this.stop(id, (m, now) => applyRemove(m, reason, now));
  }

  bounce(id: MailId, reason?: string, recipients?: string[]): Promise<QueuedMail> {
    return this.change(id, (m, now) => applyBounce(m, reason, now, recipients));
  }

  redirect(id: MailId, from: string, to: string): Promise<QueuedMail> {
    return this.change(id, (m, now) => applyRedirect(m, from, to, now));
  }

  retryNow(id: MailId): Promise<QueuedMail> {
    return this.change(id, (m, now) => applyRetryNow(m, now));
  }

  setPriority(id: MailId, priority: number): Promise<QueuedMail> {
    return this.change(id, (m, now) => applySetPriority(m, priority, now));
  }

  setNotBefore(id: MailId, notBefore: Millis): Promise<QueuedMail> {
    return this.change(id, (m, now) => applySetNotBefore(m, notBefore, now));
  }

  /** Loads a mail inside the write transaction, applies one model transition, stores the result. */
  private change(id: MailId, transition: (mail: QueuedMail, now: Millis) => QueuedMail): Promise<QueuedMail> {
    return this.submit<QueuedMail>({
      run: (tx) => {
        const mail = this.mails.get(id);
        if (!mail) throw new MailNotFoundError(id);
        const after = transition(mail, tx.now);
        tx.write(mail, after);
        return after;
      },
    });
  }

  // ---------------------------------------------------------------- reads

  async get(id: MailId): Promise<QueuedMail | undefined> {
    this.assertOpen();
    await this.untilIndexed(id);
    return this.mails.get(id);
  }

  /**
   * A mail handed out by onDurable and not indexed yet: wait for it, at most INDEXING_WAIT_MS (its
   * commit is a millisecond away, unless the disk is full and it waits for a retry).
   */
  private async untilIndexed(id: MailId): Promise<void> {
    const indexing = this.indexing.get(id);
    if (!indexing) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([indexing, new Promise<void>((r) => { timer = setTimeout(r, INDEXING_WAIT_MS); })]);
    clearTimeout(timer);
  }

  async readBody(id: MailId): Promise<NodeJS.ReadableStream> {
    this.assertOpen();
    await this.untilIndexed(id);
    // A cached body is one of a stored mail (see enqueue) that still has it (dropBody).
    const cached = this.bodyCache.stream(id);
    if (cached) return cached;
    const loc = this.bodies.get(id);
    if (!loc) throw new MailNotFoundError(id);
    try {
      return await this.segments.openBody(id, { seg: loc[0], off: loc[1], len: loc[2] });
    } catch (err) {
      // Compaction may have moved the body and deleted its old segment between the two reads.
      const moved = this.bodies.get(id);
      if (!(err instanceof MailNotFoundError) || !moved || moved[0] === loc[0]) throw err;
      return this.segments.openBody(id, { seg: moved[0], off: moved[1], len: moved[2] });
    }
  }

  async browse(filter: BrowseFilter, opts: BrowseOptions = {}): Promise<BrowsePage> {
    this.assertOpen();
    return browseIndexed({ ix: this.ix, mails: this.mails, counter: (k) => this.counter(k) }, filter, opts);
  }

  async stats(o: { now?: Millis; topN?: number } = {}): Promise<QueueStats> {
    this.assertOpen();
    const now = o.now ?? this.now();
    const topN = o.topN ?? STATS_TOP_N;
    const byState = Object.fromEntries(MAIL_STATES.map((s) => [s, this.counter(['c', 's', s])])) as Record<MailState, number>;
    const byPriority = Object.fromEntries(this.liveByPriority);
    const byDomain = this.liveByDomain;
    const top = [...byDomain.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, topN);
    let oldestReceivedAt: number | undefined;
    for (const s of LIVE_STATES) {
      const k = [...this.ix.getKeys({ start: ['s', s], end: ['s', s, HIGH], limit: 1 })][0];
      if (k && (oldestReceivedAt === undefined || (k[2] as number) < oldestReceivedAt)) oldestReceivedAt = k[2] as number;
    }
    return {
      at: now,
      byState,
      byPriority,
      ...(oldestReceivedAt !== undefined ? { oldestReceivedAt } : {}),
      topDestinations: top.map(([domain, count]) => ({ domain, count })),
      ageByDestination: { bucketsMinutes: AGE_BUCKETS_MINUTES, rows: top.map(([domain, total]) => this.qshapeRow(domain, total, now)) },
    };
  }

  /** Counts a domain's live mail per age bucket with range counts over its [domain, state, received] index. */
  private qshapeRow(domain: string, total: number, now: Millis): { domain: string; total: number; counts: number[] } {
    const counts: number[] = [];
    let newer = now;
    let rest = total;
    for (const limit of AGE_BUCKETS_MINUTES) {
      if (limit === Infinity) { counts.push(Math.max(0, rest)); break; }
      const older = now - limit * 60_000;
      // Mail received "in the future" (clock skew) counts in the youngest bucket.
      const end = counts.length === 0 ? HIGH : newer;
      let c = 0;
      for (const s of LIVE_STATES) c += this.ix.getCount({ start: ['d', domain, s, older], end: ['d', domain, s, end] });
      counts.push(c);
      rest -= c;
      newer = older;
    }
    return { domain, total, counts };
  }

  subscribe(listener: (event: QueueEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---------------------------------------------------------------- retention

  private schedulePurge(): void {
    const every = this.opts.purgeIntervalMs ?? Math.min(60_000, Math.max(1_000, this.opts.retainFinishedMs / 4));
    this.purgeTimer = setTimeout(() => {
      this.purgeFinished()
        .catch((err) => this.log.error({ err }, 'purge of finished mail failed'))
        .then(() => (this.open && !this.closing ? this.compactSegments() : 0))
        .catch((err) => this.log.error({ err }, 'segment compaction failed'))
        .finally(() => { if (this.open && !this.closing) this.schedulePurge(); });
    }, every);
    this.purgeTimer.unref();
  }

  /** Deletes the metadata of mail finished more than retainFinishedMs ago, in bounded batches. */
  async purgeFinished(): Promise<number> {
    let purged = 0;
    for (;;) {
      if (!this.open || this.closing) return purged;
      const n = await this.submit<number>({
        run: (tx) => {
          const cutoff = tx.now - this.opts.retainFinishedMs;
          const keys = [...this.ix.getKeys({ start: ['f'], end: ['f', cutoff, HIGH], limit: 1000 })];
          for (const k of keys) {
            const mail = this.mails.get(String(k[2]));
            if (mail) tx.purge(mail);
            else this.ix.removeSync(k);
          }
          return keys.length;
        },
      });
      purged += n;
      if (n < 1000) return purged;
    }
  }

  private assertOpen(): void {
    if (!this.open) throw new QueueUnavailableError('Spool is not open');
  }
}

interface DueItem {
  priority: number;
  notBefore: number;
  id: string;
}

function cmpDue(a: DueItem, b: DueItem): number {
  return a.notBefore - b.notBefore || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}
