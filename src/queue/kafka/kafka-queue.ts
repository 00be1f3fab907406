/**
 * The Kafka queue backend: several Spoolhouse nodes share one Kafka cluster; any node can take,
 * deliver, inspect or change any mail, and a node that dies loses nothing.
 *
 * Topics (created at start when missing; `<p>` is `topicPrefix`):
 *   <p>.content  compacted, key = mail id, value = the message bytes as received (written once,
 *                tombstoned when the mail is finished). max.message.bytes = smtp.maxMessageSize + 1 MiB.
 *   <p>.state    compacted, key = mail id, value = a conditional state record (state-view.ts):
 *                the whole QueuedMail (no body) plus the generation it was computed from.
 *   <p>.settings one partition, compacted, key = a section of the run-time configuration, value =
 *                its whole value (settings.ts): what an operator changes through any node's API.
 *
 * Guarantees:
 * - Durability: `enqueue` resolves only after the body and then the state record were acknowledged
 *   by all in-sync replicas (acks=-1) AND this node's view applied the state record. The body is
 *   written before the state that refers to it (ordered writes instead of a transaction: a crash in
 *   between leaves an unreferenced body, never a state without its body).
 * - Group commit: concurrent writes (enqueues, reservations, attempts, operator actions) that arrive
 *   while a produce is in flight go out together in the next produce request (GroupWriter).
 * - Atomic, fenced transitions across nodes: every change is computed by model.ts from this node's
 *   view and written as a compare-and-set on the generation, decided by the log order of the state
 *   partition (see state-view.ts). The loser of a race re-reads and retries (operator actions,
 *   attempts) or skips the mail (reservations). So two nodes never both hold a lease.
 * - Read-your-writes: every write API returns after this node's view applied its record.
 * - Priority and delay: reserveDue walks the view's due index: highest class first, then earliest
 *   notBefore, with `lowPriorityShare` of the picks going to lower classes (as the spool does).
 *   Delay precision is the caller's polling (nextDueAt gives the exact time); no delay topics.
 * - Leases live in the state record. A node killed with kill -9 leaves `active` mail whose lease
 *   runs out; any node's reserveDue then takes it (isDue in model.ts), unless the same node starts
 *   again first and gives its old leases back (releaseLeftLeases). Delivery is at-least-once.
 * - Strict removal: checkLease first waits until the view has caught up with the state topic's end
 *   offsets (one ListOffsets request), so a removal acknowledged by any node is seen.
 * - Broker down: writes fail with QueueUnavailableError within `requestDeadlineMs` (default 8 s);
 *   the consumer and producer reconnect by themselves when the broker is back.
 * - Bodies: every node keeps a local copy of the content topic in `dataDir` (filled by its consumer;
 *   the enqueuing node writes its own at once), so readBody is a local file read. A body not yet
 *   seen locally is waited for until the consumer reached the topic's end offsets. A node on its
 *   own `spool.dir` keeps that copy across restarts, with a checkpoint of the content offsets it
 *   covers, and reads the content topic from there (body-dir.ts).
 *
 * Deviation from KAFKA.md section 4 (lanes + delay tiers + per-partition commit watermarks):
 * dispatch here needs no consumer-group offsets at all, because no work record is "consumed":
 * the due set is an index over the replicated state, and ownership is the lease inside it.
 * See the README for the trade-off (each node reads the whole state topic).
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { Kafka, logLevel, type Admin, type Consumer, type EachBatchPayload, type KafkaConfig, type LogEntry, type Producer, type SASLOptions } from 'kafkajs';
import type { Config } from '../../config/schema.js';
import type { Logger } from '../../logger.js';
import { BodyCache } from '../body-cache.js';
import { BODY_DIR, isBodyFile, readBootId, readCheckpoint, writeCheckpoint } from './body-dir.js';
import { DirLock } from '../dir-lock.js';
import { InvalidTransitionError, LeaseLostError, MailNotFoundError, QueueError, QueueUnavailableError } from '../errors.js';
import {
  applyAttempt, applyBounce, applyCommitDelivery, applyRedirect, applyHold, applyRelease, applyReleaseLease, applyRemove, applyRenewLease, applyReserve, applyRetryNow,
  applySetNotBefore, applySettleDelivery, applySetPriority, createMail, DueOrder, isTerminal, leaseValid, newLeaseToken, sendingNow,
} from '../model.js';
import type {
  AttemptResult, BrowseFilter, BrowseOptions, BrowsePage, EnqueueRequest, MailId, Millis, Queue, QueuedMail, QueueEvent,
  QueueStats, ReserveOptions, SharedSettings,
} from '../types.js';
import { KafkaSettings } from './settings.js';
import { StateView, type StateRecord, type WriteOutcome } from './state-view.js';
import { readViewSnapshot, writeViewSnapshot, type ViewSnapshot } from './view-snapshot.js';

process.env.KAFKAJS_NO_PARTITIONER_WARNING ??= '1';

export interface KafkaQueueOptions {
  brokers: string[];
  clientId: string;
  topicPrefix: string;
  partitions: number;
  replicationFactor: number;
  /** Unique per node; defaults to the host name. */
  nodeId: string | null;
  ssl: Config['kafka']['ssl'];
  sasl: Config['kafka']['sasl'];
  /** smtp.maxMessageSize: the content topic's record limit is set above it. */
  maxMessageSize: number;
  priorities: Config['priorities'];
  logger: Logger;
  /**
   * This node's own directory (`spool.dir`), for its body directory (`kafka-bodies`, kept across
   * restarts with a checkpoint of the content offsets it covers: body-dir.ts). It is locked while
   * the queue is open (one process per directory). Default: a per-instance dir in os.tmpdir(),
   * removed on close (not locked: tests open several instances side by side).
   */
  dataDir?: string;
  /** How often the body directory's checkpoint is written (also at close). Default 5 s. */
  checkpointIntervalMs?: number;
  /** Own bodies held only in memory longer than this are written to the body directory at the next checkpoint. Default: the checkpoint interval. */
  memoryBodyAgeMs?: number;
  /** How often the view's snapshot is written to `dataDir` (view-snapshot.ts; also at close). Default 60 s. */
  viewSnapshotIntervalMs?: number;
  /** Finished mail is purged (state and body tombstoned) this long after it finished. Default 1 h. */
  retainFinishedMs?: number;
  /** Upper bound for a write (enqueue, transitions) when Kafka does not answer. Default 8 s. */
  requestDeadlineMs?: number;
  /** Memory for bodies this node enqueued (the rest is spilled to dataDir). Default 32 MiB. */
  bodyCacheBytes?: number;
  now?: () => Millis;
}

const MIB = 1024 * 1024;
/** A body file in the kept directory whose mail the view does not know is removed at start once this old. */
const ORPHAN_AGE_MS = 10 * 60_000;
/** Produce requests are split so one partition's record batch stays well under max.message.bytes. */
const SEND_CHUNK_BYTES = MIB;
const STATS_TOP_N = 20;
const MAX_CAS_RETRIES = 20;
/** Finished mails tombstoned together by purgeFinished. */
const PURGE_BATCH = 1000;
/**
 * Mail another node finished is purged here this much later than that node purges it itself: so
 * on a cluster each finished mail is tombstoned once, by the node that finished it, and the others
 * step in only when it is gone (or was restarted, which gives it new write ids).
 */
export const PURGE_GRACE_MS = 10 * 60_000;
/** A view snapshot is written again this long after the last one even when no state record came (its age limits its use). */
const SNAPSHOT_REFRESH_MS = 3_600_000;

interface Write {
  state?: { key: string; value: Buffer | null };
  content?: { key: string; value: Buffer | null };
  /** True once the caller gave up (deadline): not sent if it has not left yet. */
  cancelled?: () => boolean;
  done: (err?: unknown) => void;
}

/**
 * Group commit: writes that arrive while produce requests are in flight leave together in the next
 * one. Up to GROUPS_IN_FLIGHT groups overlap (their order does not matter: every state record is a
 * compare-and-set). Within a group, the bodies are acknowledged before its state records are sent.
 */
const GROUPS_IN_FLIGHT = 3;

class GroupWriter {
  private pending: Write[] = [];
  private inFlight = 0;

  constructor(private readonly producer: Producer, private readonly contentTopic: string, private readonly stateTopic: string) {}

  submit(w: Omit<Write, 'done'>): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ ...w, done: (err) => (err ? reject(err) : resolve()) });
      if (this.inFlight < GROUPS_IN_FLIGHT) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.inFlight++;
    try {
      while (this.pending.length) {
        const group = this.pending.filter((w) => {
          if (!w.cancelled?.()) return true;
          w.done(new QueueUnavailableError('write abandoned after its deadline'));
          return false;
        });
        this.pending = [];
        try {
          await this.send(this.contentTopic, group.flatMap((w) => (w.content ? [w.content] : [])));
          await this.send(this.stateTopic, group.flatMap((w) => (w.state ? [w.state] : [])));
          for (const w of group) w.done();
        } catch (err) {
          for (const w of group) w.done(err);
        }
      }
    } finally {
      this.inFlight--;
    }
  }

  private async send(topic: string, messages: { key: string; value: Buffer | null }[]): Promise<void> {
    let chunk: typeof messages = [];
    let bytes = 0;
    for (const m of messages) {
      const size = m.value?.length ?? 0;
      if (chunk.length && bytes + size > SEND_CHUNK_BYTES) {
        await this.producer.send({ topic, acks: -1, messages: chunk });
        chunk = [];
        bytes = 0;
      }
      chunk.push(m);
      bytes += size;
    }
    if (chunk.length) await this.producer.send({ topic, acks: -1, messages: chunk });
  }
}

function pinoLogCreator(logger: Logger) {
  return () => ({ level, log }: LogEntry) => {
    const { message, ...extra } = log;
    const fields = { kafkajs: log.logger ?? 'kafkajs', ...extra };
    if (level === logLevel.ERROR || level === logLevel.NOTHING) logger.error(fields, message);
    else if (level === logLevel.WARN) logger.warn(fields, message);
    else logger.debug(fields, message);
  };
}

/** Retries a retriable kafkajs error a few times (start-up only: topics just created). */
async function retrying<T>(op: () => Promise<T>, tries: number, delayMs: number): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await op();
    } catch (err) {
      if (i >= tries || !(err as { retriable?: boolean }).retriable) throw err;
      await new Promise((r) => setTimeout(r, delayMs));
    }
  }
}

type PartitionOffsets = { partition: number; high: string; low: string }[];

/**
 * Where offsets kept for a topic (the body directory's checkpoint, the view snapshot) cannot be
 * right for the topic as it is now, the reason; else undefined: a partition it no longer has, or
 * an offset past a partition's end or below its start (the topic deleted and created again,
 * records deleted). A partition they do not name is read from its beginning.
 */
function offsetsMismatch(offsets: ReadonlyMap<number, number>, topic: PartitionOffsets, source: 'checkpoint' | 'snapshot', kind: 'content' | 'state'): string | undefined {
  const parts = new Map(topic.map((t) => [t.partition, t]));
  for (const [p, o] of offsets) {
    const t = parts.get(p);
    if (!t) return `${kind} partition ${p} no longer exists`;
    if (o > Number(t.high)) return `${source} offset ${o} is past the end (${t.high}) of ${kind} partition ${p}`;
    if (o < Number(t.low)) return `${source} offset ${o} is below the start (${t.low}) of ${kind} partition ${p}`;
  }
  return undefined;
}

/** A topic's end offset per partition, of the partitions that hold records (what a catch-up waits for). */
function endsWithRecords(offsets: PartitionOffsets): Map<number, number> {
  return new Map(offsets.filter((x) => Number(x.high) > Number(x.low)).map((x) => [x.partition, Number(x.high)]));
}

function unavailable(err: unknown, what: string): QueueError {
  if (err instanceof QueueError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new QueueUnavailableError(`Kafka unavailable during ${what}: ${msg}`, err);
}

export class KafkaQueue implements Queue {
  readonly backend = 'kafka' as const;
  readonly nodeId: string;
  readonly contentTopic: string;
  readonly stateTopic: string;
  private readonly kafka: Kafka;
  private readonly log: Logger;
  private readonly now: () => Millis;
  private readonly deadlineMs: number;
  private readonly view: StateView;
  private admin?: Admin;
  private producer?: Producer;
  private consumer?: Consumer;
  /** The view consumer's group: one per instance, kept when the consumer is replaced (its committed offsets carry over). */
  private viewGroupId?: string;
  /** Set while a replacement view consumer is being started (see onViewConsumerCrash). */
  private consumerRestart?: NodeJS.Timeout;
  private writer?: GroupWriter;
  private dataDir?: string;
  private lock?: DirLock;
  /** Next offset to read per partition, per topic (what the view / body cache has applied). */
  private readonly positions = { state: new Map<number, number>(), content: new Map<number, number>() };
  private readonly progress = new Set<() => void>();
  /** Bodies this node wrote to its cache at enqueue; their records need no second write. */
  private readonly ownBodies = new Set<MailId>();
  /** syncState rounds: the one callers may still join, and the one whose request is out. */
  private syncJoinable?: Promise<void>;
  private syncRunning?: Promise<void>;
  /**
   * Bodies this node enqueued lately, in memory only (see body-cache.ts): its own delivery reads
   * none back, and most are never written locally at all. One pushed out of the cache is written
   * to the local body directory then (spilled); Kafka holds the durable copy either way.
   */
  private readonly bodyCache: BodyCache;
  /** Bodies present as files in the local body directory, and spills being written. */
  private readonly onDisk = new Set<MailId>();
  private readonly spilling = new Map<MailId, Promise<void>>();
  /** Spills that failed (local disk full): kept in memory, since this node's consumer skips its own bodies. */
  private readonly unspilled = new Map<MailId, Buffer>();
  /**
   * Own bodies held in memory only whose content record the consumer has passed: where that
   * record is, and when it was passed. The checkpoint stays below them (contentCheckpoint), and
   * those older than the checkpoint interval are written out (persistMemoryBodies).
   */
  private readonly memoryOnly = new Map<MailId, { partition: number; offset: number; at: number }>();
  /** The body directory is this node's own (under the locked `dataDir`) and kept across restarts. */
  private keepsBodyDir = false;
  private bootId?: string;
  /** A checkpoint round (checkpointRound) is running. */
  private checkpointing?: Promise<void>;
  /** Content records the consumer has read since start (those it skipped as already applied included). */
  private contentRecords = 0;
  /**
   * How the last start filled the body directory: `fresh` (read the content topic whole), `resumed`
   * (from the checkpoint: `contentRecords` is what it read), or `reread` (resumed, but a live
   * mail's body was missing or of the wrong size, so it read the topic whole after all).
   */
  startInfo?: {
    bodies: 'fresh' | 'resumed' | 'reread'; contentRecords: number; reason?: string;
    /** The view from a snapshot (`stateRecords` is what was read after it) or from the state topic whole. */
    view: 'snapshot' | 'full'; stateRecords: number; viewReason?: string;
  };
  /** State records the consumer has read since start (those it skipped as already applied included). */
  private stateRecords = 0;
  /** A view snapshot is being written; the offsets and time of the last one written. */
  private snapshotting?: Promise<void>;
  private lastSnapshot?: { offsets: string; at: number };
  /** Mail this node is writing a reservation for right now (not offered twice). */
  private readonly claiming = new Set<MailId>();
  /** Priority order with lowPriorityShare, its credit carried across calls (as the spool's). */
  private readonly dueOrder = new DueOrder();
  private open = false;
  /** purgeFinished is running. */
  private purging = false;
  private readonly settings: KafkaSettings;
  private timers: NodeJS.Timeout[] = [];
  /** Write ids (`w` of a state record): unique per instance by a random prefix, then a counter (no random bytes per write). */
  private readonly writePrefix = randomBytes(6).toString('hex');
  private writeSeq = 0;

  constructor(private readonly opts: KafkaQueueOptions) {
    this.nodeId = opts.nodeId ?? hostname();
    this.log = opts.logger.child({ queue: 'kafka', node: this.nodeId });
    this.now = opts.now ?? Date.now;
    this.deadlineMs = opts.requestDeadlineMs ?? 8_000;
    this.contentTopic = `${opts.topicPrefix}.content`;
    this.stateTopic = `${opts.topicPrefix}.state`;
    this.view = new StateView(this.now, this.writePrefix);
    const config: KafkaConfig = {
      clientId: opts.clientId,
      brokers: opts.brokers,
      connectionTimeout: 3_000,
      requestTimeout: Math.min(30_000, this.deadlineMs),
      // Short retries: a write must fail within the deadline, not after minutes (KAFKA.md 1.5).
      retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1_000 },
      logLevel: logLevel.WARN,
      logCreator: pinoLogCreator(this.log),
    };
    if (opts.ssl) config.ssl = opts.ssl;
    if (opts.sasl) config.sasl = opts.sasl as SASLOptions;
    this.kafka = new Kafka(config);
    this.settings = new KafkaSettings(this.kafka, () => this.producer, `${opts.topicPrefix}.settings`, `${opts.topicPrefix}.settings.${this.nodeId}`, this.log);
    this.bodyCache = new BodyCache(opts.bodyCacheBytes ?? 32 * MIB, (id, body) => this.spill(id, body));
  }

  // ---------------------------------------------------------------- lifecycle

  async start(): Promise<void> {
    const started = Date.now();
    const parent = this.opts.dataDir ?? tmpdir();
    await mkdir(parent, { recursive: true });
    if (this.opts.dataDir) this.lock = await DirLock.acquire(this.opts.dataDir);
    try {
      let resume: Map<number, number> | undefined;
      let discarded: string | undefined;
      let snapshot: ViewSnapshot | undefined;
      let viewReason: string | undefined;
      if (this.opts.dataDir) {
        ({ snapshot, unusable: viewReason } = await readViewSnapshot(this.opts.dataDir, this.stateTopic, Date.now()));
        await this.removeStaleBodyDirs(this.opts.dataDir);
        this.keepsBodyDir = true;
        this.bootId = await readBootId();
        this.dataDir = join(this.opts.dataDir, BODY_DIR);
        await mkdir(this.dataDir, { recursive: true });
        ({ offsets: resume, unusable: discarded } = await readCheckpoint(this.dataDir, this.bootId, this.contentTopic));
      } else {
        this.dataDir = await mkdtemp(join(parent, 'kafka-bodies-'));
      }
      this.admin = this.kafka.admin();
      await this.admin.connect();
      // kafkajs's waitForLeaders retries LEADER_NOT_AVAILABLE only; 3.9 brokers may answer
      // UNKNOWN_TOPIC_OR_PARTITION for a moment after creation (retriable): check again.
      await retrying(() => this.ensureTopics(), 20, 250);
      this.producer = this.kafka.producer({ allowAutoTopicCreation: false, retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1_000 } });
      await this.producer.connect();
      this.writer = new GroupWriter(this.producer, this.contentTopic, this.stateTopic);
      // Fresh topics: metadata may still name no leader for a moment (NOT_LEADER, retriable).
      const { ends, listed } = await retrying(() => this.endOffsets(), 20, 250);
      if (resume) {
        discarded = offsetsMismatch(resume, listed.content, 'checkpoint', 'content');
        if (discarded) resume = undefined;
      }
      if (snapshot) {
        viewReason = offsetsMismatch(snapshot.offsets, listed.state, 'snapshot', 'state');
        if (viewReason) snapshot = undefined;
      }
      if (viewReason) this.log.warn({ reason: viewReason }, 'view snapshot not used: reading the state topic whole');
      if (snapshot) {
        this.view.load(snapshot.mails, snapshot.header);
        for (const [p, o] of snapshot.offsets) this.positions.state.set(p, o);
      }
      if (this.keepsBodyDir) await this.openBodyDir(!resume);
      if (discarded) this.log.warn({ reason: discarded }, 'body directory not used: reading the content topic whole');
      for (const [p, o] of resume ?? []) this.positions.content.set(p, o);
      await this.startConsumer();
      for (const [p, o] of snapshot?.offsets ?? []) this.consumer!.seek({ topic: this.stateTopic, partition: p, offset: String(o) });
      for (const [p, o] of resume ?? []) this.consumer!.seek({ topic: this.contentTopic, partition: p, offset: String(o) });
      this.open = true;
      await this.waitFor(ends, 120_000);
      this.startInfo = {
        bodies: resume ? 'resumed' : 'fresh', contentRecords: this.contentRecords, ...(discarded ? { reason: discarded } : {}),
        view: snapshot ? 'snapshot' : 'full', stateRecords: this.stateRecords, ...(viewReason ? { viewReason } : {}),
      };
      if (resume) await this.checkBodyDir();
      if (this.keepsBodyDir) await this.removeBodiesNotLive();
      // A topic just created may not answer for a moment (retriable), as in endOffsets above.
      const settingsEnd = await retrying(async () => Number((await this.admin!.fetchTopicOffsets(this.settings.topic)).find((p) => p.partition === 0)?.high ?? 0), 20, 250);
      await this.settings.start(settingsEnd, 30_000);
      await this.releaseLeftLeases();
    } catch (err) {
      await this.close().catch(() => undefined);
      throw unavailable(err, 'start');
    }
    this.scheduleMaintenance();
    this.log.info({ mails: this.view.mails.size, ms: Date.now() - started, start: this.startInfo }, 'kafka queue started');
  }

  async close(): Promise<void> {
    this.open = false;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    await this.checkpointing;
    await this.snapshotting;
    if (this.consumerRestart) clearTimeout(this.consumerRestart);
    this.consumerRestart = undefined;
    await this.consumer?.disconnect().catch((err: unknown) => this.log.warn({ err }, 'consumer disconnect failed'));
    await this.settings.close();
    await this.producer?.disconnect().catch((err: unknown) => this.log.warn({ err }, 'producer disconnect failed'));
    await this.admin?.disconnect().catch((err: unknown) => this.log.warn({ err }, 'admin disconnect failed'));
    this.consumer = undefined;
    this.producer = undefined;
    this.admin = undefined;
    // The view as the consumer left it, for the next start (after a start that got its view).
    if (this.keepsBodyDir && this.startInfo) await this.saveViewSnapshot(0).catch((err: unknown) => this.log.warn({ err }, 'could not write the view snapshot at close'));
    if (this.dataDir && (!this.keepsBodyDir || !this.bootId)) {
      // A per-instance dir, or one no checkpoint can be written for (no boot id): of no use later.
      await rm(this.dataDir, { recursive: true, force: true });
    } else if (this.dataDir && this.startInfo) {
      // Kept for the next start, its checkpoint past every body (after a start that got its view;
      // a failed start leaves the directory and checkpoint of the run before it as they were).
      await this.checkpointRound(0).catch((err: unknown) => this.log.warn({ err }, 'could not write the body directory checkpoint at close'));
    }
    this.dataDir = undefined;
    await this.lock?.release();
    this.lock = undefined;
  }

  /**
   * Per-instance body dirs (`kafka-bodies-XXXXXX`) that versions before the kept body directory
   * left on this directory: a node killed with kill -9 could not remove its own. Under the lock no
   * other process uses them.
   */
  private async removeStaleBodyDirs(dir: string): Promise<void> {
    const stale = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory() && e.name.startsWith('kafka-bodies-'));
    for (const e of stale) await rm(join(dir, e.name), { recursive: true, force: true });
    if (stale.length) this.log.info({ dirs: stale.map((e) => e.name) }, 'removed body cache dirs left by an earlier instance');
  }

  /**
   * The kept body directory at start: with `fresh`, emptied (checkpoint included); else the
   * temporary files a kill left are removed and the bodies there are counted as on disk.
   */
  private async openBodyDir(fresh: boolean): Promise<void> {
    const dir = this.dataDir!;
    if (fresh) {
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      return;
    }
    for (const name of await readdir(dir)) {
      if (name.endsWith('.tmp')) await rm(join(dir, name), { force: true });
      else if (isBodyFile(name)) this.onDisk.add(name);
    }
  }

  /**
   * After a start from the checkpoint: every live mail must have its body here, of its size. If
   * one has not, the content topic is read whole after all (its files of the right size are kept).
   * The live set is taken before the content topic's end offsets are asked: a mail's body is
   * acknowledged before its state record is written, so every body of that set lies below them,
   * even while other nodes go on enqueueing.
   */
  private async checkBodyDir(): Promise<void> {
    const live = [...this.view.mails.values()].filter((m) => !isTerminal(m.state));
    await this.waitFor({ content: await this.contentEnds('start') }, 120_000);
    const bad: MailId[] = [];
    // 64 stats at a time (libuv's pool runs them): a queue of 100,000 mails is checked in well under a second.
    for (let i = 0; i < live.length; i += 64) {
      await Promise.all(live.slice(i, i + 64).map(async (m) => {
        const st = this.onDisk.has(m.id) ? await stat(this.bodyPath(m.id)).catch(() => undefined) : undefined;
        if (st?.size !== m.size) bad.push(m.id);
      }));
    }
    if (!bad.length) return;
    this.log.warn({ mails: bad.length, first: bad.slice(0, 5) }, 'body directory lacks the body of live mail (missing or of the wrong size): reading the content topic whole');
    for (const id of bad) await this.forgetLocalBody(id);
    const ends = await this.contentEnds('start');
    this.positions.content.clear();
    for (const p of ends.keys()) this.consumer!.seek({ topic: this.contentTopic, partition: p, offset: '0' });
    await this.waitFor({ content: ends }, 120_000);
    this.startInfo = { ...this.startInfo!, bodies: 'reread', contentRecords: this.contentRecords, reason: `${bad.length} live mail without its body` };
  }

  /**
   * Bodies in the kept directory that no live mail needs: of finished mail (a kill between its
   * finish and the removal of its file), and of mail the view does not know, if older than
   * ORPHAN_AGE_MS (a kill between an enqueue's body and its state record; a younger one may be
   * another node's enqueue whose state record is still on its way).
   */
  private async removeBodiesNotLive(): Promise<void> {
    const cutoff = Date.now() - ORPHAN_AGE_MS;
    const stale: MailId[] = [];
    for (const id of [...this.onDisk]) {
      const m = this.view.mails.get(id);
      if (m && !isTerminal(m.state)) continue;
      if (!m) {
        const modified = (await stat(this.bodyPath(id)).catch(() => undefined))?.mtimeMs ?? 0;
        if (modified > cutoff) continue;
      }
      stale.push(id);
    }
    for (const id of stale) await this.forgetLocalBody(id);
    if (stale.length) this.log.info({ bodies: stale.length }, 'removed bodies of finished or unknown mail from the body directory');
  }

  /** The content topic's end offsets (partitions holding records). */
  private async contentEnds(what: string): Promise<Map<number, number>> {
    return endsWithRecords(await this.withDeadline(this.admin!.fetchTopicOffsets(this.contentTopic), what));
  }

  /**
   * Per content partition, where the next start resumes: the consumer's position, or the record
   * of an own body still held only in memory, whichever is lower.
   */
  private contentCheckpoint(): Map<number, number> {
    const out = new Map(this.positions.content);
    for (const { partition, offset } of this.memoryOnly.values()) {
      if (offset < (out.get(partition) ?? Number.MAX_SAFE_INTEGER)) out.set(partition, offset);
    }
    return out;
  }

  /** Own bodies held only in memory longer than `olderThanMs` written out, then the checkpoint. */
  private async checkpointRound(olderThanMs: number): Promise<void> {
    await this.persistMemoryBodies(olderThanMs);
    await this.saveCheckpoint();
  }

  /**
   * The view and the state offsets it covers to `spool.dir` (view-snapshot.ts), taken in one turn
   * of the event loop (a state batch is applied in one). Skipped when no state record was applied
   * since the last one, unless that is older than `refreshMs`.
   */
  private async saveViewSnapshot(refreshMs: number): Promise<void> {
    const offsets = new Map(this.positions.state);
    const key = JSON.stringify([...offsets]);
    const at = Date.now();
    if (this.lastSnapshot?.offsets === key && at - this.lastSnapshot.at < refreshMs) return;
    const mails = [...this.view.mails.values()];
    await writeViewSnapshot(this.opts.dataDir!, this.stateTopic, offsets, mails, this.view.snapshotExtras(), at);
    this.lastSnapshot = { offsets: key, at };
  }

  private async saveCheckpoint(): Promise<void> {
    if (!this.bootId || !this.dataDir) return;
    await writeCheckpoint(this.dataDir, { bootId: this.bootId, contentTopic: this.contentTopic, offsets: Object.fromEntries(this.contentCheckpoint()) });
  }

  /**
   * Writes own bodies held only in memory for longer than `olderThanMs` to the body directory
   * (they stay in memory too), so they no longer hold the checkpoint back: mail that waits in the
   * queue (deferred, delayed, held) would otherwise make every later start read from its record.
   */
  private async persistMemoryBodies(olderThanMs: number): Promise<void> {
    const cutoff = Date.now() - olderThanMs;
    for (const [id, { at }] of [...this.memoryOnly]) {
      // Being spilled: its spill takes it off memoryOnly once the file is in place.
      if (at > cutoff || this.spilling.has(id)) continue;
      const body = this.bodyCache.peek(id) ?? this.unspilled.get(id);
      if (!body) {
        this.memoryOnly.delete(id);
        continue;
      }
      await this.writeBodyFile(id, body);
      // Finished meanwhile: forgetLocalBody ran while the file was written.
      if (!this.memoryOnly.delete(id)) {
        await rm(this.bodyPath(id), { force: true });
      } else {
        this.onDisk.add(id);
        this.unspilled.delete(id);
      }
    }
  }

  /** A body file comes into place by rename, whole (a kill leaves a `.tmp`, removed at start). */
  private async writeBodyFile(id: MailId, body: Buffer): Promise<void> {
    const path = this.bodyPath(id);
    const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
    await writeFile(tmp, body);
    await rename(tmp, path);
  }

  /**
   * Leases this node's id held when its last process was killed: given back at start, as the spool
   * does, rather than left until `delivery.leaseTime` runs out. Only under the directory lock (which
   * says that process is dead) and for a node id that is unique, as kafka.nodeId must be. A lease
   * whose final "." was in flight is left to run out: that mail may have been delivered, and
   * waiting keeps the second delivery as late as before should two live nodes share an id.
   */
  private async releaseLeftLeases(): Promise<void> {
    if (!this.lock) return;
    const left = [...this.view.mails.values()].filter((m) => m.state === 'active' && m.lease?.owner === this.nodeId);
    if (!left.length) return;
    const now = this.now();
    const items = left.filter((m) => !sendingNow(m, now)).map((m) => ({ prev: m.generation, mail: applyReleaseLease(m, m.lease!.token, now) }));
    // One conditional write for all: a mail another node changed meanwhile (it took the lapsed
    // lease, or removed the mail) loses its compare-and-set, and is not this node's to give back.
    const outcomes = items.length ? await this.writeStates(items, 'give back left leases') : [];
    const released = outcomes.filter((o) => o.accepted).length;
    this.log.info({ released, changedMeanwhile: items.length - released, leftToRunOut: left.length - items.length }, 'gave back the leases this node held before it was stopped without closing');
  }

  private assertOpen(): void {
    if (!this.open) throw new QueueUnavailableError('Kafka queue is not open');
  }

  private async ensureTopics(): Promise<void> {
    const existing = new Set(await this.admin!.listTopics());
    const common = { numPartitions: this.opts.partitions, replicationFactor: this.opts.replicationFactor };
    const topics = [
      {
        topic: this.contentTopic, ...common,
        configEntries: [
          { name: 'cleanup.policy', value: 'compact' },
          { name: 'max.message.bytes', value: String(this.opts.maxMessageSize + MIB) },
          { name: 'segment.bytes', value: String(256 * MIB) },
          { name: 'delete.retention.ms', value: String(24 * 3_600_000) },
        ],
      },
      {
        topic: this.stateTopic, ...common,
        configEntries: [
          { name: 'cleanup.policy', value: 'compact' },
          { name: 'min.compaction.lag.ms', value: '60000' },
          { name: 'delete.retention.ms', value: String(24 * 3_600_000) },
          { name: 'segment.ms', value: '3600000' },
        ],
      },
      {
        // One partition: every node applies the settings in one order.
        topic: this.settings.topic, numPartitions: 1, replicationFactor: this.opts.replicationFactor,
        configEntries: [{ name: 'cleanup.policy', value: 'compact' }],
      },
    ].filter((t) => !existing.has(t.topic));
    if (!topics.length) return;
    await this.admin!.createTopics({ topics, waitForLeaders: true });
    this.log.info({ topics: topics.map((t) => t.topic) }, 'kafka topics created');
  }

  /** Both topics' end offsets of the partitions holding records, and their offsets as listed. */
  private async endOffsets(): Promise<{ ends: { state: Map<number, number>; content: Map<number, number> }; listed: { state: PartitionOffsets; content: PartitionOffsets } }> {
    const [s, c] = await Promise.all([this.admin!.fetchTopicOffsets(this.stateTopic), this.admin!.fetchTopicOffsets(this.contentTopic)]);
    return { ends: { state: endsWithRecords(s), content: endsWithRecords(c) }, listed: { state: s, content: c } };
  }

  private caughtUp(ends: { state?: Map<number, number>; content?: Map<number, number> }): boolean {
    for (const kind of ['state', 'content'] as const) {
      for (const [p, end] of ends[kind] ?? []) if ((this.positions[kind].get(p) ?? 0) < end) return false;
    }
    return true;
  }

  /** Waits until the consumer has applied everything below the given end offsets. */
  private waitFor(ends: { state?: Map<number, number>; content?: Map<number, number> }, timeoutMs: number): Promise<void> {
    if (this.caughtUp(ends)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!this.caughtUp(ends)) return;
        clearTimeout(timer);
        this.progress.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.progress.delete(check);
        reject(new QueueUnavailableError('Kafka view did not catch up in time'));
      }, timeoutMs);
      this.progress.add(check);
    });
  }

  private async startConsumer(): Promise<void> {
    // A group of its own per instance: every node reads every record of both topics.
    this.viewGroupId ??= `${this.opts.topicPrefix}.view.${this.nodeId}.${randomBytes(4).toString('hex')}`;
    const consumer = this.kafka.consumer({
      groupId: this.viewGroupId,
      maxWaitTimeInMs: 250,
      sessionTimeout: 10_000,
      // The group has this one member. After a broker restart the coordinator waits for the
      // member it knew (our previous incarnation, when the consumer crashed and rejoined under a
      // new member id) for up to the rebalance timeout, and writes fail meanwhile (no read-back):
      // a minute with kafkajs's 60 s default, ~10 s with 10 s, ~3 s with this (measured by
      // test/kafka/broker-down.test.ts). With no other member, nothing else waits on it.
      rebalanceTimeout: 3_000,
      heartbeatInterval: 1_000,
      allowAutoTopicCreation: false,
      retry: { retries: 1_000_000, initialRetryTime: 200, maxRetryTime: 2_000 },
    });
    this.consumer = consumer;
    await consumer.connect();
    await consumer.subscribe({ topics: [this.stateTopic, this.contentTopic], fromBeginning: true });
    consumer.on(consumer.events.CRASH, (e) => {
      if (this.consumer === consumer) this.onViewConsumerCrash(e.payload);
    });
    // State and content partitions are applied concurrently: a batch of bodies being written to
    // disk must not hold back the state records other writers are waiting for.
    // Offsets are committed to this instance's own group only so that a consumer restarted after
    // an outage resumes near where it was instead of re-reading both topics.
    await consumer.run({ autoCommit: true, autoCommitInterval: 5_000, partitionsConsumedConcurrently: 2 * this.opts.partitions, eachBatch: (b) => this.applyBatch(b) });
  }

  /**
   * @internal (tests call it to simulate a crash) The view consumer crashed. kafkajs restarts it
   * itself after a retriable error; after any other (a protocol error it does not retry, e.g.
   * while a restarted broker settles) it leaves it disconnected for good, and without its view
   * this node could not finish a single write again. So a new consumer is started in its place,
   * in the same group (it resumes from the committed offsets), until one runs.
   */
  onViewConsumerCrash(payload: { error: Error; restart: boolean }): void {
    if (payload.restart) {
      this.log.error({ err: payload.error }, 'kafka view consumer crashed; kafkajs restarts it');
      return;
    }
    this.log.error({ err: payload.error }, 'kafka view consumer stopped on an error kafkajs does not retry; starting a new one');
    this.restartViewConsumer(1_000);
  }

  private restartViewConsumer(afterMs: number): void {
    if (!this.open || this.consumerRestart) return;
    this.consumerRestart = setTimeout(() => {
      const old = this.consumer;
      void (async () => {
        try {
          await old?.disconnect().catch(() => undefined);
          if (!this.open) return;
          await this.startConsumer();
          // Closed meanwhile: close() may have disconnected the old consumer only.
          if (!this.open) await this.consumer?.disconnect().catch(() => undefined);
          this.consumerRestart = undefined;
          this.log.info('kafka view consumer running again');
        } catch (err) {
          this.log.warn({ err }, 'starting a new kafka view consumer failed; trying again');
          this.consumerRestart = undefined;
          this.restartViewConsumer(Math.min(afterMs * 2, 10_000));
        }
      })();
    }, afterMs);
    this.consumerRestart.unref();
  }

  private async applyBatch({ batch }: EachBatchPayload): Promise<void> {
    const kind = batch.topic === this.stateTopic ? 'state' : 'content';
    // After a consumer restart (broker outage) kafkajs may fetch again from an older offset:
    // a record is applied once, or the view would take old records for lost races.
    const from = this.positions[kind].get(batch.partition) ?? 0;
    const messages = batch.messages.filter((m) => Number(m.offset) >= from);
    const last = messages[messages.length - 1];
    if (kind === 'state') {
      for (const m of messages) {
        const id = m.key?.toString('utf8');
        if (!id) continue;
        this.view.apply(id, m.value, Number(m.timestamp));
        if (m.value) this.afterApply(id);
      }
      this.stateRecords += batch.messages.length;
      if (last) this.positions.state.set(batch.partition, Number(last.offset) + 1);
    } else {
      // Bodies of one batch are written in parallel; this node's own are already here (memory or disk).
      const at = Date.now();
      await Promise.all(messages.map((m) => {
        const id = m.key?.toString('utf8');
        if (!id) return undefined;
        if (m.value && this.ownBodies.delete(id)) {
          if (!this.onDisk.has(id)) this.memoryOnly.set(id, { partition: batch.partition, offset: Number(m.offset), at });
          return undefined;
        }
        return this.storeBody(id, m.value);
      }));
      this.contentRecords += batch.messages.length;
      if (last) this.positions.content.set(batch.partition, Number(last.offset) + 1);
    }
    for (const check of [...this.progress]) check();
  }

  /** Bodies of finished mail are dropped from the local cache as soon as the view sees it finish. */
  private afterApply(id: MailId): void {
    const m = this.view.mails.get(id);
    if (m && isTerminal(m.state)) void this.forgetLocalBody(id);
  }

  /** Writes a body pushed out of the memory cache to the local body directory. */
  private spill(id: MailId, body: Buffer): void {
    const known = this.view.mails.get(id);
    if (known && isTerminal(known.state)) return;
    if (this.onDisk.has(id)) return; // written out already (persistMemoryBodies)
    const done = this.writeBodyFile(id, body)
      .then(() => {
        this.onDisk.add(id);
        this.memoryOnly.delete(id);
      })
      .catch((err: unknown) => {
        this.unspilled.set(id, body);
        this.log.warn({ err, mailId: id }, 'could not write a body to the local cache directory; keeping it in memory');
      })
      .finally(() => { this.spilling.delete(id); });
    this.spilling.set(id, done);
  }

  /** Drops this node's local copy of a body (memory, and the file when there is one). */
  private async forgetLocalBody(id: MailId): Promise<void> {
    this.bodyCache.delete(id);
    this.memoryOnly.delete(id);
    await this.spilling.get(id);
    this.unspilled.delete(id);
    if (this.onDisk.delete(id)) await rm(this.bodyPath(id), { force: true });
  }

  private bodyPath(id: MailId): string {
    return join(this.dataDir!, id);
  }

  private async storeBody(id: MailId, value: Buffer | null): Promise<void> {
    const path = this.bodyPath(id);
    if (value === null) {
      await this.forgetLocalBody(id);
      return;
    }
    const known = this.view.mails.get(id);
    if (known && isTerminal(known.state)) return;
    if (this.bodyCache.has(id) || this.spilling.has(id)) return;
    const st = await stat(path).catch(() => undefined);
    if (st?.size === value.length) return;
    await this.writeBodyFile(id, value);
    this.onDisk.add(id);
  }

  private scheduleMaintenance(): void {
    // Repair: a key whose latest record was rejected gets its current state re-asserted, so that
    // compaction cannot leave the rejected record as its only one (state-view.ts).
    const repair = setInterval(() => void this.repairRejected().catch((err: unknown) => this.log.warn({ err }, 'state repair failed')), 2_000);
    const retain = this.opts.retainFinishedMs ?? 3_600_000;
    const purge = setInterval(
      () => void this.purgeFinished(retain).catch((err: unknown) => this.log.warn({ err }, 'purge of finished mail failed')),
      Math.min(60_000, Math.max(1_000, retain / 4)),
    );
    repair.unref();
    purge.unref();
    this.timers.push(repair, purge);
    if (this.keepsBodyDir) {
      const snapshot = setInterval(() => {
        if (this.snapshotting) return;
        this.snapshotting = this.saveViewSnapshot(SNAPSHOT_REFRESH_MS)
          .catch((err: unknown) => this.log.warn({ err }, 'could not write the view snapshot'))
          .finally(() => { this.snapshotting = undefined; });
      }, this.opts.viewSnapshotIntervalMs ?? 60_000);
      snapshot.unref();
      this.timers.push(snapshot);
    }
    if (this.keepsBodyDir && this.bootId) {
      const every = this.opts.checkpointIntervalMs ?? 5_000;
      const checkpoint = setInterval(() => {
        if (this.checkpointing) return;
        this.checkpointing = this.checkpointRound(this.opts.memoryBodyAgeMs ?? every)
          .catch((err: unknown) => this.log.warn({ err }, 'could not write the body directory checkpoint'))
          .finally(() => { this.checkpointing = undefined; });
      }, every);
      checkpoint.unref();
      this.timers.push(checkpoint);
    }
  }

  private async repairRejected(): Promise<void> {
    const cutoff = this.now() - 1_000;
    for (const [id, at] of [...this.view.rejectedLatest]) {
      if (at > cutoff || !this.open) continue;
      const cur = this.view.mails.get(id);
      if (!cur) {
        await this.writer!.submit({ state: { key: id, value: null } });
        continue;
      }
      const rec: StateRecord = { w: this.writeId(), prev: cur.generation, mail: cur, quiet: true };
      await this.writer!.submit({ state: { key: id, value: Buffer.from(JSON.stringify(rec)) } });
    }
  }

  /**
   * Tombstones state and body of every mail finished more than `retainMs` ago, `PURGE_BATCH` at a
   * time. (It used to tombstone one batch a run, at most 1000 a minute: a node finishing more
   * than that kept the rest in its view, and its memory grew for as long as it ran.) A run
   * still going when the next is due (a large backlog) is left to finish it.
   */
  async purgeFinished(retainMs: number): Promise<number> {
    if (this.purging) return 0;
    this.purging = true;
    try {
      const cutoff = this.now() - retainMs;
      const view = this.view;
      const due = function* () {
        yield* view.finishedHere.upTo(cutoff);
        yield* view.finishedElsewhere.upTo(cutoff - PURGE_GRACE_MS);
      };
      // Tombstoned by this run: the view drops them only when it reads them back, which may be
      // after the next batch is chosen.
      const sent = new Set<MailId>();
      let purged = 0;
      while (this.open) {
        const ids: MailId[] = [];
        for (const e of due()) {
          if (sent.has(e.id)) continue;
          ids.push(e.id);
          sent.add(e.id);
          if (ids.length === PURGE_BATCH) break;
        }
        await Promise.all(ids.map((id) => this.writer!.submit({ content: { key: id, value: null }, state: { key: id, value: null } })));
        purged += ids.length;
        if (ids.length < PURGE_BATCH) break;
      }
      return purged;
    } finally {
      this.purging = false;
    }
  }

  // ---------------------------------------------------------------- writes

  private writeId(): string {
    return `${this.writePrefix}${(++this.writeSeq).toString(36)}`;
  }

  private withDeadline<T>(p: Promise<T>, what: string): Promise<T> {
    let timer: NodeJS.Timeout;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new QueueUnavailableError(`Kafka did not answer within ${this.deadlineMs} ms (${what})`)), this.deadlineMs);
    });
    return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
  }

  /**
   * Writes conditional state records (and bodies first, if given) and waits for the view's verdict.
   * On the deadline the caller gets QueueUnavailableError; writes not yet sent are dropped, and
   * `onLate` sees the outcome of those already in flight if they land after all.
   */
  private async writeStates(
    items: { prev: number; mail: QueuedMail; quiet?: boolean; body?: Buffer | null }[],
    what: string,
    onLate?: (outcomes: WriteOutcome[]) => void,
  ): Promise<WriteOutcome[]> {
    this.assertOpen();
    let timedOut = false;
    const recs = items.map((it) => ({ ...it, w: this.writeId() }));
    const outcomes = recs.map((r) => this.view.awaitWrite(r.w));
    const sent = Promise.all(recs.map((r) => {
      const value: StateRecord = { w: r.w, prev: r.prev, mail: r.mail, ...(r.quiet ? { quiet: true } : {}) };
      return this.writer!.submit({
        ...(r.body !== undefined ? { content: { key: r.mail.id, value: r.body } } : {}),
        state: { key: r.mail.id, value: Buffer.from(JSON.stringify(value)) },
        cancelled: () => timedOut,
      });
    }));
    const work = sent.then(
      () => Promise.all(outcomes),
      (err: unknown) => {
        for (const r of recs) this.view.forgetWrite(r.w);
        throw unavailable(err, what);
      },
    );
    try {
      return await this.withDeadline(work, what);
    } catch (err) {
      timedOut = true;
      work.then((late) => onLate?.(late), () => undefined);
      throw unavailable(err, what);
    }
  }

  /**
   * One transition of one mail: compute it from the view with a model.ts function, write it
   * conditionally, and retry from the winner's version when another write got there first.
   */
  private async transition(id: MailId, what: string, change: (m: QueuedMail, now: Millis) => QueuedMail, quiet = false): Promise<QueuedMail> {
    this.assertOpen();
    for (let i = 0; i < MAX_CAS_RETRIES; i++) {
      let cur = i === 0 ? await this.lookup(id) : this.view.mails.get(id);
      if (!cur) throw new MailNotFoundError(id);
      let next: QueuedMail;
      try {
        next = change(cur, this.now());
      } catch (err) {
        // A refusal is only given on the state topic's latest word (another node may have just
        // settled a final "." or finished an attempt): judged once more after catching up.
        if (i > 0 || !(err instanceof QueueError)) throw err;
        await this.syncState(what);
        cur = this.view.mails.get(id);
        if (!cur) throw new MailNotFoundError(id);
        next = change(cur, this.now());
      }
      if (next === cur) return cur;
      const [outcome] = await this.writeStates([{ prev: cur.generation, mail: next, quiet }], what);
      if (outcome!.accepted) {
        if (isTerminal(next.state) && !isTerminal(cur.state)) this.dropBody(id);
        return outcome!.mail!;
      }
    }
    throw new QueueUnavailableError(`Too many concurrent changes of mail ${id}`);
  }

  /** A finished mail's body is tombstoned (compaction then frees it); best effort, logged. */
  private dropBody(id: MailId): void {
    this.bodyCache.delete(id);
    this.writer!.submit({ content: { key: id, value: null } })
      .catch((err: unknown) => this.log.warn({ err, mailId: id }, 'body tombstone failed; purge retries'));
  }

  async enqueue(req: EnqueueRequest): Promise<QueuedMail> {
    this.assertOpen();
    const mail = createMail(req, this.now());
    // The local copy first (memory, or a file for a body too big for the cache): this node can
    // serve readBody as soon as enqueue resolves. By rename, as every body file in the kept
    // directory: a file there under a mail's id is always whole.
    if (!this.bodyCache.put(mail.id, req.body)) {
      await this.writeBodyFile(mail.id, req.body);
      this.onDisk.add(mail.id);
    }
    this.ownBodies.add(mail.id);
    let outcome: WriteOutcome | undefined;
    try {
      [outcome] = await this.writeStates([{ prev: 0, mail, body: req.body }], 'enqueue', (late) => {
        // The client was told 451 but the write landed after all: the mail was never accepted, so
        // it is removed (visible to operators as such) rather than delivered next to the retry.
        if (late[0]?.accepted) void this.removeUnacknowledged(mail.id);
      });
    } catch (err) {
      this.ownBodies.delete(mail.id);
      await this.forgetLocalBody(mail.id);
      this.log.warn({ err, mailId: mail.id }, 'enqueue failed');
      throw err;
    }
    if (!outcome!.accepted) throw new InvalidTransitionError(mail.id, outcome!.mail?.state ?? 'unknown', 'enqueue (duplicate id)');
    this.log.debug({ mailId: mail.id, size: mail.size }, 'mail enqueued');
    return outcome!.mail!;
  }

  private async removeUnacknowledged(id: MailId): Promise<void> {
    try {
      await this.transition(id, 'remove unacknowledged', (m, now) => applyRemove(m, 'enqueue not acknowledged (Kafka timed out)', now));
      this.log.warn({ mailId: id }, 'mail landed after its enqueue timed out; removed');
    } catch (err) {
      this.log.error({ err, mailId: id }, 'could not remove a mail whose enqueue timed out; it may be delivered');
    }
  }

  async reserveDue(o: ReserveOptions): Promise<QueuedMail[]> {
    this.assertOpen();
    if (o.limit <= 0) return [];
    const now = o.now ?? this.now();
    const classes = this.view.dueByClass(now, o.limit, this.claiming);
    const picks: { prev: number; mail: QueuedMail }[] = [];
    while (picks.length < o.limit) {
      const mail = this.dueOrder.next(classes, o.lowPriorityShare, (a, b) => a.notBefore < b.notBefore);
      if (!mail) break;
      try {
        picks.push({ prev: mail.generation, mail: applyReserve(mail, o.owner, newLeaseToken(), o.leaseMs, now) });
      } catch {
        continue;
      }
    }
    if (!picks.length) return [];
    for (const p of picks) this.claiming.add(p.mail.id);
    try {
      const outcomes = await this.writeStates(picks, 'reserve');
      // Another node's write came first for the losers: they are simply not handed out.
      return outcomes.flatMap((out, i) => ((out.accepted && out.mail?.lease?.token === picks[i]!.mail.lease?.token ? [out.mail] : []) as QueuedMail[]));
    } finally {
      for (const p of picks) this.claiming.delete(p.mail.id);
    }
  }

  async nextDueAt(): Promise<Millis | undefined> {
    this.assertOpen();
    return this.view.nextDueAt();
  }

  renewLease(id: MailId, token: string, leaseMs: number): Promise<boolean> {
    return this.leaseTransition(id, 'renew lease', (m, now) => applyRenewLease(m, token, leaseMs, now));
  }

  /** A quiet transition that needs the caller's lease: false when the lease (or the mail) is gone. */
  private async leaseTransition(id: MailId, what: string, change: (m: QueuedMail, now: Millis) => QueuedMail): Promise<boolean> {
    try {
      await this.transition(id, what, change, true);
      return true;
    } catch (err) {
      if (err instanceof LeaseLostError || err instanceof MailNotFoundError) return false;
      throw err;
    }
  }

  /**
   * Waits until this node's view has applied everything the state topic held when called.
   * Concurrent callers share rounds: a call joins the next round whose ListOffsets has not been
   * asked yet (so the offsets are read after the call, which is all it needs), and one round runs
   * at a time. Under load, the check before every final "." is then one request for many mails.
   */
  private syncState(what: string): Promise<void> {
    if (this.syncJoinable) return this.syncJoinable;
    const previous = this.syncRunning ?? Promise.resolve();
    const round: Promise<void> = previous.catch(() => undefined).then(() => {
      this.syncJoinable = undefined; // from here on, callers wait for the next round
      this.syncRunning = round;
      return this.syncStateOnce(what);
    }).finally(() => {
      if (this.syncRunning === round) this.syncRunning = undefined;
    });
    this.syncJoinable = round;
    return round;
  }

  private async syncStateOnce(what: string): Promise<void> {
    try {
      const ends = await this.withDeadline(this.admin!.fetchTopicOffsets(this.stateTopic), what);
      const state = new Map(ends.filter((x) => Number(x.high) > Number(x.low)).map((x) => [x.partition, Number(x.high)]));
      await this.waitFor({ state }, this.deadlineMs);
    } catch (err) {
      throw unavailable(err, what);
    }
  }

  /**
   * The view's mail; an id the view does not know yet (accepted on another node a moment ago)
   * is looked up again after catching up with the state topic, so no node answers "not found"
   * for a mail another node has acknowledged.
   */
  private async lookup(id: MailId): Promise<QueuedMail | undefined> {
    const m = this.view.mails.get(id);
    if (m) return m;
    await this.syncState('lookup');
    return this.view.mails.get(id);
  }

  /** Strict across nodes: waits for the view to reach the state topic's end before answering. */
  async checkLease(id: MailId, token: string): Promise<boolean> {
    this.assertOpen();
    await this.syncState('check lease');
    return leaseValid(this.view.mails.get(id), token, this.now());
  }

  /**
   * A compare-and-set write of Lease.sending, so the state topic orders it against every node's
   * hold or removal: one written first makes this answer false; one written after is refused.
   */
  commitDelivery(id: MailId, token: string): Promise<boolean> {
    return this.leaseTransition(id, 'commit delivery', (m, now) => applyCommitDelivery(m, token, now));
  }

  async settleDelivery(id: MailId, token: string): Promise<void> {
    try {
      await this.transition(id, 'settle delivery', (m, now) => applySettleDelivery(m, token, now), true);
    } catch (err) {
      if (!(err instanceof MailNotFoundError)) throw err;
    }
  }

  recordAttempt(id: MailId, token: string, result: AttemptResult): Promise<QueuedMail> {
    return this.transition(id, 'record attempt', (m, now) => applyAttempt(m, token, result, result.now ?? now));
  }

  async releaseLease(id: MailId, token: string): Promise<void> {
    await this.transition(id, 'release lease', (m, now) => applyReleaseLease(m, token, now));
  }

  hold(id: MailId, reason?: string): Promise<QueuedMail> {
    return this.transition(id, 'hold', (m, now) => applyHold(m, reason, now));
  }

  release(id: MailId): Promise<QueuedMail> {
    return this.transition(id, 'release', (m, now) => applyRelease(m, now));
  }

  remove(id: MailId, reason?: string): Promise<QueuedMail> {
    return this.transition(id, 'remove', (m, now) => applyRemove(m, reason, now));
  }

  bounce(id: MailId, reason?: string, recipients?: string[]): Promise<QueuedMail> {
    return this.transition(id, 'bounce', (m, now) => applyBounce(m, reason, now, recipients));
  }

  redirect(id: MailId, from: string, to: string): Promise<QueuedMail> {
    return this.transition(id, 'redirect', (m, now) => applyRedirect(m, from, to, now));
  }

  retryNow(id: MailId): Promise<QueuedMail> {
    return this.transition(id, 'retry now', (m, now) => applyRetryNow(m, now));
  }

  setPriority(id: MailId, priority: number): Promise<QueuedMail> {
    return this.transition(id, 'set priority', (m, now) => applySetPriority(m, priority, now));
  }

  setNotBefore(id: MailId, notBefore: Millis): Promise<QueuedMail> {
    return this.transition(id, 'set not-before', (m, now) => applySetNotBefore(m, notBefore, now));
  }

  // ---------------------------------------------------------------- reads

  async get(id: MailId): Promise<QueuedMail | undefined> {
    this.assertOpen();
    return this.lookup(id);
  }

  async readBody(id: MailId): Promise<NodeJS.ReadableStream> {
    this.assertOpen();
    const mail = await this.lookup(id);
    if (!mail || isTerminal(mail.state)) throw new MailNotFoundError(id);
    const cached = this.bodyCache.stream(id);
    if (cached) return cached;
    await this.spilling.get(id);
    const unspilled = this.unspilled.get(id);
    if (unspilled) return Readable.from([unspilled]);
    const path = this.bodyPath(id);
    if (!(await stat(path).catch(() => undefined))) {
      // Accepted by another node and not read by our consumer yet: catch up with the topic's end.
      try {
        await this.waitFor({ content: await this.contentEnds('read body') }, 60_000);
      } catch (err) {
        throw unavailable(err, 'read body');
      }
      if (!(await stat(path).catch(() => undefined))) throw new MailNotFoundError(id);
    }
    return createReadStream(path);
  }

  async browse(filter: BrowseFilter, opts?: BrowseOptions): Promise<BrowsePage> {
    this.assertOpen();
    return this.view.browse(filter, opts);
  }

  async stats(o: { now?: Millis; topN?: number } = {}): Promise<QueueStats> {
    this.assertOpen();
    return this.view.stats(o.now ?? this.now(), o.topN ?? STATS_TOP_N);
  }

  get sharedSettings(): SharedSettings {
    return this.settings;
  }

  subscribe(listener: (event: QueueEvent) => void): () => void {
    return this.view.subscribe(listener);
  }
}
