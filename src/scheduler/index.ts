/**
 * The scheduler (Postfix's qmgr): takes due mail from the queue, groups it by destination,
 * shapes traffic per destination, hands batches to the delivery stage, and turns the results
 * into one queue transition per mail (plus DSNs through the bounce stage).
 *
 * Guarantees:
 * - Every reserved mail ends in exactly one `recordAttempt` (outcomes for every recipient tried,
 *   history with host/reply/duration, retryAt) or, when nothing was tried (shutdown, removal,
 *   hold), one `releaseLease`. A lost lease is logged, never forced.
 * - A DSN is enqueued (durably) BEFORE the attempt is recorded: a crash in between can only
 *   duplicate a DSN, never lose one. If the DSN cannot be enqueued, its recipients are recorded
 *   as deferred instead of failed, so the DSN is made on the next try.
 * - The delivery stage asks `stillWanted` before the final "." of DATA: a mail removed or held
 *   (or whose lease was lost) during delivery is never finished.
 * - Limits: `delivery.concurrency` connections in all; per destination (`Destination.key`, which
 *   groups domains sharing MX hosts) `connections`, `messagesPerConnection` and a token-bucket
 *   `rate` (limits.ts). Config is read through `ConfigStore.current` every round, so a reload
 *   applies to the next reservation and the next batch.
 * - Dead destinations (Postfix's): a delivery call that reached no host (MessageResult.unreachable)
 *   suspends its destination for `delivery.retry.min`; its mail meanwhile is deferred at once,
 *   without a connection ("delivery temporarily suspended: <last reply>"), and then one
 *   connection at a time probes it until a host is reached. A mail an operator retried since its
 *   last attempt lifts the suspension for that probe at once. Not when another connection to it
 *   carried a transaction through meanwhile (judged when none is in flight): busy, not dead; and
 *   one that took mail here only once a whole cohort of connections has failed since (Postfix's).
 * - Concurrency feedback (Postfix's): a destination new to this node starts at its limits'
 *   `initialConnections`; each transaction carried through adds 1/n connection, each failed
 *   connection (refused, timed out, a 4xx greeting, a 421) takes 1/n away, within 1..connections.
 * - Order: the queue hands out higher priority first (with `lowPriorityShare` for the others);
 *   within a destination, batches are formed by priority, then not-before.
 * - No busy polling: the loop sleeps until `queue.nextDueAt()` or a queue event (enqueued,
 *   released, retry-now, …) wakes it; a safety wake every MAX_SLEEP_MS picks up leases that
 *   lapsed on another worker. Reservations are at least RESERVE_GAP_MS apart, so a stream of
 *   arrivals is taken in batches (fewer queue transactions, fuller connections) for ≤10 ms latency.
 * - Memory is bounded: at most `heldMailLimit(config)` reserved mails at once. A destination
 *   that is slow (rate limit) can fill this, as Postfix's active queue can; leases of waiting
 *   mail are renewed, so another worker does not take them meanwhile.
 * - `stop(timeoutMs)`: no new reservations or batches; not-started work is handed back at once;
 *   deliveries in flight get up to the timeout, then their leases are released too.
 */
import { isDeepStrictEqual } from 'node:util';
import { Gauge } from 'prom-client';
import type { ConfigStore } from '../config/store.js';
import type { Config } from '../config/schema.js';
import type { DestinationConnections } from '../api-types.js';
import type { DeliveryAgent, Destination, MessageResult, OutboundMessage, Reply } from '../delivery/types.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { LeaseLostError } from '../queue/errors.js';
import { domainOf, pendingRecipients, replyLine } from '../queue/model.js';
import type {
  AttemptRecord, Queue, QueueEvent, QueuedMail, Recipient, RecipientOutcome,
} from '../queue/types.js';
import { enqueueDsn, planDsn } from '../bounce/index.js';
import { limitsFor, TokenBucket, type DestinationLimits } from './limits.js';
import { isExpired, nextRetryAt, type RetryPolicy } from './retry.js';
import { ReplyDigest, type ReplyDigestPage } from './reply-digest.js';

export { backoffDelay, nextRetryAt, isExpired, expiresAt } from './retry.js';
export { limitsFor, TokenBucket } from './limits.js';

type HostsDestination = Extract<Destination, { kind: 'hosts' }>;

/** Longest sleep of the loop without an event (picks up lapsed leases, guards against a missed event). */
const MAX_SLEEP_MS = 5_000;
/** Sleep when the queue says mail is due but reserving found none (e.g. another node took it). */
const BUSY_BACKOFF_MS = 50;
/** Shortest time between two reserveDue calls (coalesces wake-ups under load). */
const RESERVE_GAP_MS = 10;
/** Mails asked for in one reserveDue call. */
const RESERVE_BATCH = 200;
/** How long a resolved destination is reused; failures are asked again sooner. */
const RESOLVE_TTL_MS = 60_000;
const RESOLVE_FAILURE_TTL_MS = 5_000;
/** Idle destination pools (and their rate buckets) are forgotten after this long. */
const IDLE_DESTINATION_MS = 10 * 60_000;

/**
 * Queue events after which there may be due mail that was not due before: only for a mail that is
 * queued now (mail enqueued or changed while held, e.g. by a hold rule, is not due, and waking
 * for it would cost a reserve transaction per RESERVE_GAP_MS while held mail streams in).
 */
const WAKE_EVENTS = new Set<QueueEvent['type']>(['enqueued', 'deferred', 'released', 'updated']);
function mayMakeDue(event: QueueEvent): boolean {
  return WAKE_EVENTS.has(event.type) && event.state === 'queued';
}

/** The most mails the scheduler holds reserved at once. */
export function heldMailLimit(config: Pick<Config, 'delivery'>): number {
  return Math.max(100, config.delivery.concurrency * 4);
}

export interface SchedulerOptions {
  config: ConfigStore;
  queue: Queue;
  delivery: DeliveryAgent;
  logger: Logger;
  metrics: Metrics;
  nodeName: string;
  /** Injectable for tests. */
  clock?: () => number;
  random?: () => number;
}

/** One reserved mail while its attempt runs. */
interface Attempt {
  mail: QueuedMail;
  token: string;
  leaseUntil: number;
  log: Logger;
  /** Jobs (destination batches) not yet finished. */
  jobsLeft: number;
  outcomes: RecipientOutcome[];
  history: AttemptRecord[];
  /** Why each outcome happened, for metrics labels: "via" or deferral/bounce reason. */
  labels: Map<string, string>;
  /** The lease is gone (removed, held, expired, taken): never start or finish a DATA. */
  lost: boolean;
  /** Shutdown took work back before it ran: remaining recipients are due again at once. */
  interrupted: boolean;
  /** The lease was handed back at shutdown; the in-flight result is dropped. */
  released: boolean;
  finishing: boolean;
}

/** A mail's recipients for one destination. */
interface Job {
  attempt: Attempt;
  recipients: Recipient[];
  seq: number;
  /** Final "."s sent for this job (commitDelivery said yes), settled when the job is done. */
  commits?: number;
}

class DestinationPool {
  readonly domains = new Set<string>();
  readonly jobs: Job[] = [];
  active = 0;
  /** Connections that sent their mail and wait (up to delivery.connectionReuseWait) for more: woken by new jobs. */
  readonly lingering = new Set<() => void>();
  idleSince: number;
  /**
   * Dead destination (Postfix's): no host could be reached. Until this moment its mail is
   * deferred without a connection, with `suspendedReply`.
   */
  suspendedUntil = 0;
  suspendedReply: Reply | undefined;
  /** Suspended before and not reached since: one connection at a time (a probe). */
  probing = false;
  /**
   * The concurrency feedback's window (Postfix's destination concurrency): connections this
   * destination may have open now, a fraction while it moves; kept within 1..limits.connections.
   */
  window: number;
  /** When a transaction on one of its connections last ended well (concurrency feedback 'ok'). */
  lastOkAt = -Infinity;
  /**
   * Postfix's failed pseudo-cohorts: 1/n for each connection failed since the last transaction
   * carried through (n: the connections allowed at the time). A destination that has taken mail
   * on this node is dead only once a whole cohort (1) has failed.
   */
  failedCohorts = 0;
  /**
   * A call reached no host (the first since the last that did): judged when no call is in flight;
   * until then no new connection is opened.
   */
  unreachable: { reply: Reply; since: number } | undefined;
  constructor(public destination: HostsDestination, public readonly bucket: TokenBucket, now: number, initialConnections: number) {
    this.idleSince = now;
    this.window = initialConnections;
  }

  /** Connections it may have open now: the window's whole part, within its limit (one while probing). */
  allowed(limits: DestinationLimits): number {
    return this.probing ? 1 : Math.max(1, Math.min(limits.connections, Math.floor(this.window)));
  }

  /** Keeps jobs ordered by priority (high first), then not-before, then arrival. */
  insert(job: Job): void {
    const before = (a: Job, b: Job) =>
      a.attempt.mail.priority !== b.attempt.mail.priority ? a.attempt.mail.priority > b.attempt.mail.priority
        : a.attempt.mail.notBefore !== b.attempt.mail.notBefore ? a.attempt.mail.notBefore < b.attempt.mail.notBefore
          : a.seq < b.seq;
    let lo = 0;
    let hi = this.jobs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (before(this.jobs[mid]!, job)) lo = mid + 1;
      else hi = mid;
    }
    this.jobs.splice(lo, 0, job);
  }
}

export class Scheduler {
  readonly #config: ConfigStore;
  readonly #queue: Queue;
  readonly #delivery: DeliveryAgent;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #owner: string;
  readonly #now: () => number;
  readonly #random: () => number;

  readonly #attempts = new Map<string, Attempt>();
  readonly #pools = new Map<string, DestinationPool>();
  readonly #resolved = new Map<string, { until: number; destination: Promise<Destination> }>();
  /** Deferrals and bounces of the last hour by destination and reply (GET /api/stats/replies). */
  readonly #replies: ReplyDigest;
  #activeConnections = 0;
  #jobSeq = 0;
  #lastReserveAt = 0;

  #started = false;
  #stopping = false;
  #loopDone: Promise<void> = Promise.resolve();
  #wakePending = false;
  #wakeSleeper: (() => void) | undefined;
  #unsubscribe: (() => void) | undefined;
  #rateTimer: NodeJS.Timeout | undefined;
  #rateTimerAt = Infinity;
  #renewTimer: NodeJS.Timeout | undefined;
  #idleWaiters: (() => void)[] = [];
  /** New mail transactions waiting for a delivery to finish (inFlow), oldest first. */
  readonly #flowWaiters: (() => void)[] = [];
  /** inFlow is slowing new mail down (logged when it starts and when it ends). */
  #inFlowSlowing = false;
  readonly #onConfigChange = (next: Config, previous: Config) => {
    // Where mail goes (smarthost, routes, DNS servers, the port, TLS levels) is looked up again
    // at the next attempt, not when a cached answer runs out: a new route applies at once.
    const { smarthost, routes, dns, port, tls } = next.delivery;
    const before = previous.delivery;
    if (!isDeepStrictEqual([smarthost, routes, dns, port, tls], [before.smarthost, before.routes, before.dns, before.port, before.tls])) this.#resolved.clear();
    this.#wake();
    this.#dispatch();
  };

  constructor(o: SchedulerOptions) {
    this.#config = o.config;
    this.#queue = o.queue;
    this.#delivery = o.delivery;
    this.#log = o.logger.child({ stage: 'scheduler' });
    this.#metrics = o.metrics;
    // Counted at scrape: a suspension ends by the clock, not by an event.
    const scheduler = this;
    new Gauge({
      name: 'spoolhouse_destinations_suspended',
      help: 'Destinations suspended because no host could be reached: their mail is deferred without connecting',
      registers: [o.metrics.registry],
      collect() {
        this.set(scheduler.suspendedDestinations().length);
      },
    });
    this.#owner = o.nodeName;
    this.#now = o.clock ?? Date.now;
    this.#random = o.random ?? Math.random;
    this.#replies = new ReplyDigest({ now: this.#now });
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#unsubscribe = this.#queue.subscribe((event) => {
      if (mayMakeDue(event)) this.#wake();
    });
    this.#config.on('change', this.#onConfigChange);
    this.#scheduleRenewal();
    this.#loopDone = this.#reserveLoop();
    this.#log.info({ owner: this.#owner }, 'scheduler started');
  }

  /** Stops taking work; lets deliveries in flight finish for up to `timeoutMs`, then releases the rest. */
  async stop(timeoutMs: number): Promise<void> {
    if (!this.#started || this.#stopping) return;
    this.#stopping = true;
    this.#unsubscribe?.();
    this.#config.off('change', this.#onConfigChange);
    clearTimeout(this.#rateTimer);
    clearTimeout(this.#renewTimer);
    this.#wake();
    for (const pool of this.#pools.values()) for (const wake of [...pool.lingering]) wake();
    for (const go of [...this.#flowWaiters]) go();
    await this.#loopDone;
    this.#returnWaitingJobs();
    const finished = await this.#waitIdle(timeoutMs);
    if (!finished) await this.#releaseInFlight();
    this.#log.info({ inFlightAtTimeout: !finished }, 'scheduler stopped');
  }

  /** Reserved mails not yet recorded (for tests and /health). */
  get inFlight(): number {
    return this.#attempts.size;
  }

  /**
   * Deferrals and bounces of the last hour by outcome, destination domain and reply (pflogsumm's
   * deferral and bounce detail), most recipients first.
   */
  replies(q: Parameters<ReplyDigest['top']>[0] = {}): ReplyDigestPage {
    return this.#replies.top(q);
  }

  /** Destinations suspended now (dead: no host could be reached), with when they resume and why. */
  suspendedDestinations(): { destination: string; domains: string[]; until: number; reply: Reply }[] {
    const now = this.#now();
    return [...this.#pools.values()].filter((p) => p.suspendedUntil > now && p.suspendedReply)
      .map((p) => ({ destination: p.destination.key, domains: [...p.domains], until: p.suspendedUntil, reply: p.suspendedReply! }));
  }

  /** This node's connections to the destination that carries `domain`'s mail, if it had mail for it lately. */
  destinationConnections(domain: string): DestinationConnections | undefined {
    const wanted = domain.toLowerCase();
    const pool = [...this.#pools.values()].find((p) => p.domains.has(wanted));
    return pool && this.#connectionsOf(pool);
  }

  /**
   * What this node is delivering now: each destination with connections open or mail waiting for
   * one, most connections and mail first (KumoMTA's ready queues, Postfix's qmgr in memory).
   */
  deliveringNow(limit = 20): DestinationConnections[] {
    return [...this.#pools.values()].filter((p) => p.active > 0 || p.jobs.length > 0)
      .map((p) => this.#connectionsOf(p))
      .sort((a, b) => b.open + b.waiting - (a.open + a.waiting) || a.destination.localeCompare(b.destination))
      .slice(0, limit);
  }

  #connectionsOf(pool: DestinationPool): DestinationConnections {
    const limits = limitsFor(pool.domains, this.#config.current);
    return {
      destination: pool.destination.key, domains: [...pool.domains], open: pool.active, allowed: pool.allowed(limits), limit: limits.connections, waiting: pool.jobs.length,
    };
  }

  /**
   * Postfix's in_flow_delay, for the ingress at MAIL FROM. While delivery holds as many reserved
   * mails as it may (heldMailLimit), mail arrives faster than it leaves: a new mail transaction
   * then waits until one delivery finishes (each finished attempt lets one waiting transaction
   * go, oldest first), at most `maxMs`; it is never refused. So arrivals follow deliveries, plus
   * at most one mail per session per `maxMs`. Undefined when there is no need to wait.
   */
  inFlow(maxMs: number): Promise<void> | undefined {
    if (maxMs <= 0 || !this.#started || this.#stopping) return undefined;
    const limit = heldMailLimit(this.#config.current);
    if (this.#attempts.size < limit) return undefined;
    if (!this.#inFlowSlowing) {
      this.#inFlowSlowing = true;
      this.#log.info({ held: this.#attempts.size, limit, inFlowDelayMs: maxMs }, 'delivery is behind: new mail waits for deliveries to finish (smtp.inFlowDelay)');
    }
    this.#metrics.inFlowWaits.inc();
    return new Promise<void>((resolve) => {
      const go = () => {
        clearTimeout(timer);
        const i = this.#flowWaiters.indexOf(go);
        if (i >= 0) this.#flowWaiters.splice(i, 1);
        resolve();
      };
      const timer = setTimeout(go, maxMs);
      this.#flowWaiters.push(go);
    });
  }

  /** One delivery finished: the oldest waiting transaction goes on. */
  #flowToken(): void {
    this.#flowWaiters[0]?.();
    // Logged once the held mail is well below the limit (not at every finish that dips under it).
    if (this.#inFlowSlowing && !this.#flowWaiters.length && this.#attempts.size <= (heldMailLimit(this.#config.current) * 3) / 4) {
      this.#inFlowSlowing = false;
      this.#log.info({ held: this.#attempts.size }, 'delivery caught up: new mail no longer waits');
    }
  }

  // ---- the reservation loop -------------------------------------------------------------

  #wake(): void {
    this.#wakePending = true;
    const wake = this.#wakeSleeper;
    this.#wakeSleeper = undefined;
    wake?.();
  }

  #sleep(ms: number): Promise<void> {
    if (this.#wakePending || this.#stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wakeSleeper = undefined;
        resolve();
      }, ms);
      this.#wakeSleeper = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async #reserveLoop(): Promise<void> {
    while (!this.#stopping) {
      try {
        const delay = await this.#reserveRound();
        if (delay > 0) await this.#sleep(delay);
      } catch (err) {
        this.#log.error({ err }, 'reserving due mail failed; trying again shortly');
        await this.#sleep(1_000);
      }
    }
  }

  /** One round: reserve what is due (within limits). Returns how long to sleep (0: go again). */
  async #reserveRound(): Promise<number> {
    const config = this.#config.current;
    const room = heldMailLimit(config) - this.#attempts.size;
    if (room <= 0) {
      this.#wakePending = false;
      return MAX_SLEEP_MS; // a finished mail wakes us
    }
    // Under a stream of arrivals, reserve at most once per RESERVE_GAP_MS: fewer, larger queue
    // transactions (and larger batches per connection) for a few ms of latency.
    const sinceLast = this.#now() - this.#lastReserveAt;
    if (sinceLast < RESERVE_GAP_MS) await new Promise((r) => setTimeout(r, RESERVE_GAP_MS - sinceLast));
    if (this.#stopping) return 0;
    this.#lastReserveAt = this.#now();
    this.#wakePending = false;
    const limit = Math.min(room, RESERVE_BATCH);
    const mails = await this.#queue.reserveDue({
      owner: this.#owner,
      limit,
      leaseMs: config.delivery.leaseTime,
      lowPriorityShare: config.priorities.lowPriorityShare,
    });
    for (const mail of mails) this.#admit(mail, config);
    if (this.#stopping) return 0;
    if (mails.length >= limit || this.#wakePending) return 0;
    if (mails.length > 0) return 0; // cheap to ask once more; the next round sleeps
    const next = await this.#queue.nextDueAt();
    if (this.#wakePending) return 0;
    if (next === undefined) return MAX_SLEEP_MS;
    const wait = next - this.#now();
    if (wait <= 0) {
      this.#log.debug({ nextDueAt: next, held: this.#attempts.size }, 'queue reports due mail but none could be reserved');
      return BUSY_BACKOFF_MS;
    }
    return Math.min(wait, MAX_SLEEP_MS);
  }

  // ---- routing a mail to destination pools -------------------------------------------------

  #admit(mail: QueuedMail, config: Config): void {
    const attempt: Attempt = {
      mail,
      token: mail.lease?.token ?? '',
      leaseUntil: mail.lease?.until ?? this.#now() + config.delivery.leaseTime,
      log: this.#log.child({ mailId: mail.id }),
      jobsLeft: 0,
      outcomes: [],
      history: [],
      labels: new Map(),
      lost: false,
      interrupted: false,
      released: false,
      finishing: false,
    };
    this.#attempts.set(mail.id, attempt);
    this.#route(attempt).catch((err: unknown) => {
      attempt.log.error({ err }, 'routing failed; handing the mail back');
      attempt.interrupted = true;
      void this.#finish(attempt);
    });
  }

  async #resolve(domain: string): Promise<Destination> {
    const now = this.#now();
    const cached = this.#resolved.get(domain);
    if (cached && cached.until > now) return cached.destination;
    const destination = this.#delivery.resolve(domain);
    const entry = { until: now + RESOLVE_TTL_MS, destination };
    this.#resolved.set(domain, entry);
    try {
      const d = await destination;
      if (d.kind === 'failure') entry.until = this.#now() + RESOLVE_FAILURE_TTL_MS;
      return d;
    } catch (err) {
      this.#resolved.delete(domain);
      throw err;
    }
  }

  async #route(attempt: Attempt): Promise<void> {
    const { mail } = attempt;
    const byDomain = new Map<string, Recipient[]>();
    for (const r of pendingRecipients(mail)) {
      const d = domainOf(r.address);
      byDomain.set(d, [...(byDomain.get(d) ?? []), r]);
    }
    if (mail.bounceRequest) {
      // Given up by an operator (Queue.bounce): every recipient left (or those it names) fails
      // now, with a DSN, and is looked up and connected to by no one; the others go on.
      const reply: Reply = { code: 550, enhanced: '5.0.0', message: `Delivery cancelled by the operator: ${mail.bounceRequest.reason}` };
      const named = mail.bounceRequest.recipients && new Set(mail.bounceRequest.recipients);
      const recipients: Recipient[] = [];
      for (const [domain, list] of byDomain) {
        const given = named ? list.filter((r) => named.has(r.address.toLowerCase())) : list;
        if (given.length === list.length) byDomain.delete(domain);
        else if (given.length) byDomain.set(domain, list.filter((r) => !given.includes(r)));
        recipients.push(...given);
      }
      for (const r of recipients) {
        attempt.outcomes.push({ address: r.address, outcome: 'failed', reply });
        attempt.labels.set(r.address, 'operator');
      }
      if (recipients.length) attempt.history.push({ at: this.#now(), recipients: recipients.map((r) => r.address), outcome: 'failed', reply, durationMs: 0 });
      attempt.log.info({ recipients: recipients.length, of: named ? 'some' : 'all', reason: mail.bounceRequest.reason }, 'bounced by the operator');
    }
    // delivery.paused: deferred at once, looked up and connected to by no one.
    const paused = this.#config.current.delivery.paused;
    for (const [domain, recipients] of byDomain) {
      if (!paused.includes('*') && !paused.includes(domain.toLowerCase())) continue;
      const reply: Reply = { code: 451, enhanced: '4.3.2', message: `delivery to ${domain || 'this destination'} is paused by the operator (delivery.paused)` };
      this.#recordDestinationFailure(attempt, { kind: 'failure', domain, key: domain, permanent: false, reply }, recipients, 'paused');
      byDomain.delete(domain);
    }
    const resolved = await Promise.all([...byDomain.keys()].map(async (domain) => ({ domain, destination: await this.#resolveSafely(domain) })));
    const jobs: { destination: HostsDestination; domain: string; recipients: Recipient[] }[] = [];
    for (const { domain, destination } of resolved) {
      const recipients = byDomain.get(domain)!;
      if (destination.kind === 'failure') {
        this.#recordDestinationFailure(attempt, destination, recipients);
        continue;
      }
      const same = jobs.find((j) => j.destination.key === destination.key);
      if (same) same.recipients.push(...recipients);
      else jobs.push({ destination, domain, recipients });
    }
    if (this.#stopping || attempt.lost) {
      attempt.interrupted = true;
      jobs.length = 0;
    }
    attempt.jobsLeft = jobs.length;
    if (jobs.length === 0) {
      await this.#finish(attempt);
      return;
    }
    const now = this.#now();
    for (const job of jobs) {
      const pool = this.#poolFor(job.destination, now);
      if (pool.suspendedUntil > now && operatorRetrySinceLastAttempt(mail)) {
        // An operator asked for a try now (Postfix's flush revives dead destinations too): one probe.
        pool.suspendedUntil = 0;
        attempt.log.info({ destination: pool.destination.key }, 'retry now by an operator: the destination\'s suspension is lifted for a probe');
      }
      pool.domains.add(job.domain);
      pool.insert({ attempt, recipients: job.recipients, seq: this.#jobSeq++ });
    }
    this.#dispatch();
  }

  async #resolveSafely(domain: string): Promise<Destination> {
    if (!domain) {
      return { kind: 'failure', domain, key: '', permanent: true, reply: { code: 553, enhanced: '5.1.3', message: 'Recipient address has no domain' } };
    }
    try {
      return await this.#resolve(domain);
    } catch (err) {
      this.#log.warn({ err, domain }, 'resolving a destination failed');
      return { kind: 'failure', domain, key: domain, permanent: false, reply: { code: 451, enhanced: '4.4.3', message: `Destination lookup failed: ${(err as Error).message}` } };
    }
  }

  #recordDestinationFailure(attempt: Attempt, destination: Extract<Destination, { kind: 'failure' }>, recipients: Recipient[], label = 'dns'): void {
    const outcome = destination.permanent ? 'failed' : 'deferred';
    for (const r of recipients) {
      attempt.outcomes.push({ address: r.address, outcome, reply: destination.reply });
      attempt.labels.set(r.address, label);
    }
    attempt.history.push({ at: this.#now(), recipients: recipients.map((r) => r.address), outcome, reply: destination.reply, durationMs: 0 });
    attempt.log.info({ domain: destination.domain, reply: destination.reply, outcome }, 'destination unavailable');
  }

  #poolFor(destination: HostsDestination, now: number): DestinationPool {
    let pool = this.#pools.get(destination.key);
    if (!pool) {
      const limits = limitsFor([destination.domain], this.#config.current);
      pool = new DestinationPool(destination, new TokenBucket(limits.ratePerSecond, now), now, limits.initialConnections);
      this.#pools.set(destination.key, pool);
    } else {
      pool.destination = destination; // the latest resolution (hosts may have changed)
    }
    return pool;
  }

  // ---- batches and connections ---------------------------------------------------------------

  #dispatch(): void {
    if (this.#stopping) return;
    const config = this.#config.current;
    const now = this.#now();
    const waiting = [...this.#pools.values()].filter((p) => p.jobs.length > 0)
      .sort((a, b) => b.jobs[0]!.attempt.mail.priority - a.jobs[0]!.attempt.mail.priority);
    let nextToken = Infinity;
    for (const pool of waiting) {
      if (pool.suspendedUntil > now) {
        this.#deferSuspended(pool);
        continue;
      }
      const limits = limitsFor(pool.domains, config);
      pool.bucket.setRate(limits.ratePerSecond, now);
      if (pool.lingering.size > 0) {
        // Open connections waiting for mail take it first; they open more if some is left.
        for (const wake of [...pool.lingering]) wake();
        pool.lingering.clear();
        continue;
      }
      // A connection that reached no host holds back new ones until those in flight tell
      // whether the destination is dead or only busy (#noteReachability).
      const connections = pool.unreachable ? 0 : pool.allowed(limits);
      while (pool.jobs.length > 0 && pool.active < connections && this.#activeConnections < config.delivery.concurrency) {
        const wanted = Math.min(limits.messagesPerConnection, pool.jobs.length);
        const granted = pool.bucket.take(wanted, now);
        if (granted === 0) {
          nextToken = Math.min(nextToken, pool.bucket.msUntilToken(now));
          break;
        }
        void this.#deliverBatch(pool, pool.jobs.splice(0, granted));
      }
    }
    if (nextToken < Infinity) this.#scheduleRateTimer(now + Math.max(1, nextToken));
    this.#forgetIdlePools(now);
  }

  #scheduleRateTimer(at: number): void {
    if (this.#rateTimer && this.#rateTimerAt <= at) return;
    clearTimeout(this.#rateTimer);
    this.#rateTimerAt = at;
    this.#rateTimer = setTimeout(() => {
      this.#rateTimer = undefined;
      this.#rateTimerAt = Infinity;
      this.#dispatch();
    }, Math.max(1, at - this.#now()));
  }

  /**
   * A delivery call reached no host of its destination: its mail waits `delivery.retry.min`
   * (Postfix's minimal_backoff_time, for which it marks a destination dead) before the next try,
   * and mail for it meanwhile is deferred without connecting. Any call that reaches a host ends
   * the suspension. A call that reached no host is judged when no other call to the destination
   * is in flight: if another connection carried a transaction through since it started, the
   * destination is busy (a remote refusing connections beyond its own limit), not dead, and the
   * concurrency feedback answers that, not a suspension.
   */
  #noteReachability(pool: DestinationPool, results: MessageResult[], startedAt: number): void {
    if (results.length > 0 && results.every((r) => r.unreachable)) {
      const reply = results[0]!.recipients[0]?.reply;
      // Judged once no other connection to the destination is in flight (below).
      if (reply && !pool.unreachable) pool.unreachable = { reply, since: startedAt };
    } else if (results.some((r) => !r.aborted && !r.unreachable)) {
      pool.unreachable = undefined;
      if (pool.probing || pool.suspendedUntil > 0) {
        pool.probing = false;
        pool.suspendedUntil = 0;
        pool.suspendedReply = undefined;
        this.#log.info({ destination: pool.destination.key, domains: [...pool.domains] }, 'destination reachable again');
      }
    }
    if (!pool.unreachable || pool.active > 0) return;
    const { reply, since } = pool.unreachable;
    pool.unreachable = undefined;
    // Another connection carried a transaction through meanwhile: busy (refusing connections
    // beyond its own limit), not dead. The concurrency feedback answers that. Nor is one that took
    // mail here before dead until a whole cohort of connections has failed since (a burst of
    // refusals at once from a throttling remote is less).
    if (pool.lastOkAt >= since) return;
    if (pool.lastOkAt > -Infinity && pool.failedCohorts < 1) return;
    const ms = this.#config.current.delivery.retry.min;
    if (ms <= 0) return;
    const wasProbing = pool.probing;
    pool.suspendedUntil = this.#now() + ms;
    pool.suspendedReply = reply;
    pool.probing = true;
    this.#log.warn({
      destination: pool.destination.key, domains: [...pool.domains], reply, resumesAt: new Date(pool.suspendedUntil).toISOString(), probe: wasProbing,
    }, 'destination unreachable: its mail is deferred without connecting until it resumes (delivery.retry.min)');
  }

  /**
   * Postfix's destination concurrency feedback: each transaction a host carried to its end adds
   * 1/n to the window (n: the connections it allows now), so a new destination opens one more
   * connection for about every n mails delivered, up to its limit; each connection that failed
   * (refused, timed out, a 4xx greeting, a 421: what a remote's throttle looks like) takes 1/n
   * away, down to one. Connections already open are not closed: fewer are opened.
   */
  #feedback(pool: DestinationPool, kind: 'ok' | 'failed'): void {
    const limits = limitsFor(pool.domains, this.#config.current);
    const before = pool.allowed(limits);
    const n = Math.max(1, Math.min(limits.connections, Math.floor(pool.window)));
    pool.window = Math.max(1, Math.min(limits.connections, pool.window + (kind === 'ok' ? 1 : -1) / n));
    if (kind === 'ok') {
      pool.lastOkAt = this.#now();
      pool.failedCohorts = 0;
    } else {
      pool.failedCohorts += 1 / n;
    }
    const after = pool.allowed(limits);
    if (after < before) {
      this.#log.info({ destination: pool.destination.key, domains: [...pool.domains], connections: after, limit: limits.connections }, 'destination concurrency lowered after a failed connection');
    } else if (after > before && pool.jobs.length > 0) {
      queueMicrotask(() => this.#dispatch());
    }
  }

  /** Finishes every waiting job of a suspended destination as deferred, without a connection. */
  #deferSuspended(pool: DestinationPool): void {
    const last = pool.suspendedReply!;
    const reply: Reply = { ...last, message: `delivery temporarily suspended: ${last.message}` };
    for (const job of pool.jobs.splice(0)) {
      const result: MessageResult = {
        id: job.attempt.mail.id,
        aborted: false,
        recipients: job.recipients.map((r) => ({ address: r.address, outcome: 'deferred' as const, reply })),
        hosts: [],
      };
      this.#jobDone(job, result, pool.destination, 'suspended');
    }
  }

  #forgetIdlePools(now: number): void {
    for (const [key, pool] of this.#pools) {
      if (pool.jobs.length > 0 || pool.active > 0 || pool.suspendedUntil > now) pool.idleSince = now;
      else if (now - pool.idleSince > IDLE_DESTINATION_MS) this.#pools.delete(key);
    }
  }

  #outbound(job: Job): OutboundMessage {
    const { mail } = job.attempt;
    return {
      id: mail.id,
      sender: mail.sender,
      recipients: job.recipients.map((r) => ({ address: r.address, ...(r.notify ? { notify: r.notify } : {}), ...(r.orcpt ? { orcpt: r.orcpt } : {}) })),
      size: mail.size,
      smtputf8: mail.smtputf8,
      bodyType: mail.bodyType,
      dsn: mail.dsn,
      openBody: () => this.#queue.readBody(mail.id),
      stillWanted: () => this.#stillWanted(job),
    };
  }

  /**
   * The point of no return (Queue.commitDelivery): yes, and a hold or removal is refused until
   * the job is done; no, and the "." is never sent.
   */
  async #stillWanted(job: Job): Promise<boolean> {
    const attempt = job.attempt;
    if (attempt.lost || attempt.released) return false;
    const ok = await this.#queue.commitDelivery(attempt.mail.id, attempt.token);
    if (ok) job.commits = (job.commits ?? 0) + 1;
    else {
      attempt.lost = true;
      attempt.log.info('mail removed, held or its lease lost during delivery; not finishing it');
    }
    return ok;
  }

  /**
   * One connection's worth of work: delivers `jobs`, then keeps the connection for more of the
   * pool's jobs (up to messagesPerConnection, within the rate; waiting a moment for arrivals).
   * Each job is finished as soon as the delivery stage reports its message.
   */
  async #deliverBatch(pool: DestinationPool, jobs: Job[]): Promise<void> {
    const startedAt = this.#now();
    pool.active++;
    this.#activeConnections++;
    const byId = new Map<string, Job>();
    const done = new Set<Job>();
    let carried = 0;
    const take = (batch: Job[]): OutboundMessage[] => {
      const out: OutboundMessage[] = [];
      for (const job of batch) {
        carried++;
        if (job.attempt.lost) {
          done.add(job);
          this.#jobDone(job, undefined, pool.destination);
          continue;
        }
        byId.set(job.attempt.mail.id, job);
        out.push(this.#outbound(job));
      }
      return out;
    };
    const onResult = (result: MessageResult) => {
      const job = byId.get(result.id);
      if (!job || done.has(job)) return;
      done.add(job);
      this.#jobDone(job, result, pool.destination);
    };
    const more = async (): Promise<OutboundMessage[]> => {
      for (;;) {
        const batch = this.#moreJobs(pool, carried);
        if (batch === undefined) return [];
        if (batch.length > 0) {
          const out = take(batch);
          if (out.length > 0) return out;
          continue; // every job taken was lost meanwhile: look again
        }
        if (!(await this.#lingerFor(pool))) return [];
      }
    };
    const onFeedback = (kind: 'ok' | 'failed') => this.#feedback(pool, kind);
    let results: MessageResult[] = [];
    try {
      const first = take(jobs);
      if (first.length > 0) results = await this.#delivery.deliver(pool.destination, first, { more, onResult, onFeedback });
    } catch (err) {
      // The delivery stage promises not to throw; if it does, nothing is known to have been sent.
      this.#log.error({ err, destination: pool.destination.key }, 'delivery stage threw; deferring the batch');
      const reply: Reply = { code: 451, enhanced: '4.3.0', message: `Local delivery error: ${(err as Error).message}` };
      results = [...byId.values()].map((j) => ({ id: j.attempt.mail.id, aborted: false, recipients: j.recipients.map((r) => ({ address: r.address, outcome: 'deferred' as const, reply })), hosts: [] }));
    } finally {
      pool.active--;
      this.#activeConnections--;
    }
    this.#noteReachability(pool, results, startedAt);
    try {
      for (const r of results) onResult(r);
      // A message the delivery stage gave no result for: finished as "no result" (deferred).
      for (const job of byId.values()) if (!done.has(job)) this.#jobDone(job, undefined, pool.destination);
    } finally {
      this.#dispatch(); // the connection slot is free whatever happened above
    }
  }

  /**
   * The next jobs for a connection of `pool` that has carried `carried` mails: undefined when it
   * should end (stopping, messagesPerConnection reached, rate exhausted), [] when none is waiting.
   */
  #moreJobs(pool: DestinationPool, carried: number): Job[] | undefined {
    if (this.#stopping) return undefined;
    const limits = limitsFor(pool.domains, this.#config.current);
    const room = limits.messagesPerConnection - carried;
    if (room <= 0) return undefined;
    if (pool.jobs.length === 0) return [];
    const granted = pool.bucket.take(Math.min(room, pool.jobs.length), this.#now());
    if (granted === 0) {
      this.#scheduleRateTimer(this.#now() + Math.max(1, pool.bucket.msUntilToken(this.#now())));
      return undefined;
    }
    const batch = pool.jobs.splice(0, granted);
    if (pool.jobs.length > 0) queueMicrotask(() => this.#dispatch()); // more waiting than this connection takes
    return batch;
  }

  /**
   * Waits up to delivery.connectionReuseWait for a job in `pool`; false when none came (or
   * stopping). Under a stream of arrivals a connection then carries up to messagesPerConnection
   * mails instead of the few that happened to be waiting when it opened; it still counts against
   * the destination's connection limit.
   */
  #lingerFor(pool: DestinationPool): Promise<boolean> {
    const waitMs = this.#config.current.delivery.connectionReuseWait;
    if (this.#stopping || waitMs <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        pool.lingering.delete(wake);
        resolve(!this.#stopping);
      };
      const timer = setTimeout(() => {
        pool.lingering.delete(wake);
        resolve(false);
      }, waitMs);
      pool.lingering.add(wake);
    });
  }

  /** `label`: the metrics reason for every outcome of `result` (default: from each reply). */
  #jobDone(job: Job, result: MessageResult | undefined, destination: HostsDestination, label?: string): void {
    const attempt = job.attempt;
    if (!result && !attempt.lost) {
      // The delivery stage gave no result for this message: nothing is known to be sent.
      const reply: Reply = { code: 451, enhanced: '4.3.0', message: 'No result from the delivery stage' };
      for (const r of job.recipients) {
        attempt.outcomes.push({ address: r.address, outcome: 'deferred', reply });
        attempt.labels.set(r.address, 'other');
      }
    } else if (!result || result.aborted) {
      // Removed, held or lease lost (stillWanted said no): this attempt leaves the recipients as they were.
    } else {
      const seen = new Set<string>();
      for (const r of result.recipients) {
        seen.add(r.address.toLowerCase());
        attempt.outcomes.push({ address: r.address, outcome: r.outcome, reply: r.reply, ...(r.remoteHost ? { remoteHost: r.remoteHost } : {}) });
        attempt.labels.set(r.address, label ?? (r.outcome === 'delivered' ? destination.via : reasonOf(r.reply)));
      }
      for (const r of job.recipients) {
        if (seen.has(r.address.toLowerCase())) continue;
        const reply: Reply = { code: 451, enhanced: '4.3.0', message: 'No result from the delivery stage' };
        attempt.outcomes.push({ address: r.address, outcome: 'deferred', reply });
        attempt.labels.set(r.address, 'other');
      }
      attempt.history.push(...historyOf(result, job.recipients.map((r) => r.address), this.#now()));
    }
    attempt.jobsLeft--;
    if (attempt.jobsLeft === 0) void this.#finish(attempt);
    else this.#settle(job);
  }

  /**
   * The job is done while other jobs of its attempt still run: its final "."s are settled, so a
   * hold or removal can stop those again (after the last job, recordAttempt does it).
   */
  #settle(job: Job): void {
    const { mail, token, log } = job.attempt;
    for (; job.commits; job.commits--) {
      this.#queue.settleDelivery(mail.id, token).catch((err: unknown) => log.warn({ err }, 'could not settle a final "."; holds of this mail are refused until the attempt is recorded'));
    }
  }

  // ---- finishing an attempt --------------------------------------------------------------------

  /** The mail's retry policy: a bounce (null sender) lives delivery.retry.bounceLifetime when set. */
  #retryPolicy(config: Config, mail: QueuedMail): RetryPolicy {
    const { min, max, lifetime, bounceLifetime } = config.delivery.retry;
    return { minMs: min, maxMs: max, lifetimeMs: mail.sender === '' && bounceLifetime !== null ? bounceLifetime : lifetime };
  }

  async #finish(attempt: Attempt): Promise<void> {
    if (attempt.finishing || attempt.released) return;
    attempt.finishing = true;
    try {
      if (attempt.outcomes.length === 0) await this.#handBack(attempt);
      else await this.#record(attempt);
    } catch (err) {
      attempt.log.error({ err }, 'recording the attempt failed; the lease will run out and the mail be tried again');
    } finally {
      this.#forget(attempt);
      this.#flowToken();
      this.#wake();
      if (this.#attempts.size === 0) for (const resolve of this.#idleWaiters.splice(0)) resolve();
    }
  }

  /** Drops the attempt from the held set (unless the mail was reserved again since, after a lapsed lease). */
  #forget(attempt: Attempt): void {
    if (this.#attempts.get(attempt.mail.id) === attempt) this.#attempts.delete(attempt.mail.id);
  }

  async #handBack(attempt: Attempt): Promise<void> {
    try {
      await this.#queue.releaseLease(attempt.mail.id, attempt.token);
    } catch (err) {
      if (!(err instanceof LeaseLostError)) throw err;
      attempt.log.debug('lease already gone');
    }
  }

  async #record(attempt: Attempt): Promise<void> {
    const config = this.#config.current;
    const now = this.#now();
    const { mail } = attempt;
    const policy = this.#retryPolicy(config, mail);
    const outcomes = this.#applyExpiry(attempt, now, policy);
    let delayWarnedAt: number | undefined;
    const plan = planDsn(mail, outcomes, { now, lifetimeMs: policy.lifetimeMs, delayWarningMs: config.delivery.delayWarning, postmaster: config.delivery.postmaster });
    if (plan.kind === 'drop') {
      attempt.log.warn({ recipients: plan.recipients.map((r) => r.address) }, 'bounce of a bounce (null sender) failed; dropped, no postmaster configured');
    } else if (plan.kind === 'send' && !(await this.#removedMeanwhile(attempt))) {
      try {
        const dsn = await enqueueDsn(this.#queue, mail, plan, { hostname: config.smtp.hostname, priority: dsnPriority(config, mail), now });
        attempt.log.info({ dsnId: dsn.id, to: plan.to, recipients: plan.recipients.map((r) => `${r.address} ${r.action} ${r.status}`) }, 'delivery status notification queued');
        if (plan.delayWarning) delayWarnedAt = now;
      } catch (err) {
        attempt.log.error({ err }, 'could not queue the DSN; keeping its recipients deferred so it is made on the next try');
        for (const o of outcomes) {
          if (o.outcome === 'failed' || o.outcome === 'expired') o.outcome = 'deferred';
        }
      }
    }
    const retryAt = attempt.interrupted ? now : nextRetryAt(mail, now, policy, this.#random);
    let updated: QueuedMail;
    try {
      updated = await this.#queue.recordAttempt(mail.id, attempt.token, {
        outcomes, history: attempt.history, retryAt, now, ...(delayWarnedAt !== undefined ? { delayWarnedAt } : {}),
      });
    } catch (err) {
      if (err instanceof LeaseLostError) {
        attempt.log.warn('lease lost before the attempt was recorded; another worker has the mail');
        return;
      }
      throw err;
    }
    this.#count(attempt, outcomes, config, now);
    // The one line per attempt (as Postfix's status=sent/deferred/bounced line): each recipient
    // with its outcome, the host that answered and its reply. The delivery stage's own line per
    // SMTP transaction is at debug level.
    attempt.log.info({
      state: updated.state,
      delivered: count(outcomes, 'delivered'), deferred: count(outcomes, 'deferred'),
      failed: count(outcomes, 'failed'), expired: count(outcomes, 'expired'),
      recipients: outcomes.map(describeOutcome),
      ...(updated.state === 'queued' ? { retryAt: new Date(updated.notBefore).toISOString() } : {}),
    }, 'delivery attempt recorded');
  }

  /** Recipients still deferred once the queue lifetime has run out become expired (4.4.7). */
  #applyExpiry(attempt: Attempt, now: number, policy: RetryPolicy): RecipientOutcome[] {
    const { mail } = attempt;
    if (attempt.interrupted || !isExpired(mail.receivedAt, now, policy)) return attempt.outcomes;
    const expired: string[] = [];
    const outcomes = attempt.outcomes.map((o) => {
      if (o.outcome !== 'deferred') return o;
      expired.push(o.address);
      attempt.labels.set(o.address, 'expired');
      return { ...o, outcome: 'expired' as const };
    });
    if (expired.length > 0) {
      attempt.history.push({ at: now, recipients: expired, outcome: 'expired', reply: { code: 421, enhanced: '4.4.7', message: 'Delivery time expired (queue lifetime exceeded)' } });
    }
    return outcomes;
  }

  /** A removed mail gets no DSN (the operator wanted it gone). */
  async #removedMeanwhile(attempt: Attempt): Promise<boolean> {
    const current = await this.#queue.get(attempt.mail.id);
    return current?.state === 'removed';
  }

  #count(attempt: Attempt, outcomes: RecipientOutcome[], config: Config, now: number): void {
    const priority = priorityName(config, attempt.mail.priority);
    for (const o of outcomes) {
      const label = attempt.labels.get(o.address) ?? 'other';
      if (o.outcome === 'delivered') {
        this.#metrics.deliveredTotal.inc({ via: label });
        this.#metrics.deliverySeconds.observe({ priority }, Math.max(0, now - attempt.mail.receivedAt) / 1000);
      } else if (o.outcome === 'deferred') {
        this.#metrics.deferredTotal.inc({ reason: label });
      } else {
        this.#metrics.bouncedTotal.inc({ reason: o.outcome === 'expired' ? 'expired' : label === 'dns' || label === 'operator' ? label : '5xx' });
      }
      if (o.outcome !== 'delivered' && o.reply) {
        const kind = this.#replies.record(o.outcome, domainOf(o.address).toLowerCase(), o.reply, attempt.mail.id);
        this.#metrics.repliesTotal.inc({ outcome: o.outcome, kind });
      }
    }
  }

  // ---- leases ------------------------------------------------------------------------------------

  #scheduleRenewal(): void {
    const leaseMs = this.#config.current.delivery.leaseTime;
    this.#renewTimer = setTimeout(() => {
      // The dispatch here is a safety net: batches are normally started by events (admission, a
      // finished connection, a rate token), but a missed one must not leave work waiting forever.
      this.#dispatch();
      void this.#renewLeases().finally(() => {
        if (!this.#stopping) this.#scheduleRenewal();
      });
    }, Math.max(100, Math.floor(leaseMs / 4)));
  }

  /** Renews leases that are past half their time, so slow deliveries and waiting batches keep their mail. */
  async #renewLeases(): Promise<void> {
    const leaseMs = this.#config.current.delivery.leaseTime;
    const now = this.#now();
    const due = [...this.#attempts.values()].filter((a) => !a.lost && !a.released && !a.finishing && a.leaseUntil - now < leaseMs / 2);
    await Promise.all(due.map(async (attempt) => {
      try {
        const ok = await this.#queue.renewLease(attempt.mail.id, attempt.token, leaseMs);
        if (ok) {
          attempt.leaseUntil = now + leaseMs;
        } else {
          attempt.lost = true;
          attempt.log.info('lease lost (mail removed, held, or taken after expiry); dropping its waiting batches');
          this.#dropWaitingJobs((job) => job.attempt === attempt);
        }
      } catch (err) {
        attempt.log.warn({ err }, 'renewing a lease failed');
      }
    }));
  }

  /** Takes jobs that have not started out of the pools; their mails finish with what they have. */
  #dropWaitingJobs(which: (job: Job) => boolean): void {
    const touched = new Set<Attempt>();
    for (const pool of this.#pools.values()) {
      for (let i = pool.jobs.length - 1; i >= 0; i--) {
        const job = pool.jobs[i]!;
        if (!which(job)) continue;
        pool.jobs.splice(i, 1);
        job.attempt.jobsLeft--;
        touched.add(job.attempt);
      }
    }
    for (const attempt of touched) if (attempt.jobsLeft === 0) void this.#finish(attempt);
  }

  // ---- shutdown ------------------------------------------------------------------------------------

  #returnWaitingJobs(): void {
    for (const pool of this.#pools.values()) for (const job of pool.jobs) job.attempt.interrupted = true;
    this.#dropWaitingJobs(() => true);
  }

  #waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.#attempts.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.#idleWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  async #releaseInFlight(): Promise<void> {
    const left = [...this.#attempts.values()].filter((a) => !a.finishing);
    this.#log.warn({ count: left.length }, 'deliveries still running at the shutdown timeout; releasing their leases');
    await Promise.all(left.map(async (attempt) => {
      attempt.released = true;
      attempt.lost = true;
      try {
        await this.#handBack(attempt);
      } catch (err) {
        attempt.log.error({ err }, 'releasing the lease failed; it will run out');
      } finally {
        this.#forget(attempt);
      }
    }));
    // Attempts already writing their outcome get a moment to finish.
    await this.#waitIdle(1_000);
  }
}

/** The mail's last "retry now" (model.applyRetryNow) came after its last attempt. */
function operatorRetrySinceLastAttempt(mail: QueuedMail): boolean {
  const delay = mail.classification.delay;
  if (delay?.source !== 'operator' || delay.detail !== 'retry now' || delay.at === undefined) return false;
  let last = 0;
  for (const h of mail.history) last = Math.max(last, h.at);
  return delay.at > last;
}

function count(outcomes: RecipientOutcome[], outcome: RecipientOutcome['outcome']): number {
  return outcomes.filter((o) => o.outcome === outcome).length;
}

/** A recipient's outcome for the log: `{ to, outcome, relay, reply: "250 2.0.0 text" }`. */
function describeOutcome(o: RecipientOutcome): { to: string; outcome: string; relay?: string; reply?: string } {
  const d: { to: string; outcome: string; relay?: string; reply?: string } = { to: o.address, outcome: o.outcome };
  if (o.remoteHost) d.relay = o.remoteHost;
  if (o.reply) d.reply = replyLine(o.reply);
  return d;
}

/** Deferral reason for metrics: "network" for connection trouble we made up, else "4xx". */
function reasonOf(reply: Reply): string {
  if (reply.enhanced?.startsWith('4.4.')) return 'network';
  if (reply.code >= 400 && reply.code < 500) return '4xx';
  if (reply.code >= 500) return '5xx';
  return 'other';
}

function outcomeOfReply(reply: Reply | undefined): AttemptRecord['outcome'] {
  if (!reply) return 'deferred';
  if (reply.code >= 200 && reply.code < 300) return 'delivered';
  if (reply.code >= 500) return 'failed';
  return 'deferred';
}

/**
 * History records for one message: every host given up on (fail-over) as deferred with its
 * reply, then the host that answered last split by recipient outcome.
 */
function historyOf(result: MessageResult, addresses: string[], now: number): AttemptRecord[] {
  const records: AttemptRecord[] = [];
  const hosts = result.hosts;
  for (const h of hosts.slice(0, -1)) {
    records.push({ at: h.at, host: h.host, recipients: addresses, outcome: outcomeOfReply(h.reply) === 'delivered' ? 'deferred' : outcomeOfReply(h.reply), ...(h.reply ? { reply: h.reply } : {}), durationMs: h.durationMs });
  }
  const last = hosts[hosts.length - 1];
  const groups = new Map<RecipientOutcome['outcome'], { recipients: string[]; reply: Reply }>();
  for (const r of result.recipients) {
    const g = groups.get(r.outcome) ?? { recipients: [], reply: r.reply };
    g.recipients.push(r.address);
    groups.set(r.outcome, g);
  }
  for (const [outcome, g] of groups) {
    records.push({
      at: last?.at ?? now,
      ...(last ? { host: last.host } : {}),
      recipients: g.recipients,
      outcome,
      reply: g.reply,
      ...(last ? { durationMs: last.durationMs } : {}),
    });
  }
  return records;
}

/** DSNs go at the default class, or the original's class when that is higher. */
function dsnPriority(config: Config, mail: QueuedMail): number {
  const level = config.priorities.classes[config.priorities.default] ?? 0;
  return Math.max(level, mail.priority);
}

function priorityName(config: Config, level: number): string {
  for (const [name, value] of Object.entries(config.priorities.classes)) if (value === level) return name;
  return String(level);
}
