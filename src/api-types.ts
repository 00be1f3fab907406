/**
 * The admin REST API's JSON shapes, written once: what the admin server sends (src/admin builds
 * its answers as these types, so the compiler holds it to them), what the CLI prints from
 * (src/cli) and what the web console reads (admin-ui/src/api.ts imports this file type-only).
 *
 * Deliberately neutral: types only, no imports, no runtime code. The CLI may not import
 * src/admin or src/queue (.dependency-cruiser.cjs), and the console is browser code without
 * Node's types, so this file can depend on neither. It describes the wire, not the queue model:
 * src/queue/types.ts is the model, and src/admin/present.ts maps the one onto the other (with
 * return types from here, so a model change that breaks the contract fails to compile).
 * The JSON schemas in src/admin/schemas.ts describe the same shapes for OpenAPI.
 */

export type MailState = 'queued' | 'active' | 'held' | 'delivered' | 'bounced' | 'expired' | 'removed';
export type RecipientStatus = 'pending' | 'deferred' | 'delivered' | 'failed' | 'expired';
export type AttemptOutcome = 'delivered' | 'deferred' | 'failed' | 'expired';
export type SortField = 'received' | 'priority' | 'nextAttempt';

/** An SMTP reply; `enhanced` is the RFC 3463 code, e.g. "5.1.1". */
export interface SmtpReply { code: number; enhanced?: string; message: string }

export interface Recipient {
  address: string;
  status: RecipientStatus;
  lastReply?: SmtpReply;
  /** In a mail's detail, for a recipient not delivered: the kind of trouble lastReply tells of (rate-limited, invalid-recipient, …). */
  replyKind?: string;
  /** The host that gave lastReply. */
  remoteHost?: string;
  lastAttemptAt?: number;
  /** DSN NOTIFY (RFC 3461) and ORCPT, as the client gave them. */
  notify?: string[];
  orcpt?: string;
}

export interface AttemptRecord {
  at: number;
  host?: string;
  recipients: string[];
  outcome: AttemptOutcome;
  reply?: SmtpReply;
  durationMs?: number;
}

/** Why a mail got its priority, delay or hold. */
export interface Classification { source: string; rule?: string; detail?: string; at?: number }

/** A mail in a list (GET /api/messages) and the answer of every single-mail action. */
export interface MailSummary {
  id: string;
  state: MailState;
  /** '' is the null sender (bounces). */
  sender: string;
  /** At most 20 in lists; recipientCount has them all. */
  recipients: Recipient[];
  recipientCount: number;
  size: number;
  receivedAt: number;
  priority: number;
  /** Absent when no configured class has this level. */
  priorityName?: string;
  notBefore: number;
  attempts: number;
  subject?: string;
  messageId?: string;
  holdReason?: string;
  /** An operator asked to bounce it: its next attempt fails what is left, with a DSN. */
  /** An operator's bounce waiting for the next attempt; `recipients` (lower-cased) when only those. */
  bounceRequest?: { reason: string; at: number; recipients?: string[] };
  /** The most recent reply any recipient got. */
  lastReply?: SmtpReply;
}

/** The stored message, parsed: headers, text (never HTML), attachments listed with their sizes. */
export interface ParsedMessage {
  headers: { name: string; value: string }[];
  subject?: string;
  from?: string;
  to?: string;
  cc?: string;
  /** ISO 8601. */
  date?: string;
  text?: string;
  textTruncated?: boolean;
  hasHtml?: boolean;
  attachments: { filename?: string; contentType: string; size: number }[];
  /** Set when the body could not be read or parsed. */
  error?: string;
}

/** GET /api/messages/:id. */
export interface MailDetail extends MailSummary {
  history: AttemptRecord[];
  dsn: { ret?: 'FULL' | 'HDRS'; envid?: string };
  smtputf8: boolean;
  bodyType: '7BIT' | '8BITMIME';
  client: { address: string; helo?: string; hostname?: string; authUser?: string; tls?: boolean; listener?: string };
  classification: { priority: Classification; delay?: Classification; hold?: Classification };
  mtPriority?: number;
  /** Who is delivering it and until when (the lease token itself is never shown). */
  lease?: { owner: string; until: number };
  generation: number;
  updatedAt: number;
  delayWarnedAt?: number;
  parsed: ParsedMessage;
}

/** GET /api/messages. */
export interface BrowsePage {
  items: MailSummary[];
  nextCursor?: string;
  /** Exact, or an upper-bound estimate (`exact: false`). */
  total: { count: number; exact: boolean };
}

export interface Rates {
  /** Per minute, over the window. */
  acceptedPerMinute: number;
  deliveredPerMinute: number;
  deferredPerMinute: number;
  bouncedPerMinute: number;
  /** SMTP commands and transactions refused at the door (spoolhouse_rejected_total). */
  refusedPerMinute: number;
}

/** One point of GET /api/stats/history. */
export interface DepthSample {
  at: number;
  byState: Record<MailState, number>;
  rates: Rates;
}

/** GET /api/stats/history: the server's samples of queue depth and rates (a day, every 10 s by default). */
export interface DepthHistoryPage {
  everyMs: number;
  samples: DepthSample[];
}

/** GET /api/stats. */
export interface Stats {
  at: number;
  /** The node that answered (kafka.nodeId or its host name): rates, suspended destinations, refusals and replies are its own. */
  node: string;
  byState: Record<MailState, number>;
  /** Live mail by priority level, and by class name. */
  byPriority: Record<string, number>;
  byPriorityName: Record<string, number>;
  oldestReceivedAt: number | null;
  oldestAgeSeconds: number | null;
  topDestinations: { domain: string; count: number }[];
  /** Like Postfix's qshape; the last bucket is open-ended (null). */
  ageByDestination: {
    bucketsMinutes: (number | null)[];
    bucketLabels: string[];
    rows: { domain: string; total: number; counts: number[] }[];
  };
  rates: Rates;
  /** The refusals of `rates.refusedPerMinute` by reason (the label of spoolhouse_rejected_total), per minute. */
  refusedByReason: Record<string, number>;
  /** The seconds the rates were measured over: the window, or less on a node younger than it (the rates then extrapolated to a minute). */
  ratesWindowSeconds: number;
  /**
   * Destinations this node's delivery has suspended because no host could be reached (Postfix's
   * dead destinations): their mail is deferred without connecting until `until`.
   */
  suspendedDestinations: SuspendedDestination[];
  /** What this node is delivering now: destinations with connections open or mail waiting for one, most first (at most 20). */
  deliveringNow: DestinationConnections[];
}

export interface SuspendedDestination {
  /** The destination's key: its hosts (MX names, or the route or smarthost). */
  destination: string;
  domains: string[];
  /** When the next try may connect (ms since the epoch). */
  until: number;
  /** The last host's reply (or the made-up one for a connection failure). */
  reply: { code: number; enhanced?: string; message: string };
}

export type BulkAction = 'remove' | 'hold' | 'release' | 'retry' | 'priority' | 'bounce';

/** POST /api/messages/actions. */
export interface BulkResult {
  action: BulkAction;
  dryRun: boolean;
  /** Mails in a state the action applies to (and, for priority, of another priority). */
  matched: number;
  changed: number;
  /** Matched, but had moved on (delivered, released by someone else…) by the time of the action. */
  skipped: number;
  failed: number;
  /** At most 20. */
  errors: { id: string; message: string }[];
  /** Changed ids (at most 10,000; `changed` counts all), or a sample of 20 for a dry run. */
  ids: string[];
}

/** One reply of 400 or more the SMTP server sent (GET /api/refusals): who was refused, for what, why. */
export interface Refusal {
  /** Counts up from the node's start: the cursor of the next page. */
  seq: number;
  at: number;
  /** The client's address (behind a PROXY balancer, the one it reported). */
  client: string;
  /** The name it gave in HELO/EHLO, if it had. */
  helo?: string;
  /** The authenticated user, if any. */
  user?: string;
  /** The open transaction's sender (MAIL FROM accepted before this refusal). */
  sender?: string;
  /** What was answered: the command line (credentials never), "DATA (end of data)", or absent for a refusal at connect or an idle timeout. */
  command?: string;
  reply: { code: number; enhanced: string; text: string };
  /** The label of spoolhouse_rejected_total: relay, dnsbl, helo, spf, size, rate, auth, … */
  reason: string;
  /** The listener, "host:port". */
  listener: string;
}

/** GET /api/refusals: newest first. */
export interface RefusalPage {
  items: Refusal[];
  /** Give as `before` for older ones; absent at the end. */
  nextCursor?: number;
  /** How many this node keeps (the oldest go first). */
  capacity: number;
  /** Refusals since the node started, kept or not. */
  total: number;
}

/** One line of GET /api/stats/replies: recipients that got one reply from one destination. */
export interface ReplyDigestRow {
  outcome: 'deferred' | 'failed' | 'expired';
  /** What kind of trouble the reply tells of (src/scheduler/reply-kind.ts): invalid-recipient, mailbox-full, rate-limited, spam-block, … */
  kind: string;
  /** The recipients' domain. */
  domain: string;
  /** The reply with what varies from mail to mail masked (<ip>, <address>, # for ids and numbers). */
  reply: { code: number; enhanced?: string; message: string };
  /** Recipients in the window. */
  count: number;
  lastAt: number;
  /** The mail of the last one, to look at. */
  lastMailId: string;
  /** The last reply's text as the remote sent it. */
  example: string;
}

/** GET /api/stats/replies: this node's deferrals and bounces by destination and reply (pflogsumm's detail). */
export interface ReplyDigestPage {
  rows: ReplyDigestRow[];
  /** Recipients in the window, all rows (not only those listed). */
  total: number;
  /** Those recipients by kind of reply. */
  byKind: Record<string, number>;
  /** Recipients counted but not itemised (too many different replies in a minute). */
  notItemised?: number;
  windowSeconds: number;
}

/** GET /api/destinations/:domain: where this node would send the domain's mail now, looked up afresh. */
export interface DestinationView {
  domain: string;
  /** How it was found: its MX records, its own address (no MX), delivery.routes, delivery.smarthost; or not at all. */
  via: 'mx' | 'implicit-mx' | 'route' | 'smarthost' | 'none';
  /** In the order they would be tried; `address` when already looked up. */
  hosts: { host: string; port: number; preference?: number; address?: string }[];
  /** How TLS is used: the domain's delivery.tls.policy level, "verify" under MTA-STS enforce, else the defaults (absent). */
  tlsPolicy?: 'none' | 'may' | 'encrypt' | 'verify';
  /** The hosts are those its MTA-STS policy (enforce) allows. */
  mtaSts?: boolean;
  /** delivery.fallbackRelay, tried after `hosts` when none of them can be used. */
  fallbackRelay?: { host: string; port: number }[];
  /** Why nothing can be delivered now (via "none"): a DNS failure, a null MX, an MTA-STS policy naming no MX host, … */
  failure?: { permanent: boolean; reply: { code: number; enhanced?: string; message: string } };
  /** This node's delivery to it now; absent when this node has had no mail for it lately. */
  connections?: DestinationConnections;
}

/** A destination's connections on this node (its pool: the domains that share its hosts). */
export interface DestinationConnections {
  /** The pool's key (its hosts, the route or the smarthost) and the domains whose mail it carries. */
  destination: string;
  domains: string[];
  /** Connections open now. */
  open: number;
  /** How many it may open now: moved by the concurrency feedback between 1 and `limit` (1 while a suspended destination is probed). */
  allowed: number;
  /** delivery.limits' `connections` for it. */
  limit: number;
  /** Mails (recipient groups) waiting in this node's memory for a connection. */
  waiting: number;
}
