/**
 * The queue model and the one interface every queue backend implements.
 *
 * Stages (ingress, scheduler, admin, bounce) import only this file and `errors.ts` / `model.ts`
 * from `src/queue/`; which backend runs is decided once, by `openQueue()` in `index.ts`.
 *
 * Guarantees every backend gives (checked by the contract suite in `test/contract/`):
 * - `enqueue` resolves only once the message bytes and its metadata are durable
 *   (fsync for the spool, acks from all in-sync replicas for Kafka).
 * - Every transition is atomic: a caller never sees half of one.
 * - Among due mail, `reserveDue` hands out higher priority first, then earliest not-before,
 *   and bounds the starvation of low priorities (see `ReserveOptions.lowPriorityShare`).
 * - A lease that runs out (crashed worker) makes the mail due again.
 * - `commitDelivery` is the point of no return before the final `.` of DATA: either a hold or
 *   removal came first (then it answers false and nothing is sent), or it did and the hold or
 *   removal is refused (MailInFlightError, HTTP 409) until the attempt's outcome is recorded,
 *   the final `.` settled, or the lease ran out. So a hold or removal that was answered as done
 *   is never followed by a delivery.
 */

/** A sortable unique id (ULID, 26 characters of Crockford base32). */
export type MailId = string;

/** Epoch milliseconds. */
export type Millis = number;

export type MailState = 'queued' | 'active' | 'held' | 'delivered' | 'bounced' | 'expired' | 'removed';
export const MAIL_STATES: readonly MailState[] = ['queued', 'active', 'held', 'delivered', 'bounced', 'expired', 'removed'];
export const TERMINAL_STATES: readonly MailState[] = ['delivered', 'bounced', 'expired', 'removed'];

/**
 * pending: not tried yet; deferred: the last try failed temporarily; delivered: a 2xx;
 * failed: a permanent failure (5xx, null MX, …); expired: still deferred when the lifetime ran out.
 */
export type RecipientStatus = 'pending' | 'deferred' | 'delivered' | 'failed' | 'expired';
export const RECIPIENT_DONE: readonly RecipientStatus[] = ['delivered', 'failed', 'expired'];

export type DsnNotify = 'NEVER' | 'SUCCESS' | 'FAILURE' | 'DELAY';

/** An SMTP reply as seen from a remote server, or one we made up (e.g. DNS failure). */
export interface SmtpReply {
  code: number;
  /** Enhanced status code (RFC 3463), e.g. "5.1.1". */
  enhanced?: string;
  message: string;
}

export interface Recipient {
  address: string;
  status: RecipientStatus;
  /** DSN NOTIFY (RFC 3461); absent means the default (FAILURE, DELAY). */
  notify?: DsnNotify[];
  /** DSN ORCPT, as given: "rfc822;user@example.org". */
  orcpt?: string;
  lastReply?: SmtpReply;
  /** The host that gave lastReply. */
  remoteHost?: string;
  lastAttemptAt?: Millis;
}

/** One delivery attempt of one mail to one destination, kept with the mail for operators. */
export interface AttemptRecord {
  at: Millis;
  /** MX / smarthost host (and address) tried, when a connection was made or tried. */
  host?: string;
  recipients: string[];
  outcome: 'delivered' | 'deferred' | 'failed' | 'expired';
  reply?: SmtpReply;
  /** Duration of the attempt in ms. */
  durationMs?: number;
}

/** Why a mail got its priority, delay or hold: the rule name, an SMTP extension, or an operator. */
export interface Classification {
  source: 'default' | 'rule' | 'mt-priority' | 'futurerelease' | 'operator';
  rule?: string;
  detail?: string;
  /** When an operator set it (retry now). */
  at?: Millis;
}

export interface ClientInfo {
  /** Remote IP address of the SMTP client. */
  address: string;
  /** EHLO/HELO name. */
  helo?: string;
  /** Reverse DNS name, when looked up. */
  hostname?: string;
  /** Authenticated user (SMTP AUTH). */
  authUser?: string;
  tls?: boolean;
  /** The listener that took it, "host:port". */
  listener?: string;
}

export interface QueuedMail {
  id: MailId;
  state: MailState;
  /** Reverse path; '' is the null sender (bounces). */
  sender: string;
  recipients: Recipient[];
  /** Size in bytes of the stored message (with our Received: header). */
  size: number;
  receivedAt: Millis;
  /** Numeric priority class: higher is served first. Names come from config `priorities`. */
  priority: number;
  /** Not delivered before this time. */
  notBefore: Millis;
  /** Number of delivery attempts made. */
  attempts: number;
  history: AttemptRecord[];
  dsn: { ret?: 'FULL' | 'HDRS'; envid?: string };
  /** The message needs SMTPUTF8 (non-ASCII addresses or headers). */
  smtputf8: boolean;
  bodyType: '7BIT' | '8BITMIME';
  client: ClientInfo;
  /** Copied from the headers at ingress so browse can filter without reading bodies. */
  subject?: string;
  messageId?: string;
  classification: { priority: Classification; delay?: Classification; hold?: Classification };
  /** Why it is held (operator or rule). */
  holdReason?: string;
  /** MT-PRIORITY (RFC 6710) as the client asked, -9..9. */
  mtPriority?: number;
  /** Set while state is 'active'. */
  lease?: Lease;
  /** Bumped by every change; used for fencing and for optimistic concurrency. */
  generation: number;
  updatedAt: Millis;
  /** When a delay warning (DSN action=delayed) was sent, if one was. */
  delayWarnedAt?: Millis;
  /**
   * An operator asked to bounce it (Queue.bounce): its next attempt fails what is left, with a
   * DSN; with `recipients` (lower-cased), only those, and the others go on as before.
   */
  bounceRequest?: { reason: string; at: Millis; recipients?: string[] };
}

export interface Lease {
  owner: string;
  /** Opaque, unique per reservation; every lease-holding call must present it. */
  token: string;
  until: Millis;
  /**
   * Final "."s of this attempt in flight: `commitDelivery` calls not yet settled. While it is
   * above 0 (and the lease lasts) a hold or removal is refused with MailInFlightError. The Kafka
   * backend records it in the state topic, so every node refuses; the spool keeps it in memory.
   */
  sending?: number;
}

export interface EnqueueRequest {
  /** From `newMailId()`; given by the caller so that the Received: header can name it. */
  id: MailId;
  sender: string;
  recipients: { address: string; notify?: DsnNotify[]; orcpt?: string }[];
  /** The whole message as it will be delivered (our Received: header included). */
  body: Buffer;
  priority: number;
  notBefore: Millis;
  hold?: { reason: string };
  dsn?: QueuedMail['dsn'];
  smtputf8?: boolean;
  bodyType?: QueuedMail['bodyType'];
  client: ClientInfo;
  subject?: string;
  messageId?: string;
  classification: QueuedMail['classification'];
  mtPriority?: number;
  receivedAt?: Millis;
}

export interface EnqueueOptions {
  /**
   * Called at most once, as soon as the mail is durable: from then on it is never lost, by a
   * crash either, even if it is not visible yet and even if `enqueue` later rejects for a storage
   * error (the backend keeps it and makes it visible when it can, at the latest after a restart).
   * The ingress answers 250 on it. The spool calls it once the mail's frame is fdatasync'ed in
   * its segment, before the LMDB transaction that indexes it; a backend that has no earlier
   * point need not call it (enqueue resolving says the same).
   */
  onDurable?: () => void;
}

export interface ReserveOptions {
  /** Who holds the lease (node or worker name), shown to operators. */
  owner: string;
  /** At most this many mails. */
  limit: number;
  leaseMs: number;
  /** Defaults to Date.now(). */
  now?: Millis;
  /**
   * Fraction (0..1) of the mails handed out that go to the oldest due mail of lower classes
   * even while higher classes have due mail, so low priorities never starve. Default 0.1.
   */
  lowPriorityShare?: number;
}

/** The result of one delivery attempt for one recipient. */
export interface RecipientOutcome {
  address: string;
  outcome: 'delivered' | 'deferred' | 'failed' | 'expired';
  reply?: SmtpReply;
  remoteHost?: string;
}

export interface AttemptResult {
  /** One entry per recipient tried; recipients not listed keep their status. */
  outcomes: RecipientOutcome[];
  /** Attempt records to append to the history (one per destination host tried). */
  history?: AttemptRecord[];
  /** When to try the recipients still deferred/pending again. Required if any remain. */
  retryAt?: Millis;
  /** Set when a delay warning was sent in this step. */
  delayWarnedAt?: Millis;
  /** Defaults to Date.now(). */
  now?: Millis;
}

export type SortField = 'received' | 'priority' | 'nextAttempt';

export interface BrowseFilter {
  state?: MailState | MailState[];
  priority?: number | number[];
  /** Exact sender address, case-insensitive; '' finds bounces. */
  sender?: string;
  /** Exact recipient address, case-insensitive. */
  recipient?: string;
  /** Recipient domain, case-insensitive. */
  domain?: string;
  since?: Millis;
  until?: Millis;
  minSize?: number;
  maxSize?: number;
  /** Subject or Message-ID contains (case-insensitive). */
  q?: string;
  /**
   * A recipient's last reply contains (case-insensitive), as "CODE ENHANCED text" ("421 4.7.0
   * [TSS04]", "over quota"): `mailq | grep` for what remote servers said.
   */
  reply?: string;
}

export interface BrowseOptions {
  sort?: SortField;
  order?: 'asc' | 'desc';
  /** Opaque, from a previous page's nextCursor. */
  cursor?: string;
  /** 1..1000, default 50. */
  limit?: number;
}

export interface BrowsePage {
  items: QueuedMail[];
  nextCursor?: string;
  total: { count: number; exact: boolean };
}

export interface QueueStats {
  at: Millis;
  byState: Record<MailState, number>;
  /** Counts of non-terminal mail by numeric priority. */
  byPriority: Record<string, number>;
  /** receivedAt of the oldest non-terminal mail. */
  oldestReceivedAt?: Millis;
  /** Non-terminal mail by recipient domain, largest first (at most `topN`). */
  topDestinations: { domain: string; count: number }[];
  /** Like Postfix's qshape: non-terminal mail by domain and age bucket. */
  ageByDestination: { bucketsMinutes: number[]; rows: { domain: string; total: number; counts: number[] }[] };
}

export type QueueEventType =
  | 'enqueued' | 'reserved' | 'delivered' | 'deferred' | 'bounced' | 'expired'
  | 'removed' | 'held' | 'released' | 'updated' | 'purged';

export interface QueueEvent {
  type: QueueEventType;
  id: MailId;
  state: MailState;
  at: Millis;
  /** Present for 'updated' (priority / notBefore) and 'deferred'. */
  priority?: number;
  notBefore?: Millis;
}

export interface Queue {
  /** Which backend this is, for logs and /health. */
  readonly backend: 'spool' | 'kafka';

  /** Opens storage, recovers after a crash. Serves calls only after this resolves. */
  start(): Promise<void>;
  /** Flushes and closes; outstanding leases stay as they are (they expire). */
  close(): Promise<void>;

  /**
   * Stores a new mail; resolves once it is durable and visible to every read (get, browse,
   * reserveDue). Throws QueueUnavailableError / SpoolFullError. `opts.onDurable` may be called
   * earlier, once the mail can no longer be lost (see EnqueueOptions).
   */
  enqueue(req: EnqueueRequest, opts?: EnqueueOptions): Promise<QueuedMail>;

  /** Leases due mail (state queued, notBefore <= now) by priority, then notBefore. */
  reserveDue(opts: ReserveOptions): Promise<QueuedMail[]>;
  /** The earliest notBefore among queued mail, or undefined when none is queued. Lets a scheduler sleep. */
  nextDueAt(): Promise<Millis | undefined>;
  /** Extends a lease; false when the lease is gone (expired, removed, held, or token mismatch). */
  renewLease(id: MailId, token: string, leaseMs: number): Promise<boolean>;
  /** True while the lease is still held and the mail has not been removed or held. */
  checkLease(id: MailId, token: string): Promise<boolean>;
  /**
   * Asked just before the final "." of DATA: true when the lease is still held and the mail not
   * removed or held, and from then on hold and remove are refused (MailInFlightError) until
   * `settleDelivery`, `recordAttempt` or `releaseLease` with this token, or the lease's end.
   * Calls nest (one per final "." of the attempt).
   */
  commitDelivery(id: MailId, token: string): Promise<boolean>;
  /** The final "." of one `commitDelivery` got its answer (or its connection was lost). Never throws for a lost lease. */
  settleDelivery(id: MailId, token: string): Promise<void>;
  /**
   * Records the outcome of one attempt, atomically, and releases the lease: per-recipient status,
   * history; the mail becomes delivered/bounced when no recipient is left, expired when what is
   * left expired, otherwise queued again with notBefore = retryAt. A stale token throws LeaseLostError
   * (but outcomes for a mail removed meanwhile are still written to its history).
   */
  recordAttempt(id: MailId, token: string, result: AttemptResult): Promise<QueuedMail>;
  /** Gives the lease back without an attempt (shutdown); the mail is due again at once. */
  releaseLease(id: MailId, token: string): Promise<void>;

  // Operator actions. Each throws MailNotFoundError for an unknown id and
  // InvalidTransitionError when the state does not allow it (e.g. hold a delivered mail).
  hold(id: MailId, reason?: string): Promise<QueuedMail>;
  release(id: MailId): Promise<QueuedMail>;
  /**
   * Final: after it resolves the mail is never delivered (checkLease answers false). Refused
   * with MailInFlightError, as hold is, while a final "." is in flight (commitDelivery).
   */
  remove(id: MailId, reason?: string): Promise<QueuedMail>;
  /**
   * Gives the mail up, with a DSN to its sender (exim's -Mg): marks it, and makes it due now (a
   * held mail too); its next attempt fails every recipient not yet done, delivering nothing. An
   * attempt already running finishes first (what it delivers stays delivered).
   * With `recipients`, only those are given up (each must be a recipient not yet done:
   * RecipientNotPendingError otherwise); the others are tried as before, and a held mail stays held.
   * A second request adds its recipients to a first one still waiting (the newer reason for all).
   */
  bounce(id: MailId, reason?: string, recipients?: string[]): Promise<QueuedMail>;
  /**
   * Corrects a recipient not yet done (exim's -Mar with -Mmd, in one step): `from` is `to` from
   * now on, tried afresh; its ORCPT keeps the sender's address for DSNs. RecipientNotPendingError
   * for an address the mail lacks or one already done, RecipientExistsError when `to` is already
   * a recipient, InvalidTransitionError while an attempt runs (active) or when final. A queued
   * mail is due at once; a held one stays held.
   */
  redirect(id: MailId, from: string, to: string): Promise<QueuedMail>;
  /** Makes a queued (deferred or delayed) mail due now. */
  retryNow(id: MailId): Promise<QueuedMail>;
  setPriority(id: MailId, priority: number): Promise<QueuedMail>;
  setNotBefore(id: MailId, notBefore: Millis): Promise<QueuedMail>;

  get(id: MailId): Promise<QueuedMail | undefined>;
  /** The stored message bytes. Throws MailNotFoundError when the mail or its body is gone. */
  readBody(id: MailId): Promise<NodeJS.ReadableStream>;
  browse(filter: BrowseFilter, opts?: BrowseOptions): Promise<BrowsePage>;
  stats(opts?: { now?: Millis; topN?: number }): Promise<QueueStats>;

  /** Live change feed. Returns an unsubscribe function. */
  subscribe(listener: (event: QueueEvent) => void): () => void;

  /**
   * Run-time settings shared by every node on this queue (the Kafka backend); absent where the
   * queue has one node (the spool).
   */
  readonly sharedSettings?: SharedSettings;
}

/**
 * Sections of the run-time configuration (a dotted path such as "relay.reject" → its whole value)
 * that every node of a cluster applies, in one order.
 */
export interface SharedSettings {
  /** Stores the sections for every node; resolves once the cluster has them. Throws QueueUnavailableError. */
  publish(sections: Record<string, unknown>): Promise<void>;
  /**
   * Calls `listener` with the last value of every section published so far (at once, in one call),
   * then with the sections of each publish afterwards by any node, this one included, in the
   * cluster's order: one call a publish, so that sections changed together are applied together.
   * Returns an unsubscribe function.
   */
  subscribe(listener: (sections: Record<string, unknown>) => void): () => void;
}
