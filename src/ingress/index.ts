/**
 * The SMTP ingress: listeners on smtp-server (extended in protocol.ts), session policy
 * (policy.ts), the message's final bytes (message.ts), classification (config/rules.ts), then
 * `queue.enqueue`.
 *
 * Guarantees:
 * - `250` is sent only after `queue.enqueue` resolved (the queue says the mail is durable). A
 *   QueueError is answered with its own code (451 4.3.0, 452 4.3.1) and the listener keeps serving.
 * - A client that goes away before the final "." leaves nothing in the queue: the message is only
 *   enqueued from the data stream's 'end', which smtp-server never emits for a cut-off DATA.
 * - Only CRLF.CRLF ends DATA (smtp-server); bare CR / bare LF in a message are rewritten to CRLF
 *   or refused with 550 5.5.2, per smtp.bareLineEndings (SMTP smuggling).
 * - Never an open relay: a recipient outside relay.domains needs relay.networks or AUTH (554 5.7.1).
 * - Each session reads `ConfigStore.current` when it connects and keeps that snapshot; a reload
 *   applies to the next session (and at once to smtp-server's own limits: size, recipients, idle
 *   timeout). The AUTH users file is re-read on every config change.
 *
 * MT-PRIORITY and FUTURERELEASE are advertised to every client (so a client learns the bounds
 * before it authenticates) and honoured only from relay.networks or authenticated clients;
 * anyone else who uses them gets 550 5.7.1.
 */
import dns from 'node:dns';
import type { AddressInfo } from 'node:net';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerDataStream, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import { BODY_MATCH_BYTES, classify } from '../config/rules.js';
import { parseHostPort, type Config } from '../config/schema.js';
import type { ConfigStore } from '../config/store.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { QueueError } from '../queue/errors.js';
import { newMailId } from '../queue/model.js';
import type { DsnNotify, EnqueueRequest, Queue } from '../queue/types.js';
import { hasEightBit } from '../bounce/dsn.js';
import { ConfigError } from '../config/load.js';
import { readTlsPair } from '../config/tls-files.js';
import { UsersFile } from './auth.js';
import { DkimSigner } from './dkim.js';
import { buildReceivedHeader, finalizeMessage, headerValue, normalizeLineEndings, scanLineEndings } from './message.js';
import {
  admissionDecision, clientKey, dnsblRefusal, isTrustedAddress, normalizeClientAddress, placeMail, rejectionReason, relayDecision, senderRequestDecision, senderRequestKeywords,
  unlistedRecipientDecision,
} from './policy.js';
import { RecipientTable } from './recipients.js';
import { RateLimiter, parseLimit } from './rate-limit.js';
import { DnsblChecker, type DnsblResult } from './dnsbl.js';
import { rejectAtMail, rejectAtRcpt } from './access.js';
import { SenderDomainCheck } from './sender-domain.js';
import { HeloCheck, heloChecksOn } from './helo.js';
import { SpfCheck } from './spf.js';
import { makeResolver } from '../delivery/resolve.js';
import { SenderOwners } from './senders.js';
import { RefusalLog } from './refusals.js';
import { hasNonAscii, replyError, SpoolhouseSmtpServer, type ErrorLimits, type Reply, type ReplyError, type SpoolhouseConnection } from './protocol.js';

export interface ListenerInfo {
  host: string;
  port: number;
  submission: boolean;
  implicitTls: boolean;
  /** Load balancers (CIDRs) that must send a PROXY header; empty: none. */
  proxyFrom: string[];
}

interface SessionState {
  config: Config;
  trusted: boolean;
  listener: ListenerInfo;
  /** Failed AUTH attempts so far in this session. */
  authFailures: number;
  /** smtp.dnsbl lookups of the client, started at connect for a client outside relay.networks. */
  dnsbl?: Promise<DnsblResult>;
  /** The label of spoolhouse_rejected_total for the refusal about to be sent, when its code does not say it. */
  rejectReason?: string;
  /** smtp.spf: the Received-SPF header of the current transaction's sender (set at MAIL FROM). */
  spf?: { sender: string; header: string };
}

/** Received: headers a message may already carry (Postfix hopcount_limit). */
const MAX_HOPS = 50;

/** How long a graceful close lets transactions in progress finish before answering 421. */
const CLOSE_GRACE_MS = 15_000;

export class SmtpIngress {
  readonly #store: ConfigStore;
  readonly #queue: Queue;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #servers: { server: SpoolhouseSmtpServer; listener: ListenerInfo }[] = [];
  readonly #sessions = new WeakMap<object, SessionState>();
  #users: UsersFile = UsersFile.empty();
  /** relay.recipients, when set. */
  #recipients: RecipientTable | undefined;
  /** auth.senders, when set. */
  #senders: SenderOwners | undefined;
  /** smtp.dkim's keys, when there are any. */
  #dkim: DkimSigner | undefined;
  /** smtp.rateLimits: buckets per client address and per authenticated user. */
  readonly #clientRates = new RateLimiter();
  /** auth.failuresPerClient: failed AUTH attempts per client key. */
  readonly #authFailures = new RateLimiter();
  readonly #dnsbl = new DnsblChecker(() => makeResolver(this.#store.current.delivery.dns));
  readonly #senderDomains = new SenderDomainCheck(() => makeResolver(this.#store.current.delivery.dns));
  readonly #helo = new HeloCheck(() => makeResolver(this.#store.current.delivery.dns));
  readonly #spf = new SpfCheck(() => makeResolver(this.#store.current.delivery.dns));
  readonly #userRates = new RateLimiter();
  /** smtp.refusalsKept: the door's recent refusals, for GET /api/refusals. */
  readonly #refusals: RefusalLog;
  #onChange = (next: Config) => this.#applyConfig(next);
  /** The scheduler's in-flow control (Scheduler.inFlow): a wait at MAIL FROM while delivery is behind. */
  readonly #inFlow?: (maxMs: number) => Promise<void> | undefined;

  constructor(o: { config: ConfigStore; queue: Queue; logger: Logger; metrics: Metrics; inFlow?: (maxMs: number) => Promise<void> | undefined }) {
    this.#store = o.config;
    this.#queue = o.queue;
    if (o.inFlow) this.#inFlow = o.inFlow;
    this.#logger = o.logger.child({ stage: 'ingress' });
    this.#metrics = o.metrics;
    this.#refusals = new RefusalLog(this.#store.current.smtp.refusalsKept);
    this.#loadTables(this.#store.current, true);
  }

  /** The door's recent refusals (every reply of 400 or more), newest kept. */
  get refusals(): RefusalLog {
    return this.#refusals;
  }

  async listen(): Promise<ListenerInfo[]> {
    const config = this.#store.current;
    const tls = config.smtp.tls ? readTls(config.smtp.tls) : undefined;
    for (const l of config.smtp.listen) {
      const hp = parseHostPort(l.address)!;
      const listener: ListenerInfo = { host: hp.host, port: hp.port, submission: l.submission, implicitTls: l.implicitTls, proxyFrom: l.proxyProtocol };
      const server = new SpoolhouseSmtpServer(this.#serverOptions(config, listener, tls), this.#hooks(listener));
      server.on('error', (err: Error & { code?: string }) => this.#logger.debug({ err: err.message, code: err.code }, 'smtp connection error'));
      let address: AddressInfo;
      try {
        address = await new Promise<AddressInfo>((resolve, reject) => {
          server.server.once('error', reject);
          server.listen(listener.port, listener.host, () => {
            server.server.off('error', reject);
            resolve(server.server.address() as AddressInfo);
          });
        });
      } catch (err) {
        // Do not leave the listeners opened so far running behind a failed start.
        await this.close();
        throw new Error(`cannot listen on ${l.address}: ${(err as Error).message}`, { cause: err });
      }
      listener.port = address.port;
      listener.host = address.address;
      if (listener.submission && !config.auth.users) this.#logger.warn({ port: listener.port }, 'submission listener without auth.users: every MAIL will be refused (530)');
      if (listener.submission && !tls && !config.auth.allowInsecure) this.#logger.warn({ port: listener.port }, 'submission listener without smtp.tls and auth.allowInsecure false: AUTH is impossible');
      this.#servers.push({ server, listener });
      this.#logger.info({
        host: listener.host, port: listener.port, submission: listener.submission, implicitTls: listener.implicitTls,
        ...(listener.proxyFrom.length ? { proxyProtocolFrom: listener.proxyFrom } : {}),
      }, 'smtp listening');
    }
    this.#store.on('change', this.#onChange);
    return this.#servers.map((s) => ({ ...s.listener }));
  }

  /** Stops accepting; idle sessions get 421 at once, transactions in progress get a grace period. */
  async close(): Promise<void> {
    this.#store.off('change', this.#onChange);
    await Promise.all(this.#servers.map(({ server }) => new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const conn of server.connections) {
        const busy = conn._handlerPending || !!conn._dataStream || !!conn.session.envelope?.mailFrom;
        if (!busy) conn.send(421, '4.3.2 Service shutting down');
      }
    })));
    this.#servers.length = 0;
  }

  // -------------------------------------------------------------------------------------------

  #serverOptions(config: Config, listener: ListenerInfo, tls: { key: Buffer; cert: Buffer } | undefined): SMTPServerOptions {
    return {
      name: config.smtp.hostname,
      banner: config.smtp.banner,
      logger: false,
      secure: listener.implicitTls,
      ...(tls ?? {}),
      hideSTARTTLS: !tls,
      hideENHANCEDSTATUSCODES: false,
      hideDSN: false,
      authMethods: ['PLAIN', 'LOGIN'],
      // Relay and submission policy decide about AUTH (onMailFrom / onRcptTo), not smtp-server.
      authOptional: true,
      allowInsecureAuth: true,
      size: config.smtp.maxMessageSize,
      maxRecipients: config.smtp.maxRecipients,
      socketTimeout: config.smtp.idleTimeout,
      closeTimeout: CLOSE_GRACE_MS,
      maxClients: config.smtp.maxConnections,
      // Reverse DNS names the client in Received: and logs; clients in relay.networks are our own
      // applications, so they skip it (as they skip the early-talker wait): it costs a lookup per mail.
      resolver: {
        reverse: (ip: string, cb: (err: NodeJS.ErrnoException | null, hostnames: string[]) => void) => {
          if (isTrustedAddress(ip, this.#store.current.relay.networks)) cb(null, []);
          else dns.reverse(ip, cb);
        },
      },
      onConnect: (session, cb) => this.#onConnect(session, listener, cb),
      onSecure: (_socket, session, cb) => {
        session.disabledCommands = this.#disabledCommands(this.#state(session, listener).config, session);
        cb();
      },
      onAuth: (auth, session, cb) => this.#onAuth(auth, session, cb),
      onMailFrom: (address, session, cb) => this.#onMailFrom(address, session, listener, cb),
      onRcptTo: (address, session, cb) => this.#onRcptTo(address, session, listener, cb),
      onData: (stream, session, cb) => this.#onData(stream, session, listener, cb),
    };
  }

  #hooks(listener: ListenerInfo) {
    return {
      admit: (conn: SpoolhouseConnection) => {
        const config = this.#store.current;
        let total = 0;
        let fromClient = 0;
        const prefix = config.smtp.clientPrefixLength;
        const client = clientKey(conn.remoteAddress, prefix);
        for (const { server } of this.#servers) {
          total += server.connections.size;
          for (const c of server.connections) if (clientKey(c.remoteAddress, prefix) === client) fromClient++;
        }
        return admissionDecision({ total, fromClient, maxConnections: config.smtp.maxConnections, maxConnectionsPerClient: config.smtp.maxConnectionsPerClient });
      },
      greetingDelayMs: (address: string) => {
        const config = this.#store.current;
        return isTrustedAddress(address, config.relay.networks) ? 0 : config.smtp.earlyTalkerDelay;
      },
      ehloFeatures: (conn: SpoolhouseConnection, features: string[]) => {
        const config = this.#state(conn.session, listener).config;
        const hideAuth = !conn.secure && !config.auth.allowInsecure;
        return [...features.filter((f) => !(hideAuth && f.startsWith('AUTH '))), ...senderRequestKeywords(config, Date.now())];
      },
      authRefusal: (conn: SpoolhouseConnection) => {
        const config = this.#state(conn.session, listener).config;
        if (!conn.secure && !config.auth.allowInsecure) return { code: 538, enhanced: '5.7.11', text: 'Encryption required for requested authentication mechanism' };
        return undefined;
      },
      onRejection: (code: number, enhanced: string, text: string, conn: SpoolhouseConnection, known?: string) => {
        const session = conn.session;
        const state = this.#sessions.get(session);
        const reason = known ?? state?.rejectReason ?? rejectionReason(code, enhanced);
        if (state) state.rejectReason = undefined;
        if (reason === 'errors') this.#logger.info({ client: conn.remoteAddress, helo: conn.hostNameAppearsAs || undefined }, 'client disconnected: too many errors (smtp.errorLimits)');
        this.#metrics.rejectedTotal.inc({ reason });
        const helo = conn.hostNameAppearsAs;
        const user = authUserOf(session);
        const sender = session.envelope?.mailFrom ? session.envelope.mailFrom.address : undefined;
        // A refusal at connect, or an idle client's timeout, answers no command of the client's.
        const command = reason === 'connections' || reason === 'timeout' ? undefined : conn.commandForLog;
        this.#refusals.add({
          at: Date.now(), client: conn.remoteAddress, ...(helo ? { helo } : {}), ...(user ? { user } : {}),
          ...(sender !== undefined ? { sender } : {}), ...(command ? { command } : {}),
          reply: { code, enhanced, text }, reason, listener: `${listener.host}:${listener.port}`,
        });
      },
      errorLimits: (conn: SpoolhouseConnection): ErrorLimits | undefined => {
        const state = this.#state(conn.session, listener);
        // Our own applications and users who logged in are not probing: their refusals are their answers.
        if (state.trusted || authUserOf(conn.session)) return undefined;
        const { soft, hard, sleep, junk } = state.config.smtp.errorLimits;
        return { soft, hard, sleepMs: sleep, junk };
      },
      expectsProxyHeader: (peer: string) => listener.proxyFrom.length > 0 && isTrustedAddress(peer, listener.proxyFrom),
    };
  }

  #state(session: SMTPServerSession, listener: ListenerInfo): SessionState {
    let state = this.#sessions.get(session);
    if (!state) {
      const config = this.#store.current;
      state = { config, trusted: isTrustedAddress(session.remoteAddress, config.relay.networks), listener, authFailures: 0 };
      this.#sessions.set(session, state);
    }
    return state;
  }

  /**
   * Answers a handler with a refusal whose metrics label is its own `reason` (onRejection takes it
   * from the session), for refusals a reply code cannot tell apart (a DNSBL's 554 5.7.1 from a
   * relay denial's, say).
   */
  #refuse(session: SMTPServerSession, cb: (err: Error) => void, err: ReplyError): void {
    const state = this.#sessions.get(session);
    if (state) state.rejectReason = err.reason;
    cb(err);
  }

  #disabledCommands(config: Config, session: SMTPServerSession): string[] {
    const disabled = ['XCLIENT', 'XFORWARD', 'WIZ', 'SHELL', 'KILL'];
    if (!config.smtp.tls || session.secure) disabled.push('STARTTLS');
    if (!config.auth.users) disabled.push('AUTH');
    return disabled;
  }

  #onConnect(session: SMTPServerSession, listener: ListenerInfo, cb: (err?: Error | null) => void): void {
    const state = this.#state(session, listener);
    session.disabledCommands = this.#disabledCommands(state.config, session);
    this.#logger.debug({ client: session.remoteAddress, trusted: state.trusted, listener: `${listener.host}:${listener.port}` }, 'smtp connection');
    // Started now, awaited at RCPT: by then the answer is usually in.
    if (!state.trusted && state.config.smtp.dnsbl.length) state.dnsbl = this.#dnsbl.check(normalizeClientAddress(session.remoteAddress), state.config.smtp.dnsbl);
    cb();
  }

  #onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, cb: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void): void {
    if (auth.method !== 'PLAIN' && auth.method !== 'LOGIN') {
      cb(replyError(504, '5.5.4', 'Unrecognized authentication type', 'auth'));
      return;
    }
    const user = auth.username ?? '';
    const guessing = this.#authGuessing(session);
    if (guessing) {
      // Not even checked: a password guesser learns nothing until its client's bucket refills.
      this.#logger.warn({ user, client: session.remoteAddress, key: guessing.key }, 'smtp auth refused: too many failures from this client (auth.failuresPerClient)');
      this.#refuse(session, cb, replyError(454, '4.7.0', `Too many failed authentication attempts from [${guessing.key}], try again later`, 'auth_rate'));
      return;
    }
    if (auth.method === 'PLAIN' && auth.authzid && auth.authcid && auth.authzid !== auth.authcid) {
      // RFC 4616 authorization identity: nobody may act as somebody else here.
      this.#logger.warn({ user, authzid: auth.authzid, client: session.remoteAddress }, 'smtp auth refused: proxy authorization');
      cb(replyError(535, '5.7.8', 'Authentication credentials invalid', 'auth'));
      return;
    }
    this.#users.verify(user, auth.password ?? '').then(
      (ok) => {
        if (ok) {
          this.#logger.info({ user, client: session.remoteAddress, method: auth.method }, 'smtp auth succeeded');
          cb(null, { user });
        } else {
          this.#authFailed(session, user, auth.method, cb);
        }
      },
      (err: unknown) => {
        this.#logger.error({ err, user, client: session.remoteAddress }, 'smtp auth error');
        cb(replyError(454, '4.7.0', 'Temporary authentication failure', 'auth'));
      },
    );
  }

  /** auth.failuresPerClient: the client's failures are over their rate (it is outside relay.networks). */
  #authGuessing(session: SMTPServerSession): { key: string } | undefined {
    const config = this.#store.current;
    const rate = parseLimit(config.auth.failuresPerClient);
    if (!rate || isTrustedAddress(session.remoteAddress, config.relay.networks)) return undefined;
    const key = clientKey(session.remoteAddress, config.smtp.clientPrefixLength);
    return this.#authFailures.has(key, rate, Date.now()) ? undefined : { key };
  }

  /** 535 5.7.8, or at the session's auth.maxFailures-th failure 421 4.7.0 and the connection closed. */
  #authFailed(session: SMTPServerSession, user: string, method: string, cb: (err: Error) => void): void {
    const config = this.#store.current;
    const rate = parseLimit(config.auth.failuresPerClient);
    if (rate && !isTrustedAddress(session.remoteAddress, config.relay.networks)) this.#authFailures.take(clientKey(session.remoteAddress, config.smtp.clientPrefixLength), rate, Date.now());
    const state = this.#sessions.get(session);
    const failures = state ? ++state.authFailures : 1;
    const max = state?.config.auth.maxFailures ?? this.#store.current.auth.maxFailures;
    this.#logger.warn({ user, client: session.remoteAddress, method, failures }, 'smtp auth failed');
    if (failures < max) {
      cb(replyError(535, '5.7.8', 'Authentication credentials invalid', 'auth'));
      return;
    }
    this.#logger.warn({ client: session.remoteAddress, failures }, 'too many failed auth attempts; closing the connection');
    cb(replyError(421, '4.7.0', 'Too many failed authentication attempts, closing connection', 'auth'));
    // smtp-server has written the reply by now; end the session after it.
    for (const { server } of this.#servers) {
      for (const conn of server.connections) if (conn.session === session) setImmediate(() => conn.close());
    }
  }

  #onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, listener: ListenerInfo, cb: (err?: Error | null) => void): void {
    const state = this.#state(session, listener);
    const authUser = authUserOf(session);
    if (listener.submission && !authUser) return cb(replyError(530, '5.7.0', 'Authentication required', 'auth'));
    // The running list, not the session's snapshot: an entry added mid-incident holds at once.
    const rejects = this.#store.current.relay.reject;
    const denied = rejects.length ? rejectAtMail(rejects, { client: normalizeClientAddress(session.remoteAddress), sender: address.address }) : undefined;
    if (denied) {
      this.#logger.info({ client: session.remoteAddress, sender: address.address, user: authUser }, 'sender or client refused (relay.reject)');
      return this.#refuse(session, cb, replyError(denied.code, denied.enhanced, denied.text, 'access'));
    }
    if (authUser && this.#senders && !this.#senders.mayUse(authUser, address.address)) {
      this.#logger.warn({ user: authUser, sender: address.address, client: session.remoteAddress }, 'sender address not owned by the authenticated user (auth.senders)');
      return cb(replyError(553, '5.7.1', `<${address.address}>: Sender address rejected: not owned by user ${authUser}`, 'sender_login'));
    }
    const over = this.#overRate(state, session.remoteAddress, authUser);
    if (over) {
      this.#logger.info({ client: session.remoteAddress, user: authUser }, `message rate limit exceeded (smtp.rateLimits.${over.limit})`);
      return cb(replyError(450, '4.7.1', `Error: too much mail from ${over.who}, try again later`, 'rate'));
    }
    state.spf = undefined;
    const { relay, smtp } = state.config;
    const anonymous = !state.trusted && !authUser;
    if (anonymous && ((relay.checkSenderDomain && address.address !== '') || smtp.spf.check)) {
      this.#senderChecks(state, address, session).then((refusal) => {
        if (!refusal) return this.#mailFromAccepted(state, address, authUser, cb);
        this.#refuse(session, cb, refusal);
      }, (err: unknown) => {
        this.#logger.error({ err, sender: address.address }, 'sender check failed');
        this.#refuse(session, cb, replyError(451, '4.3.0', 'Temporary error checking the sender, try again later', 'sender_check'));
      });
      return;
    }
    this.#mailFromAccepted(state, address, authUser, cb);
  }

  /** The DNS checks of an anonymous client's sender: relay.checkSenderDomain, then smtp.spf (whose verdict the session keeps). */
  async #senderChecks(state: SessionState, address: SMTPServerAddress, session: SMTPServerSession): Promise<ReplyError | undefined> {
    const { relay, smtp } = state.config;
    const sender = address.address;
    if (relay.checkSenderDomain && sender !== '') {
      const refusal = await this.#senderDomains.check(sender);
      if (refusal) {
        this.#logger.info({ client: session.remoteAddress, sender, reply: `${refusal.code} ${refusal.enhanced}` }, 'sender domain cannot receive mail (relay.checkSenderDomain)');
        return replyError(refusal.code, refusal.enhanced, refusal.text, 'sender_domain');
      }
    }
    if (!smtp.spf.check) return undefined;
    const verdict = await this.#spf.check({
      ip: normalizeClientAddress(session.remoteAddress), sender, helo: session.hostNameAppearsAs || '', hostname: smtp.hostname, reject: smtp.spf.reject,
    });
    if (verdict.refusal) {
      this.#logger.info({ client: session.remoteAddress, sender, spf: verdict.result, reply: `${verdict.refusal.code} ${verdict.refusal.enhanced}` }, 'sender refused by SPF (smtp.spf)');
      return replyError(verdict.refusal.code, verdict.refusal.enhanced, verdict.refusal.text, 'spf');
    }
    state.spf = { sender, header: verdict.header };
    return undefined;
  }

  /** The end of MAIL FROM once the sender is admitted: its own requests, then in-flow back-pressure. */
  #mailFromAccepted(state: SessionState, address: SMTPServerAddress, authUser: string | undefined, cb: (err?: Error | null) => void): void {
    const decision = senderRequestDecision(address.args, {
      trusted: state.trusted, authUser, maxFutureReleaseMs: state.config.smtp.maxFutureRelease, now: Date.now(),
    });
    if ('refusal' in decision) return cb(replyError(decision.refusal.code, decision.refusal.enhanced, decision.refusal.text, 'policy'));
    // Delivery behind: the transaction waits (never refused) until a delivery finishes, at most smtp.inFlowDelay.
    const wait = this.#inFlow?.(state.config.smtp.inFlowDelay);
    if (!wait) return cb();
    void wait.then(() => cb());
  }

  /** smtp.rateLimits: per client address (not for relay.networks, as Postfix's anvil) and per authenticated user. */
  #overRate(state: SessionState, client: string, authUser: string | undefined): { limit: string; who: string } | undefined {
    const { perClient, perUser } = state.config.smtp.rateLimits;
    const now = Date.now();
    const clientRate = state.trusted ? null : parseLimit(perClient);
    if (clientRate) {
      const key = clientKey(client, state.config.smtp.clientPrefixLength);
      if (!this.#clientRates.take(key, clientRate, now)) return { limit: 'perClient', who: `[${key}]` };
    }
    const userRate = authUser ? parseLimit(perUser) : null;
    if (userRate && !this.#userRates.take(authUser!, userRate, now)) return { limit: 'perUser', who: `user ${authUser}` };
    return undefined;
  }

  #onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, listener: ListenerInfo, cb: (err?: Error | null) => void): void {
    const state = this.#state(session, listener);
    if (/^postmaster$/i.test(address.address)) {
      // RFC 5321 §4.1.1.3: the domainless postmaster; it goes to delivery.postmaster.
      const postmaster = state.config.delivery.postmaster;
      if (!postmaster) return cb(replyError(550, '5.1.1', 'No postmaster address is configured here', 'recipient'));
      address.address = postmaster;
      return cb();
    }
    const rejects = this.#store.current.relay.reject;
    const denied = rejects.length
      ? rejectAtRcpt(rejects, { client: normalizeClientAddress(session.remoteAddress), sender: session.envelope.mailFrom ? session.envelope.mailFrom.address : '', recipient: address.address })
      : undefined;
    if (denied) {
      this.#logger.info({ client: session.remoteAddress, recipient: address.address }, 'recipient refused (relay.reject)');
      return this.#refuse(session, cb, replyError(denied.code, denied.enhanced, denied.text, 'access'));
    }
    const refusal = relayDecision({ recipient: address.address, trusted: state.trusted, authUser: authUserOf(session), relayDomains: state.config.relay.domains });
    if (refusal) {
      this.#logger.info({ client: session.remoteAddress, recipient: address.address }, 'relay denied');
      return cb(replyError(refusal.code, refusal.enhanced, refusal.text, 'relay'));
    }
    // The client's own checks; authenticated users are spared (a roaming user's dynamic address
    // is often listed, its laptop's name is rarely a host name).
    const unauthenticated = !authUserOf(session);
    const helo = unauthenticated && !state.trusted && heloChecksOn(state.config.smtp.helo);
    if ((state.dnsbl && unauthenticated) || helo) {
      void this.#clientChecksThenRecipient(state, address, session, cb, { dnsbl: unauthenticated, helo });
      return;
    }
    this.#recipientTable(state, address, session, cb);
  }

  /** smtp.dnsbl and smtp.helo, for a client outside relay.networks that did not authenticate; then the recipient table. */
  async #clientChecksThenRecipient(
    state: SessionState, address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void, checks: { dnsbl: boolean; helo: boolean },
  ): Promise<void> {
    if (checks.dnsbl && state.dnsbl && !(await this.#dnsblPasses(state, address, session, cb))) return;
    if (checks.helo) {
      const name = session.hostNameAppearsAs || '';
      let refusal: Reply | undefined;
      try {
        refusal = await this.#helo.check(name, state.config.smtp.helo);
      } catch (err) {
        this.#logger.error({ err, helo: name }, 'HELO name check failed');
        refusal = { code: 451, enhanced: '4.3.0', text: 'Temporary error checking the HELO name, try again later' };
      }
      if (refusal) {
        this.#logger.info({ client: session.remoteAddress, helo: name, recipient: address.address, reply: `${refusal.code} ${refusal.enhanced}` }, 'HELO name refused (smtp.helo)');
        return this.#refuse(session, cb, replyError(refusal.code, refusal.enhanced, refusal.text, 'helo'));
      }
    }
    this.#recipientTable(state, address, session, cb);
  }

  /** The client is on no smtp.dnsbl list (or no list answered); else the RCPT is refused and false returned. */
  async #dnsblPasses(state: SessionState, address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): Promise<boolean> {
    const client = normalizeClientAddress(session.remoteAddress);
    let result: DnsblResult;
    try {
      result = await state.dnsbl!;
    } catch (err) {
      result = { listed: null, errors: [{ zone: '*', code: (err as Error).message }] }; // the checker never rejects; fail open if it did
    }
    const { listed, errors } = result;
    if (errors.length) {
      // Fail open: a list that cannot be asked lists nobody. Logged once per session.
      this.#logger.warn({ client, errors }, 'DNS blocklist lookup failed; not treated as listed (smtp.dnsbl)');
      state.dnsbl = Promise.resolve({ listed, errors: [] });
    }
    if (listed) {
      this.#logger.info({ client, zone: listed.zone, answer: listed.answer, recipient: address.address }, 'client on a DNS blocklist (smtp.dnsbl)');
      const r = dnsblRefusal(client, listed.zone);
      this.#refuse(session, cb, replyError(r.code, r.enhanced, r.text, 'dnsbl'));
      return false;
    }
    return true;
  }

  #recipientTable(state: SessionState, address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const relay = state.config.relay;
    const unlisted = unlistedRecipientDecision({ recipient: address.address, relayDomains: relay.domains, table: this.#recipients, delimiters: relay.recipientDelimiter });
    if (unlisted) {
      this.#logger.info({ client: session.remoteAddress, recipient: address.address }, 'recipient not in relay.recipients');
      return cb(replyError(unlisted.code, unlisted.enhanced, unlisted.text, 'unknown_recipient'));
    }
    cb();
  }

  #onData(stream: SMTPServerDataStream, session: SMTPServerSession, listener: ListenerInfo, cb: (err?: Error | null, message?: string) => void): void {
    const state = this.#state(session, listener);
    const max = state.config.smtp.maxMessageSize;
    const chunks: Buffer[] = [];
    let size = 0;
    let oversized = false;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (oversized) return;
      if (size > max) {
        // Keep reading (the client is still sending) but stop holding the bytes.
        oversized = true;
        chunks.length = 0;
      } else {
        chunks.push(chunk);
      }
    });
    // smtp-server destroys the stream when the client goes away mid-DATA: nothing is queued.
    stream.on('error', (err: Error) => this.#logger.info({ client: session.remoteAddress, err: err.message }, 'client went away during DATA; nothing queued'));
    stream.on('end', () => {
      if (oversized) {
        cb(replyError(552, '5.3.4', `Message size exceeds fixed maximum message size of ${max} bytes`, 'size'));
        return;
      }
      // A message usually comes as one chunk (a buffer of its own: socket reads are never reused),
      // which needs no copy here; finalizeMessage makes the one copy that is stored.
      const data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
      this.#accept(data, session, state).then(
        (id) => cb(null, `2.0.0 Ok: queued as ${id}`),
        (err: unknown) => cb(this.#asReply(err, session)),
      );
    });
  }

  /** Builds the stored message and its metadata, enqueues it and resolves with its id once durable. */
  async #accept(data: Buffer, session: SMTPServerSession, state: SessionState): Promise<string> {
    const { config, listener } = state;
    const now = Date.now();
    const scan = scanLineEndings(data);
    if (scan.bareLf > 0 || scan.bareCr > 0) {
      if (config.smtp.bareLineEndings === 'reject' && !state.trusted) {
        throw replyError(550, '5.5.2', `Error: bare ${scan.bareLf > 0 ? '<LF>' : '<CR>'} received`, 'bare_line_ending');
      }
      data = normalizeLineEndings(data);
    }
    const id = newMailId(now);
    const mailFrom = session.envelope.mailFrom;
    const sender = mailFrom ? mailFrom.address : '';
    const recipients = session.envelope.rcptTo.map((r) => ({
      address: r.address,
      ...(r.dsn?.notify ? { notify: r.dsn.notify as DsnNotify[] } : {}),
      ...(r.dsn?.orcpt ? { orcpt: r.dsn.orcpt } : {}),
    }));
    const authUser = authUserOf(session);
    const secure = session.secure;
    const cipher = secure && session.tlsOptions ? session.tlsOptions : undefined;
    const utf8Envelope = hasNonAscii(sender) || recipients.some((r) => hasNonAscii(r.address));
    const protocol = session.envelope.smtpUtf8 ? session.transmissionType.replace(/^ESMTP/, 'UTF8SMTP') : session.transmissionType;
    const received = buildReceivedHeader({
      helo: session.hostNameAppearsAs || '',
      ...(session.clientHostname ? { clientHostname: session.clientHostname } : {}),
      clientAddress: session.remoteAddress,
      hostname: config.smtp.hostname,
      protocol,
      ...(cipher ? { tls: { protocol: cipher.version, cipher: cipher.name } } : {}),
      mailId: id,
      recipients: recipients.map((r) => r.address),
      at: now,
    });
    // RFC 7208 §9.1: Received-SPF goes above the Received: of the hop that checked.
    const spfHeader = state.spf?.sender === sender ? state.spf.header : '';
    const message = finalizeMessage(data, spfHeader + received, id, config.smtp.hostname);
    // Outgoing mail only (trusted or authenticated), once it has its Message-ID: see dkim.ts.
    const dkimKey = (state.trusted || authUser) && this.#dkim ? this.#dkim.keyFor(headerValue(message.headers, 'from')) : undefined;
    if (dkimKey) message.body = await this.#dkim!.sign(message.body, dkimKey);
    const hops = message.headers.reduce((n, hdr) => (hdr.name.toLowerCase() === 'received' ? n + 1 : n), 0);
    // A mail loop (Postfix's hopcount_limit): refuse rather than queue it once more.
    if (hops >= MAX_HOPS) throw replyError(554, '5.4.6', `Too many hops (${hops} Received: headers): mail loop?`, 'loop');
    const rules = classify({
      sender, recipients: recipients.map((r) => r.address), ...(authUser ? { authUser } : {}), headers: message.headers, size: message.body.length,
      body: () => message.text.subarray(0, BODY_MATCH_BYTES).toString('latin1'),
    }, config, now);
    if (rules.reject) {
      this.#logger.info({ client: session.remoteAddress, sender, recipients: recipients.length, rule: rules.rule, reply: `${rules.reject.code} ${rules.reject.enhanced}` }, 'mail refused by a rule');
      state.rejectReason = 'rule'; // thrown, then answered by #onData's callback
      throw replyError(rules.reject.code, rules.reject.enhanced, rules.reject.text, 'rule');
    }
    const decision = senderRequestDecision(mailFrom ? mailFrom.args : false, { trusted: state.trusted, authUser, maxFutureReleaseMs: config.smtp.maxFutureRelease, now });
    const placement = placeMail(rules, 'requests' in decision ? decision.requests : {}, config);
    const envDsn = session.envelope.dsn;
    const args = mailFrom && mailFrom.args ? mailFrom.args : {};
    const req: EnqueueRequest = {
      id,
      sender,
      recipients,
      body: message.body,
      priority: placement.priority,
      notBefore: placement.notBefore,
      ...(placement.hold ? { hold: placement.hold } : {}),
      dsn: {
        ...(envDsn?.ret === 'FULL' || envDsn?.ret === 'HDRS' ? { ret: envDsn.ret } : {}),
        ...(typeof args.ENVID === 'string' ? { envid: args.ENVID } : {}),
      },
      smtputf8: utf8Envelope || hasEightBit(message.headerBytes),
      bodyType: hasEightBit(message.body) ? '8BITMIME' : '7BIT',
      client: {
        address: session.remoteAddress,
        ...(session.hostNameAppearsAs ? { helo: session.hostNameAppearsAs } : {}),
        ...(session.clientHostname && !session.clientHostname.startsWith('[') ? { hostname: session.clientHostname } : {}),
        ...(authUser ? { authUser } : {}),
        tls: !!secure,
        listener: `${listener.host}:${listener.port}`,
      },
      ...(message.subject !== undefined ? { subject: message.subject } : {}),
      messageId: message.messageId,
      classification: placement.classification,
      ...(placement.mtPriority !== undefined ? { mtPriority: placement.mtPriority } : {}),
      receivedAt: now,
    };
    await this.#enqueue(req);
    this.#metrics.acceptedTotal.inc({ listener: `${listener.host}:${listener.port}` });
    this.#logger.info({
      mailId: id, sender, recipients: recipients.length, size: req.body.length, client: session.remoteAddress,
      priority: rules.priorityName, rule: rules.rule, notBefore: placement.notBefore > now ? placement.notBefore : undefined,
      held: placement.hold ? true : undefined, normalized: scan.bareLf + scan.bareCr > 0 ? true : undefined,
    }, 'mail accepted');
    return id;
  }

  /**
   * Resolves as soon as the queue says the mail is durable (onDurable; the spool: its segment
   * frame is fdatasync'ed), or else when enqueue resolves. A failure after the mail became
   * durable is the queue's to finish (it keeps the mail and indexes it later): logged, not answered.
   */
  #enqueue(req: EnqueueRequest): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let durable = false;
      this.#queue.enqueue(req, { onDurable: () => { durable = true; resolve(); } }).then(() => resolve(), (err: unknown) => {
        if (!durable) reject(err);
        else this.#logger.warn({ mailId: req.id, err: (err as Error)?.message ?? String(err) }, 'mail is durable but its indexing failed; the queue keeps it and indexes it later');
      });
    });
  }

  #asReply(err: unknown, session: SMTPServerSession): ReplyError {
    if (err instanceof QueueError) {
      this.#logger.warn({ client: session.remoteAddress, err: err.message, code: err.smtpCode }, 'queue refused the mail');
      return replyError(err.smtpCode, err.enhancedCode, err.message, 'storage');
    }
    if (err instanceof Error && typeof (err as ReplyError).responseCode === 'number' && typeof (err as ReplyError).enhancedCode === 'string') return err as ReplyError;
    this.#logger.error({ err, client: session.remoteAddress }, 'mail not accepted: internal error');
    return replyError(451, '4.3.0', 'Local error in processing, try again later', 'storage');
  }

  #applyConfig(next: Config): void {
    this.#refusals.resize(next.smtp.refusalsKept);
    for (const { server } of this.#servers) {
      Object.assign(server.options, {
        name: next.smtp.hostname,
        banner: next.smtp.banner,
        size: next.smtp.maxMessageSize,
        maxRecipients: next.smtp.maxRecipients,
        socketTimeout: next.smtp.idleTimeout,
        maxClients: next.smtp.maxConnections,
      });
      if (next.smtp.tls) {
        try {
          server.updateSecureContext(readTls(next.smtp.tls));
        } catch (err) {
          this.#logger.error({ err: (err as Error).message }, 'cannot reload TLS certificate; keeping the old one');
        }
      }
    }
    this.#loadTables(next, false);
  }

  /**
   * The tables the config names (auth.users, relay.recipients, auth.senders): read at start (a
   * broken file stops the start: accepting every address or none, or locking every user out,
   * would all be wrong) and at every configuration change (a broken file keeps the table that was
   * running: a typo must not lock everybody out or let anybody in).
   */
  #loadTables(config: Config, atStart: boolean): void {
    this.#users = this.#loadTable('auth.users', config.auth.users, UsersFile.load, this.#users, atStart) ?? UsersFile.empty();
    const recipients = this.#loadTable('relay.recipients', config.relay.recipients, RecipientTable.load, this.#recipients, atStart);
    if (recipients && recipients !== this.#recipients) {
      const outside = [...recipients.entryDomains()].filter((d) => !config.relay.domains.includes(d));
      if (outside.length) this.#logger.warn({ file: recipients.file, domains: outside.slice(0, 10), count: outside.length }, 'relay.recipients lists domains that are not in relay.domains; those entries are not used');
    }
    this.#recipients = recipients;
    this.#senders = this.#loadTable('auth.senders', config.auth.senders, SenderOwners.load, this.#senders, atStart);
    const dkim = config.smtp.dkim.length ? this.#loadTable('smtp.dkim', config.smtp.dkim, DkimSigner.load, this.#dkim, atStart) : undefined;
    this.#dkim = dkim;
  }

  #loadTable<T extends { size: number }, S>(key: string, source: S | null, load: (source: S) => T, previous: T | undefined, atStart: boolean): T | undefined {
    if (!source) return undefined;
    // A file name, or the key for what is not one (smtp.dkim's list: its errors name the file).
    const file = typeof source === 'string' ? source : key;
    try {
      const table = load(source);
      this.#logger.info({ file, entries: table.size }, `${key} loaded`);
      return table;
    } catch (err) {
      const problem = (err as Error).message;
      if (atStart) throw new ConfigError(`${key}: ${problem}`, [{ file, key, problem }]);
      this.#logger.error({ file, err: problem }, `cannot read ${key}; keeping the previous table`);
      return previous;
    }
  }
}

function authUserOf(session: SMTPServerSession): string | undefined {
  const user: unknown = session.user;
  return typeof user === 'string' && user ? user : undefined;
}

/** smtp.tls's files, checked as a pair (readable, PEM, the key matching the certificate). Throws ConfigError. */
function readTls(files: { key: string; cert: string }): { key: Buffer; cert: Buffer } {
  return readTlsPair('smtp.tls', files);
}

/**
 * The files the ingress reads, each checked as at start (`main.js --check`): the TLS pair and
 * the tables. One entry per file the config names, with its entries or its problem.
 */
export function checkIngressFiles(config: Config): { key: string; file: string; entries?: number; problem?: string }[] {
  const out: { key: string; file: string; entries?: number; problem?: string }[] = [];
  const tables: [string, string | null, (file: string) => { size: number }][] = [
    ['auth.users', config.auth.users, UsersFile.load],
    ['relay.recipients', config.relay.recipients, RecipientTable.load],
    ['auth.senders', config.auth.senders, SenderOwners.load],
  ];
  if (config.smtp.tls) {
    try {
      readTls(config.smtp.tls);
      out.push({ key: 'smtp.tls', file: `${config.smtp.tls.cert}, ${config.smtp.tls.key}` });
    } catch (err) {
      out.push({ ...(err as ConfigError).problems[0]! });
    }
  }
  for (const [key, file, load] of tables) {
    if (!file) continue;
    try {
      out.push({ key, file, entries: load(file).size });
    } catch (err) {
      out.push({ key, file, problem: (err as Error).message });
    }
  }
  for (const k of config.smtp.dkim) {
    try {
      DkimSigner.load([k]);
      out.push({ key: 'smtp.dkim', file: `${k.privateKey} (d=${k.domain}; s=${k.selector})` });
    } catch (err) {
      out.push({ key: 'smtp.dkim', file: k.privateKey, problem: (err as Error).message });
    }
  }
  return out;
}
