/**
 * The one schema of Spoolhouse's configuration (a public contract: tools and tests write these
 * files). It validates, fills defaults and gives the TypeScript type `Config`; nothing else reads
 * raw configuration. Durations are strings such as "500ms", "30s", "5m", "4h", "5d" (or a number
 * of milliseconds); sizes are bytes or strings such as "512KB", "25MB".
 *
 * Every key is documented in README.md ("Configuration reference"); keep the two in step.
 */
import { BlockList, isIP } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { z } from 'zod';

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, kb: 1024, k: 1024, mb: 1024 ** 2, m: 1024 ** 2, gb: 1024 ** 3, g: 1024 ** 3 };

/** Parses "500ms", "30s", "5m", "4h", "5d", "1w" (or a plain number of ms). Returns NaN when invalid. */
export function parseDuration(value: string | number): number {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : NaN;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$/i.exec(value);
  return m ? Math.round(Number(m[1]) * DURATION_UNITS[m[2]!.toLowerCase()]!) : NaN;
}

export function parseSize(value: string | number): number {
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 ? value : NaN;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]?b?)\s*$/i.exec(value);
  return m ? Math.round(Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!) : NaN;
}

export const duration = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const ms = parseDuration(v);
  if (Number.isNaN(ms)) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration (use e.g. "500ms", "30s", "5m", "4h", "5d")` });
    return z.NEVER;
  }
  return ms;
});

export const size = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const bytes = parseSize(v);
  if (Number.isNaN(bytes)) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a size (use bytes or e.g. "512KB", "25MB")` });
    return z.NEVER;
  }
  return bytes;
});

/** "host:port" or "[v6]:port". */
export function parseHostPort(value: string, defaultPort?: number): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(value.trim());
  if (!m) return undefined;
  const port = m[3] !== undefined ? Number(m[3]) : defaultPort;
  if (port === undefined || port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

const HOST_NAME = /^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/;

/** host:port (or host alone, with a default port) whose host is an IP address or a host name. */
function validHostPort(value: string, defaultPort?: number): boolean {
  const hp = parseHostPort(value, defaultPort);
  if (!hp) return false;
  // An IPv6 address only in brackets (parseHostPort takes the brackets off).
  return value.trim().startsWith('[') ? isIP(hp.host) === 6 : isIP(hp.host) === 4 || HOST_NAME.test(hp.host);
}

const hostPort = z.string().refine((v) => validHostPort(v), { message: 'must be "host:port" (IPv6 as "[::1]:port")' });
const hostOptionalPort = z.string().refine((v) => validHostPort(v, 25), { message: 'must be "host" or "host:port"' });

/** "10.0.0.0/8", "::1", "192.0.2.7". */
export function parseCidr(value: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const [address, prefixText] = value.trim().split('/');
  const version = isIP(address ?? '');
  if (!address || version === 0) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max || (prefixText !== undefined && !/^\d+$/.test(prefixText))) return undefined;
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** A BlockList of CIDRs (IPv4-mapped IPv6 clients match IPv4 entries too). */
export function networkList(cidrs: string[]): BlockList {
  const list = new BlockList();
  for (const c of cidrs) {
    const p = parseCidr(c)!;
    list.addSubnet(p.address, p.prefix, p.family);
  }
  return list;
}

const cidr = z.string().refine((v) => parseCidr(v) !== undefined, { message: 'must be an IP address or CIDR, e.g. "10.0.0.0/8" or "::1"' });
const domainName = z.string().regex(/^(?=.{1,253}$)(?!-)[a-z0-9-]+(\.[a-z0-9-]+)*\.?$/i, 'must be a domain name').transform((d) => d.toLowerCase().replace(/\.$/, ''));
const email = z.string().regex(/^[^@\s]+@[^@\s]+$/, 'must be an email address');

/** The parts of a reply `replyText` accepted ("554 5.7.1 text"). */
export function parseReplyText(reply: string): { code: number; enhanced: string; text: string } {
  const m = /^(\d{3}) (\d\.\d{1,3}\.\d{1,3}) (.*)$/s.exec(reply)!;
  return { code: Number(m[1]), enhanced: m[2]!, text: m[3]! };
}

/** An SMTP reply an operator writes: "554 5.7.1 text" (the enhanced code's class matches the code's). */
const replyText = z.string().regex(/^([45])\d\d \1\.\d{1,3}\.\d{1,3} \S.*$/, 'must be a reply such as "554 5.7.1 Not accepted here" (4xx or 5xx, its enhanced code of the same class)');

/** One entry of relay.reject (ingress/access.ts): every match key given must fit. */
const rejectEntry = z.strictObject({
  client: z.union([cidr.transform((c) => [c]), z.array(cidr).min(1)]).optional(),
  sender: z.string().optional(),
  senderDomain: z.string().optional(),
  recipient: z.string().optional(),
  recipientDomain: z.string().optional(),
  reply: replyText.optional(),
}).refine((e) => e.client || e.sender !== undefined || e.senderDomain !== undefined || e.recipient !== undefined || e.recipientDomain !== undefined, {
  message: 'an entry must match on client, sender, senderDomain, recipient or recipientDomain',
});

const listener = z.union([
  hostPort.transform((address) => ({ address })),
  z.strictObject({
    address: hostPort,
    /** A submission port: AUTH required before MAIL FROM (RFC 6409). */
    submission: z.boolean().optional(),
    /** TLS from the first byte (SMTPS, port 465) instead of STARTTLS. Needs smtp.tls. */
    implicitTls: z.boolean().optional(),
    /**
     * Load balancers (CIDRs) in front of this listener that open each connection with a PROXY
     * protocol v1 header (HAProxy's send-proxy): from them the header is required, and the client
     * address it carries is the one relay.networks, the connection limits and Received: see.
     */
    proxyProtocol: z.array(cidr).min(1).optional(),
  }),
]).transform((l) => ({ submission: false, implicitTls: false, proxyProtocol: [] as string[], ...l }));

const rateText = z.union([z.null(), z.string().regex(/^[1-9]\d*\/(s|m|h)$/, 'must be a whole number of mails per unit, such as "100/m" or "3600/h"')]);

const priorityName = z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'must be a lower-case name such as "bulk"');

const limits = z.strictObject({
  connections: z.number().int().min(1).max(1000).optional(),
  /** Where a destination's concurrency starts (Postfix's initial_destination_concurrency), then moved by feedback within 1..connections. */
  initialConnections: z.number().int().min(1).max(1000).optional(),
  messagesPerConnection: z.number().int().min(1).max(100_000).optional(),
  /** "10/s", "600/m", "3600/h"; null for no rate limit. */
  rate: z.union([z.null(), z.string().regex(/^\d+(\.\d+)?\/(s|m|h)$/, 'must be a rate such as "10/s", "600/m" or "3600/h"')]).optional(),
});

export function parseRate(rate: string | null | undefined): number | undefined {
  if (!rate) return undefined;
  const [n, unit] = rate.split('/');
  return Number(n) / ({ s: 1, m: 60, h: 3600 }[unit as 's' | 'm' | 'h']);
}

const ruleMatch = z.strictObject({
  /** Exact sender address or a glob with *, case-insensitive ("" matches the null sender). */
  sender: z.string().optional(),
  senderDomain: z.string().optional(),
  /** Matches when any recipient's domain matches (glob, e.g. "*.example.org"). */
  recipientDomain: z.string().optional(),
  authUser: z.string().optional(),
  /** Header name and a glob of its value, e.g. { "name": "Precedence", "value": "bulk" }; or a regex as "/…/i". */
  header: z.strictObject({ name: z.string().min(1), value: z.string() }).optional(),
  /** A glob ("*phish.example*") or "/regex/i" over the body as sent (not MIME-decoded), its first 256 KB. */
  body: z.string().min(1).optional(),
  /** Bytes or size string: the message is at least this big. */
  minSize: size.optional(),
  maxSize: size.optional(),
}).refine((m) => Object.keys(m).length > 0, { message: 'a rule must match on something' });

export const ruleSchema = z.strictObject({
  name: z.string().min(1).max(64),
  match: ruleMatch,
  /** Priority class name from `priorities.classes`. */
  priority: priorityName.optional(),
  delay: duration.optional(),
  hold: z.boolean().optional(),
  /** Refuse the mail at the end of DATA with this reply (Postfix's header_checks REJECT); nothing is queued. */
  reject: replyText.optional(),
}).refine((r) => r.priority !== undefined || r.delay !== undefined || r.hold !== undefined || r.reject !== undefined, {
  message: 'a rule must set priority, delay, hold or reject',
}).refine((r) => r.reject === undefined || (r.priority === undefined && r.delay === undefined && r.hold === undefined), {
  message: 'a rule that rejects sets nothing else (priority, delay and hold are for mail that is kept)',
});

export const prioritiesSchema = z.strictObject({
  /** Class name → numeric level; a higher level is served first. */
  classes: z.record(priorityName, z.number().int().min(0).max(99)).refine((c) => Object.keys(c).length > 0, { message: 'at least one class' }),
  default: priorityName,
  /** Share (0..1) of reservations that go to lower classes while higher ones have work: no starvation. */
  lowPriorityShare: z.number().min(0).max(0.5),
}).superRefine((p, ctx) => {
  if (!(p.default in p.classes)) ctx.addIssue({ code: 'custom', path: ['default'], message: `"${p.default}" is not one of the classes (${Object.keys(p.classes).join(', ')})` });
  const levels = Object.values(p.classes);
  if (new Set(levels).size !== levels.length) ctx.addIssue({ code: 'custom', path: ['classes'], message: 'two classes share one level' });
});

export const limitsSchema = z.strictObject({
  default: limits,
  /** Per destination domain overrides. */
  domains: z.record(domainName, limits),
});

const tlsFiles = z.strictObject({ cert: z.string().min(1), key: z.string().min(1) });

export const configSchema = z.strictObject({
  smtp: z.strictObject({
    listen: z.array(listener).min(1),
    /** Our name in the greeting, Received: and DSNs; null means the machine's host name. */
    hostname: z.union([z.null(), z.string().min(1)]).transform((h) => h ?? osHostname()),
    banner: z.string(),
    maxMessageSize: size,
    maxRecipients: z.number().int().min(1).max(100_000),
    maxConnections: z.number().int().min(1),
    maxConnectionsPerClient: z.number().int().min(1),
    /**
     * Clients counted as one by maxConnectionsPerClient and rateLimits.perClient: those whose
     * addresses share this many leading bits (ingress/policy.ts clientKey).
     */
    clientPrefixLength: z.strictObject({ ipv4: z.number().int().min(8).max(32), ipv6: z.number().int().min(16).max(128) }),
    /**
     * Transactions (MAIL FROM) per client address outside relay.networks and per authenticated
     * user, as "100/m"; over it, 450 4.7.1 (ingress/rate-limit.ts). null: no limit.
     */
    rateLimits: z.strictObject({ perClient: rateText, perUser: rateText }),
    /**
     * DNS blocklists (ingress/dnsbl.ts): "zone", or { zone, answers } when only some A records
     * list a client. Checked at RCPT for clients outside relay.networks that did not authenticate.
     */
    dnsbl: z.array(z.preprocess(
      (v) => (typeof v === 'string' ? { zone: v } : v),
      z.strictObject({
        zone: domainName,
        answers: z.union([z.null(), z.array(z.ipv4({ message: 'must be an IPv4 address such as "127.0.0.2"' })).min(1)]).default(null),
      }),
    )),
    /**
     * Checks of the HELO/EHLO name (ingress/helo.ts; Postfix's reject_invalid_helo_hostname,
     * reject_non_fqdn_helo_hostname, reject_unknown_helo_hostname), for clients outside
     * relay.networks that did not authenticate, answered at RCPT.
     */
    helo: z.strictObject({ rejectInvalid: z.boolean(), rejectNonFqdn: z.boolean(), rejectUnknown: z.boolean() }),
    /**
     * SPF (ingress/spf.ts) of the MAIL FROM identity of clients outside relay.networks that did not
     * authenticate: `check` adds Received-SPF, `reject` lists the results refused at MAIL FROM.
     */
    spf: z.strictObject({ check: z.boolean(), reject: z.array(z.enum(['fail', 'softfail', 'permerror', 'temperror'])) }),
    /**
     * DKIM keys for outgoing mail (ingress/dkim.ts): mail from relay.networks or authenticated
     * clients whose From: is in `domain` (or below it) is signed before it is stored.
     */
    dkim: z.array(z.strictObject({
      domain: domainName,
      selector: z.string().regex(/^[a-z0-9]([a-z0-9._-]{0,62})$/i, 'must be a DKIM selector such as "mail2026"'),
      /** File of the RSA private key (PEM). */
      privateKey: z.string().min(1),
    })),
    idleTimeout: duration,
    /**
     * Postfix's smtpd_soft_error_limit, smtpd_hard_error_limit and smtpd_error_sleep_time, for
     * clients outside relay.networks that did not authenticate (ingress/protocol.ts ErrorLimits):
     * after `soft` errors without a delivered mail each reply comes `sleep` late; at `hard` the
     * connection is closed with 421 4.7.0 (null: never); NOOP, VRFY, ETRN and RSET beyond `junk`
     * count as errors (smtpd_junk_command_limit).
     */
    errorLimits: z.strictObject({
      soft: z.number().int().min(1),
      hard: z.union([z.null(), z.number().int().min(1)]),
      sleep: duration,
      junk: z.number().int().min(0),
    }),
    /** Refusals kept in memory for GET /api/refusals and the console (the newest; 0 keeps none). */
    refusalsKept: z.number().int().min(0).max(1_000_000),
    /** Wait before the greeting to catch clients that talk first; skipped for relay.networks. */
    earlyTalkerDelay: duration,
    /**
     * Postfix's in_flow_delay: while delivery holds as much reserved mail as it may, a new mail
     * transaction (MAIL FROM) waits for one delivery to finish, at most this long; 0 turns it off.
     */
    inFlowDelay: duration,
    tls: z.union([z.null(), tlsFiles]),
    /** RFC 4865 FUTURERELEASE: the longest HOLDFOR/HOLDUNTIL accepted. */
    maxFutureRelease: duration,
    /**
     * Bare CR or LF in DATA (never an end of data either way; SMTP smuggling): "normalize" rewrites
     * them to CRLF (Postfix's smtpd_forbid_bare_newline = normalize), "reject" answers
     * 550 5.5.2 (clients in relay.networks are normalized, as Postfix exempts mynetworks).
     */
    bareLineEndings: z.enum(['normalize', 'reject']),
    /** RFC 6710 MT-PRIORITY: the lowest MT-PRIORITY value (-9..9) that maps to each class. */
    mtPriority: z.record(priorityName, z.number().int().min(-9).max(9)),
  }),
  relay: z.strictObject({
    networks: z.array(cidr),
    domains: z.array(domainName),
    /**
     * File of the addresses of relay.domains that exist ("user@domain" or "@domain" per line,
     * Postfix's relay_recipient_maps); others are refused 550 5.1.1 at RCPT. null: any address.
     */
    recipients: z.union([z.null(), z.string().min(1)]),
    /**
     * Characters that start an address extension (Postfix's recipient_delimiter, e.g. "+"): with
     * relay.recipients, "user+tag@domain" is accepted when "user@domain" is listed. null: none.
     */
    recipientDelimiter: z.union([z.null(), z.string().min(1).max(8).regex(/^[^\s@"<>]+$/, 'must be characters other than blanks, @, ", < and >')]),
    /** Clients, senders and recipients refused outright (Postfix's access maps with REJECT). */
    reject: z.array(rejectEntry),
    /** Refuse senders whose domain cannot receive mail (ingress/sender-domain.ts), from untrusted clients. */
    checkSenderDomain: z.boolean(),
  }),
  auth: z.strictObject({
    /** File of "user:bcrypt-hash" lines; null disables AUTH. */
    users: z.union([z.null(), z.string().min(1)]),
    /**
     * File of sender addresses (or "@domain") and the users who own them; when set, an
     * authenticated user may use only its own (Postfix's smtpd_sender_login_maps). null: any.
     */
    senders: z.union([z.null(), z.string().min(1)]),
    /** Allow AUTH without TLS (only sensible on loopback/test setups). */
    allowInsecure: z.boolean(),
    /** Failed AUTH attempts a session may make; the next failure is answered 421 4.7.0 and the connection closed. */
    maxFailures: z.number().int().min(1).max(100),
    /**
     * Failed AUTH attempts per client (smtp.clientPrefixLength) outside relay.networks, across its
     * sessions, as "30/h"; over it every AUTH is answered 454 4.7.0 unchecked. null: no limit.
     */
    failuresPerClient: rateText,
  }),
  queue: z.strictObject({
    backend: z.enum(['spool', 'kafka']),
  }),
  spool: z.strictObject({
    dir: z.string().min(1),
    /** Keep the metadata of finished mail (delivered, bounced, …) this long for operators, then purge it. */
    retainFinished: duration,
    /** LMDB map size upper bound. */
    maxSize: size,
    /** New mail is refused (452 4.3.1) while storing it would leave less than this free on the spool's file system. */
    minFree: size,
  }),
  kafka: z.strictObject({
    brokers: z.array(hostPort),
    clientId: z.string().min(1),
    /** Topics are named "<topicPrefix>.content", "<topicPrefix>.state", … */
    topicPrefix: z.string().regex(/^[a-zA-Z0-9._-]+$/, 'must be letters, digits, ".", "_" and "-" only (a Kafka topic name)'),
    partitions: z.number().int().min(1).max(1000),
    replicationFactor: z.number().int().min(1).max(10),
    /** Unique per node; defaults to the host name. */
    nodeId: z.union([z.null(), z.string().min(1)]),
    ssl: z.union([z.boolean(), z.strictObject({ ca: z.string().optional(), cert: z.string().optional(), key: z.string().optional(), rejectUnauthorized: z.boolean().optional() })]),
    sasl: z.union([z.null(), z.strictObject({ mechanism: z.enum(['plain', 'scram-sha-256', 'scram-sha-512']), username: z.string(), password: z.string() })]),
  }),
  priorities: prioritiesSchema,
  rules: z.array(ruleSchema),
  delivery: z.strictObject({
    /** Global number of concurrent delivery workers. */
    concurrency: z.number().int().min(1).max(10_000),
    heloName: z.union([z.null(), z.string().min(1)]),
    /**
     * The local address outgoing connections are made from (Postfix's smtp_bind_address and
     * smtp_bind_address6), per address family of the remote host; null: the system's choice.
     */
    bindAddress: z.strictObject({
      ipv4: z.union([z.null(), z.ipv4({ message: 'must be an IPv4 address of this host' })]),
      ipv6: z.union([z.null(), z.ipv6({ message: 'must be an IPv6 address of this host' })]),
    }),
    /** TCP port for MX delivery (25; tests point it elsewhere). */
    port: z.number().int().min(1).max(65535),
    smarthost: z.union([z.null(), z.strictObject({
      host: hostOptionalPort,
      auth: z.strictObject({ user: z.string(), pass: z.string() }).optional(),
      tls: z.enum(['none', 'starttls', 'required', 'implicit']).optional(),
    })]),
    /** Transport map: domain → "host:port". */
    routes: z.record(domainName, hostOptionalPort),
    /** Postfix's smtp_fallback_relay: hosts tried, in order, when no MX host of a domain could be used. */
    fallbackRelay: z.array(hostOptionalPort).max(16),
    /**
     * Recipient domains whose delivery is paused ("*": all), Postfix's defer_transports by
     * domain: each attempt defers them at once (4.3.2), without a lookup or a connection.
     */
    paused: z.array(z.union([z.literal('*'), domainName])),
    dns: z.strictObject({ servers: z.array(z.string()), timeout: duration }),
    /** bounceLifetime: the lifetime of mail with the null sender (DSNs; Postfix's bounce_queue_lifetime); null: `lifetime`. */
    retry: z.strictObject({ min: duration, max: duration, lifetime: duration, bounceLifetime: z.union([z.null(), duration]) }),
    /** Send a "delayed" DSN after this long; null for never. */
    delayWarning: z.union([z.null(), duration]),
    limits: limitsSchema,
    tls: z.strictObject({
      /** Try STARTTLS when offered. */
      opportunistic: z.boolean(),
      /** Verify certificates when TLS is used ("none" is Postfix's "may"). */
      verify: z.boolean(),
      /**
       * Per recipient domain, Postfix's smtp_tls_policy_maps levels: "none", "may"
       * (opportunistic, no verification), "encrypt" (STARTTLS required, not verified), "verify"
       * (STARTTLS required with a certificate valid for the MX host name). Beats the two above.
       */
      policy: z.record(z.string().regex(/^(?=.{1,253}$)(?!-)[a-z0-9-]+(\.[a-z0-9-]+)*$/, 'must be a domain name in lower case'), z.enum(['none', 'may', 'encrypt', 'verify'])),
      /** MTA-STS (RFC 8461, delivery/mta-sts.ts) for MX delivery to domains without a `policy` entry. */
      mtaSts: z.boolean(),
      /** Extra trusted CA certificates (PEM) for verifying remote servers and MTA-STS policy hosts, with the system's (Postfix's smtp_tls_CAfile). */
      caFile: z.union([z.null(), z.string().min(1)]),
    }),
    timeouts: z.strictObject({ connect: duration, greeting: duration, command: duration, data: duration }),
    /**
     * How long a connection that has sent all it had waits for more mail to the same destination
     * before QUIT (Postfix's smtp_connection_cache_time_limit, 2 s there).
     */
    connectionReuseWait: duration,
    /** How long a worker holds a mail before another may take it (crash recovery). */
    leaseTime: duration,
    /** Where double bounces go; null drops them with a log line. */
    postmaster: z.union([z.null(), email]),
  }),
  admin: z.strictObject({
    listen: hostPort,
    /** One operator token; null with no tokens means a random one is written to <spool.dir>/admin.token. */
    token: z.union([z.null(), z.string().min(16, 'must be at least 16 characters')]),
    tokens: z.array(z.strictObject({ name: z.string().min(1), token: z.string().min(16, 'must be at least 16 characters'), role: z.enum(['viewer', 'operator']) })),
    /** Certificate and key (PEM files): the API and console speak HTTPS only. null: plain HTTP. */
    tls: z.union([z.null(), tlsFiles]),
  }),
  log: z.strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    /** Pretty logs; default: when stdout is a terminal. */
    pretty: z.union([z.null(), z.boolean()]),
    /** Lines are written in batches of up to 4 KB, at the latest this long after they were logged; 0 writes each at once. */
    flushInterval: duration,
  }),
}).superRefine((c, ctx) => {
  for (const [i, rule] of c.rules.entries()) {
    if (rule.priority !== undefined && !(rule.priority in c.priorities.classes)) {
      ctx.addIssue({ code: 'custom', path: ['rules', i, 'priority'], message: `"${rule.priority}" is not a priority class (${Object.keys(c.priorities.classes).join(', ')})` });
    }
  }
  for (const name of Object.keys(c.smtp.mtPriority)) {
    if (!(name in c.priorities.classes)) ctx.addIssue({ code: 'custom', path: ['smtp', 'mtPriority', name], message: `"${name}" is not a priority class` });
  }
  c.smtp.listen.forEach((l, i) => {
    if (l.implicitTls && !c.smtp.tls) ctx.addIssue({ code: 'custom', path: ['smtp', 'listen', i, 'implicitTls'], message: 'needs smtp.tls (cert and key)' });
  });
  if (c.queue.backend === 'kafka' && c.kafka.brokers.length === 0) {
    ctx.addIssue({ code: 'custom', path: ['kafka', 'brokers'], message: 'queue.backend is "kafka" but no brokers are given' });
  }
});

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
export type Rule = Config['rules'][number];
export type Limits = z.output<typeof limits>;
