/**
 * The delivery stage: where mail for a domain goes (`resolve`) and the SMTP client that takes a
 * batch of messages for one destination to it (`deliver`). Knows nothing of the queue.
 *
 * What it guarantees:
 * - `deliver` never throws and gives every recipient of every message an outcome (or marks the
 *   message `aborted`, recipients untouched, when its stillWanted() said no before the final ".").
 * - Hosts are tried in the destination's order (RFC 5321 §5.1). A host is left for the next one
 *   when it cannot be connected to, greets with 4xx or 5xx (Postfix's smtp_skip_5xx_greeting),
 *   fails EHLO, TLS or AUTH, answers MAIL FROM with 4xx, or drops/stalls the session before a
 *   message's final "."; the messages not yet decided go to the next host. When every host has
 *   failed, what is left is deferred with the last host's reply (made temporary: a host-level 5xx
 *   such as a 554 greeting is not a verdict on the mail). Each try of a host is kept in
 *   `MessageResult.hosts`.
 * - After the MX hosts, delivery.fallbackRelay (fallbackRelayFor), for MX delivery only.
 * - A call that opened no SMTP session with any host marks what it deferred `unreachable` (the
 *   scheduler then suspends the destination); a call that reached a host never does.
 * - Concurrency feedback for the scheduler (DeliverOptions.onFeedback): 'ok' for each transaction
 *   a host carried to its end, 'failed' for each host given up on and each 421.
 * - One connection per host carries all the messages of the call (the scheduler bounds them by
 *   messagesPerConnection); RSET is sent between messages when a transaction did not end with a
 *   reply to "." (a completed transaction needs none, RFC 5321 §4.1.1.5). A connection that was
 *   dropped (abort, lost connection after ".") is opened again for the next message.
 * - TLS: opportunistic STARTTLS for MX delivery and routes when `delivery.tls.opportunistic`; if
 *   the handshake itself fails and certificates are not being verified, the same address is
 *   tried once more in plaintext (Postfix's "may"). With `delivery.tls.verify`, a certificate
 *   that does not verify fails the host (no silent downgrade). A domain in `delivery.tls.policy`
 *   has its own level (resolve.ts puts it on the destination): "none", "may" (as above, not
 *   verified), "encrypt" (STARTTLS required, a failure or its absence fails the host, never a
 *   plaintext retry), "verify" (that, and the certificate must verify for the MX host name).
 *   A domain without such an entry that publishes an MTA-STS policy in enforce mode (mta-sts.ts)
 *   is delivered as "verify", to the MX hosts its policy names only. delivery.tls.caFile adds
 *   trusted CAs to the system's wherever certificates are verified.
 *   Smarthost `tls`: "none" plaintext; "starttls" STARTTLS is required (verification per
 *   delivery.tls.verify); "required" STARTTLS is required and the certificate must verify;
 *   "implicit" TLS from the first byte (port 465 by default); unset: as MX delivery.
 *   Smarthost AUTH is sent only over TLS, or in plaintext when tls is explicitly "none".
 * - Log lines about a message carry mailId; credentials are never logged.
 */
import { promises as dns } from 'node:dns';
import { isIP, isIPv6 } from 'node:net';
import { join } from 'node:path';
import { rootCertificates } from 'node:tls';
import { parseHostPort, type Config } from '../config/schema.js';
import type { Logger } from '../logger.js';
import { asTemporary, describeHost, made } from './replies.js';
import { addressesOf, literal, makeResolver, normaliseDomain, resolveDestination } from './resolve.js';
import { MtaSts, mxMatches, type StsPolicy } from './mta-sts.js';
import { readCaFile } from '../config/tls-files.js';
import { OutboundSession, SessionError, type TlsMode } from './session.js';
import type { DestinationView } from '../api-types.js';
import type { DeliverOptions, DeliveryAgent, Destination, DestinationHost, HostAttempt, MessageResult, OutboundMessage, RecipientResult, Reply } from './types.js';

type HostsDestination = Extract<Destination, { kind: 'hosts' }>;
type Target = DestinationHost & { address: string };

/** One message's progress through the hosts of a call. */
interface MessageState {
  message: OutboundMessage;
  /** Recipients not yet decided. */
  pending: OutboundMessage['recipients'];
  results: RecipientResult[];
  hosts: HostAttempt[];
  aborted: boolean;
  lastReply?: Reply;
  /** The host that gave lastReply, when it came from a host. */
  lastRemote?: string;
  /** onResult has been called for it. */
  reported: boolean;
}

/** One deliver() call: its messages (growing as `more` adds some) and how to report them. */
interface Call {
  states: MessageState[];
  options: DeliverOptions;
  /** An SMTP session was opened with some host of the destination during this call. */
  connected: boolean;
  /** A bug of ours ended the call: what it left undecided says nothing about the destination. */
  failed?: boolean;
}

export class Deliverer implements DeliveryAgent {
  readonly #config: () => Config;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #sessions = new Set<OutboundSession>();

  readonly #mtaSts: MtaSts;
  /** delivery.tls.caFile read (with the system's CAs), again for each new configuration (SIGHUP, API). */
  #ca: { config: Config; pems: string[] | undefined } | undefined;

  constructor(o: { config: () => Config; logger: Logger; now?: () => number; random?: () => number; mtaStsPort?: number }) {
    this.#config = o.config;
    this.#log = o.logger.child({ stage: 'delivery' });
    this.#now = o.now ?? Date.now;
    this.#random = o.random ?? Math.random;
    this.#mtaSts = new MtaSts({
      resolver: () => makeResolver(this.#config().delivery.dns),
      ca: () => this.#trustedCas(this.#config()),
      log: this.#log,
      now: this.#now,
      ...(o.mtaStsPort !== undefined ? { port: o.mtaStsPort } : {}),
      file: join(o.config().spool.dir, 'mta-sts.json'),
    });
  }

  async resolve(domain: string): Promise<Destination> {
    try {
      const config = this.#config();
      const asciiDomain = normaliseDomain(domain);
      // The MTA-STS lookup runs beside the MX lookup; only MX delivery without a tls.policy entry uses it.
      const sts = config.delivery.tls.mtaSts && !config.delivery.smarthost && config.delivery.routes[asciiDomain] === undefined
        && config.delivery.tls.policy[asciiDomain] === undefined
        ? this.#mtaSts.policyFor(asciiDomain)
        : undefined;
      let destination = await resolveDestination(domain, config, this.#random);
      const policy = await sts;
      if (policy && destination.kind === 'hosts' && destination.via === 'mx') destination = this.#applySts(destination, policy);
      this.#log.debug({ domain, destination }, 'destination resolved');
      return destination;
    } catch (err) {
      // resolveDestination maps DNS errors itself; anything else is ours and must not bounce mail.
      this.#log.error({ err, domain }, 'resolving the destination failed unexpectedly');
      return { kind: 'failure', domain, key: domain, permanent: false, reply: made.local(`cannot resolve ${domain}: ${(err as Error).message}`) };
    }
  }

  /**
   * A domain's MTA-STS policy applied to its MX hosts: enforce keeps the hosts its mx patterns
   * match, with TLS required and verified (none matching: a temporary failure); testing logs what
   * enforce would refuse and changes nothing.
   */
  #applySts(destination: HostsDestination, policy: StsPolicy): Destination {
    if (policy.mode === 'none') return destination;
    const matching = destination.hosts.filter((h) => mxMatches(h.host, policy.mx));
    if (policy.mode === 'testing') {
      const others = [...new Set(destination.hosts.filter((h) => !matching.includes(h)).map((h) => h.host))];
      if (others.length) this.#log.info({ domain: destination.domain, hosts: others, mx: policy.mx }, 'MTA-STS testing: these MX hosts are not in the policy');
      return destination;
    }
    if (matching.length === 0) {
      return { kind: 'failure', domain: destination.domain, key: destination.key, permanent: false, reply: made.stsNoMx(destination.domain, policy.mx) };
    }
    return { ...destination, hosts: matching, key: `${destination.key} mta-sts`, tlsPolicy: 'verify', mtaSts: true };
  }

  /**
   * The system's CAs and delivery.tls.caFile's, when the file is set. Read again with each new
   * configuration (a renewed file is picked up at SIGHUP).
   */
  #trustedCas(config: Config): string[] | undefined {
    if (this.#ca?.config === config) return this.#ca.pems;
    const file = config.delivery.tls.caFile;
    let pems: string[] | undefined;
    if (file) {
      try {
        pems = [...rootCertificates, ...readCaFile('delivery.tls.caFile', file)];
      } catch (err) {
        // Checked at start (main.js --check too): a file broken since is logged, and the system's CAs used.
        this.#log.error({ err: (err as Error).message }, "delivery.tls.caFile cannot be read; verifying with the system's CAs only");
      }
    }
    this.#ca = { config, pems };
    return pems;
  }

  async deliver(destination: HostsDestination, messages: OutboundMessage[], options: DeliverOptions = {}): Promise<MessageResult[]> {
    const call: Call = { states: messages.map(newState), options, connected: false };
    try {
      await this.#deliverAll(destination, call);
    } catch (err) {
      // A bug of ours, not remote trouble: whatever is undecided is deferred, nothing is lost.
      this.#log.error({ err, destination: destination.key }, 'delivery failed unexpectedly; deferring what is left');
      call.failed = true;
      for (const s of call.states) this.#deferRest(s, made.local((err as Error).message));
    }
    for (const s of call.states) this.#report(call, s);
    return call.states.map((s) => this.#result(s, call));
  }

  async close(): Promise<void> {
    for (const s of this.#sessions) s.destroy();
    this.#sessions.clear();
    await this.#mtaSts.flushed();
  }

  async #deliverAll(destination: HostsDestination, call: Call): Promise<void> {
    const config = this.#config();
    const { states } = call;
    let lastHostReply: Reply | undefined;
    for (const host of [...destination.hosts, ...fallbackRelayFor(destination, config)]) {
      if (!states.some(isUndecided)) break;
      const targets = await this.#addresses(host, config);
      if ('reply' in targets) {
        lastHostReply = targets.reply;
        for (const s of states.filter(isUndecided)) {
          s.lastReply = targets.reply;
          s.lastRemote = undefined;
        }
        continue;
      }
      for (const target of targets) {
        const waiting = states.filter(isUndecided);
        if (waiting.length === 0) break;
        const reply = await this.#deliverToHost(target, destination, waiting, config, call);
        if (reply) lastHostReply = reply;
      }
    }
    for (const s of states) {
      const reply = s.lastReply ?? lastHostReply ?? made.local(`no host to deliver to for ${destination.domain}`);
      this.#deferRest(s, asTemporary(reply, 'all hosts failed; the last said'));
    }
  }

  /**
   * Sends the waiting messages to one address over one connection (re-opened when a message
   * needed it dropped). Returns the host-level reply when the host was given up on.
   */
  async #deliverToHost(target: Target, destination: HostsDestination, waiting: MessageState[], config: Config, call: Call): Promise<Reply | undefined> {
    let session: OutboundSession | undefined;
    let plaintextRetry = false;
    try {
      // `waiting` grows while the connection is good and the scheduler has more for it.
      for (let next = 0; ; next++) {
        if (next === waiting.length && !(session?.usable && await this.#pullMore(call, waiting))) break;
        const state = waiting[next]!;
        if (!isUndecided(state)) continue;
        if (!session?.usable) {
          if (session) {
            // Dropped under the last message (abort, lost connection): close it before the next.
            await session.quit();
            this.#sessions.delete(session);
            session = undefined;
          }
          const opened = this.#now();
          try {
            session = await this.#open(target, destination, config, plaintextRetry);
          } catch (err) {
            if (!(err instanceof SessionError)) throw err;
            const tls = this.#tls(destination, config);
            if (err.tlsHandshake && tls.mode === 'opportunistic' && !tls.verify && !plaintextRetry) {
              // Postfix "may": a failed handshake is retried in plaintext, once.
              this.#log.info({ remote: describeHost(target), reply: err.reply }, 'TLS handshake failed; trying again without TLS');
              plaintextRetry = true;
              try {
                session = await this.#open(target, destination, config, true);
              } catch (again) {
                if (!(again instanceof SessionError)) throw again;
                return this.#giveUpHost(target, waiting, again.reply, opened, call);
              }
            } else {
              return this.#giveUpHost(target, waiting, err.reply, opened, call);
            }
          }
          call.connected = true;
        }
        const started = this.#now();
        const outcome = await session.send(state.message, state.pending);
        const attempt: HostAttempt = { at: started, host: session.remote, durationMs: this.#now() - started };
        const log = (): Logger => this.#log.child({ mailId: state.message.id });
        if (outcome.kind === 'aborted') {
          state.aborted = true;
          state.hosts.push(attempt);
          log().info({ remote: session.remote }, 'delivery aborted before the final "." (mail no longer wanted)');
          this.#report(call, state);
          continue;
        }
        state.hosts.push({ ...attempt, reply: outcome.reply });
        state.lastReply = outcome.reply;
        state.lastRemote = session.remote;
        if (outcome.kind === 'host-failure') {
          this.#feedback(call, 'failed');
          log().info({ remote: session.remote, reply: outcome.reply }, 'host failed during the transaction; trying the next host');
          return outcome.reply;
        }
        // A 421 ends the session however far the transaction got (service not available: often a remote's throttle).
        this.#feedback(call, outcome.reply.code === 421 ? 'failed' : 'ok');
        this.#record(state, outcome.recipients);
        this.#report(call, state);
        // Debug: the scheduler logs each attempt once, with every recipient's host and reply.
        if (this.#log.isLevelEnabled('debug')) {
          log().debug({
            remote: session.remote,
            delivered: outcome.recipients.filter((r) => r.outcome === 'delivered').map((r) => r.address),
            deferred: outcome.recipients.filter((r) => r.outcome === 'deferred').map((r) => r.address),
            failed: outcome.recipients.filter((r) => r.outcome === 'failed').map((r) => r.address),
            reply: outcome.reply,
            durationMs: attempt.durationMs,
          }, 'delivery transaction done');
        }
      }
      return undefined;
    } finally {
      if (session) {
        await session.quit();
        this.#sessions.delete(session);
      }
    }
  }

  /** Adds the scheduler's next messages for this connection to `waiting` (and the call); false when there are none. */
  async #pullMore(call: Call, waiting: MessageState[]): Promise<boolean> {
    if (!call.options.more) return false;
    const more = await call.options.more();
    if (more.length === 0) return false;
    const added = more.map(newState);
    call.states.push(...added);
    waiting.push(...added);
    return true;
  }

  /** Tells the scheduler a message's outcome once it is decided (once per message). */
  #report(call: Call, state: MessageState): void {
    if (state.reported || isUndecided(state) || !call.options.onResult) return;
    state.reported = true;
    try {
      call.options.onResult(this.#result(state, call));
    } catch (err) {
      this.#log.error({ err, mailId: state.message.id }, 'onResult threw');
    }
  }

  #feedback(call: Call, kind: 'ok' | 'failed'): void {
    try {
      call.options.onFeedback?.(kind);
    } catch (err) {
      this.#log.error({ err }, 'onFeedback threw');
    }
  }

  /** Records a host that could not be used for every message that was waiting for it. */
  #giveUpHost(target: Target, waiting: MessageState[], reply: Reply, started: number, call: Call): Reply {
    this.#feedback(call, 'failed');
    const remote = describeHost(target);
    this.#log.info({ remote, reply, mailIds: waiting.map((s) => s.message.id) }, 'cannot use host; trying the next one');
    const attempt: HostAttempt = { at: started, host: remote, durationMs: this.#now() - started, reply };
    for (const s of waiting) {
      if (!isUndecided(s)) continue;
      s.hosts.push(attempt);
      s.lastReply = reply;
      s.lastRemote = remote;
    }
    return reply;
  }

  async #open(target: Target, destination: HostsDestination, config: Config, plaintext: boolean): Promise<OutboundSession> {
    const d = config.delivery;
    const tls = this.#tls(destination, config);
    const mode: TlsMode = plaintext ? 'none' : tls.mode;
    const smarthost = destination.via === 'smarthost' ? d.smarthost : null;
    const localAddress = isIPv6(target.address) ? d.bindAddress.ipv6 : d.bindAddress.ipv4;
    const session = await OutboundSession.open({
      host: target.host,
      address: target.address,
      port: target.port,
      heloName: d.heloName ?? config.smtp.hostname,
      ...(localAddress ? { localAddress } : {}),
      tls: { mode, verify: tls.verify, ...(tls.verify ? withCa(this.#trustedCas(config)) : {}) },
      ...(smarthost?.auth ? { auth: smarthost.auth } : {}),
      timeouts: d.timeouts,
      logger: this.#log,
    });
    this.#sessions.add(session);
    return session;
  }

  /** How TLS is used toward a destination: the smarthost's `tls`, else the domain's policy, else delivery.tls. */
  #tls(destination: HostsDestination, config: Config): { mode: TlsMode; verify: boolean } {
    const d = config.delivery;
    if (destination.via === 'smarthost' && d.smarthost?.tls) {
      const verify = d.tls.verify || d.smarthost.tls === 'required';
      switch (d.smarthost.tls) {
        case 'none': return { mode: 'none', verify };
        case 'implicit': return { mode: 'implicit', verify };
        case 'starttls':
        case 'required': return { mode: 'required', verify };
      }
    }
    switch (destination.tlsPolicy) {
      case 'none': return { mode: 'none', verify: false };
      case 'may': return { mode: 'opportunistic', verify: false };
      case 'encrypt': return { mode: 'required', verify: false };
      case 'verify': return { mode: 'required', verify: true };
      default: return { mode: d.tls.opportunistic ? 'opportunistic' : 'none', verify: d.tls.verify };
    }
  }

  /**
   * The addresses to connect to: given, an IP literal, or looked up now (a route or smarthost
   * given by name: every address, IPv4 first, tried in turn).
   */
  async #addresses(host: DestinationHost, config: Config): Promise<Target[] | { reply: Reply }> {
    if (host.address) return [{ ...host, address: host.address }];
    if (isIP(host.host)) return [{ ...host, address: host.host }];
    const servers = config.delivery.dns.servers;
    if (servers.length === 0 || host.host === 'localhost') {
      // No DNS servers configured (or localhost): the system's resolver, /etc/hosts included.
      try {
        const found = await dns.lookup(host.host, { all: true });
        const ordered = [...found.filter((a) => a.family === 4), ...found.filter((a) => a.family !== 4)];
        return ordered.map((a) => ({ ...host, address: a.address }));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        return { reply: code === 'ENOTFOUND' ? made.nxdomain(host.host, 'A') : made.dnsTemporary(host.host, 'A', code ?? 'lookup failed') };
      }
    }
    const found = await addressesOf(host.host, makeResolver(config.delivery.dns));
    if ('reply' in found) return found;
    return found.addresses.map((address) => ({ ...host, address }));
  }

  #record(state: MessageState, results: RecipientResult[]): void {
    for (const r of results) {
      if (!state.pending.some((p) => p.address === r.address)) continue;
      state.results.push(r);
      state.pending = state.pending.filter((p) => p.address !== r.address);
    }
  }

  #deferRest(state: MessageState, reply: Reply): void {
    if (state.aborted) return;
    for (const r of state.pending) state.results.push({ address: r.address, outcome: 'deferred', reply, ...(state.lastRemote ? { remoteHost: state.lastRemote } : {}) });
    state.pending = [];
  }

  #result(s: MessageState, call: Call): MessageResult {
    const result: MessageResult = { id: s.message.id, aborted: s.aborted, recipients: s.aborted ? [] : s.results, hosts: s.hosts };
    // Set once the call is over (onResult before that comes from a session, so it is never set there).
    if (!call.connected && !call.failed && !s.aborted && s.results.length > 0) result.unreachable = true;
    return result;
  }
}

function newState(message: OutboundMessage): MessageState {
  return { message, pending: [...message.recipients], results: [], hosts: [], aborted: false, reported: false };
}

function isUndecided(s: MessageState): boolean {
  return !s.aborted && s.pending.length > 0;
}

function withCa(ca: string[] | undefined): { ca?: string[] } {
  return ca ? { ca } : {};
}

/** delivery.tls.caFile checked as at start (`main.js --check`): readable, PEM certificates. */
export function checkDeliveryFiles(config: Config): { key: string; file: string; entries?: number; problem?: string }[] {
  const file = config.delivery.tls.caFile;
  if (!file) return [];
  try {
    return [{ key: 'delivery.tls.caFile', file, entries: readCaFile('delivery.tls.caFile', file).length }];
  } catch (err) {
    const problem = (err as { problems?: { problem: string }[] }).problems?.[0]?.problem ?? (err as Error).message;
    return [{ key: 'delivery.tls.caFile', file, problem: `${file}: ${problem}` }];
  }
}

/**
 * delivery.fallbackRelay (Postfix's smtp_fallback_relay), tried after every MX host of the
 * domain: for MX delivery only (a route or a smarthost is the operator's own choice), and not for
 * a domain whose mail must reach its own hosts over verified TLS (a delivery.tls.policy of
 * "encrypt" or "verify", or MTA-STS enforce), which the relay could not promise.
 */
export function fallbackRelayFor(destination: HostsDestination, config: Config): DestinationHost[] {
  const relays = config.delivery.fallbackRelay;
  if (relays.length === 0 || (destination.via !== 'mx' && destination.via !== 'implicit-mx')) return [];
  if (destination.mtaSts || destination.tlsPolicy === 'encrypt' || destination.tlsPolicy === 'verify') return [];
  return relays.map((relay) => {
    const { host, port } = parseHostPort(relay, config.delivery.port)!;
    return { host, port, ...literal(host) };
  });
}

/** How GET /api/destinations/:domain shows a resolved destination (and its fallback relay, given the config). */
export function destinationView(d: Destination, config?: Config): DestinationView {
  if (d.kind === 'failure') return { domain: d.domain, via: 'none', hosts: [], failure: { permanent: d.permanent, reply: d.reply } };
  const fallback = config ? fallbackRelayFor(d, config) : [];
  return {
    domain: d.domain,
    via: d.via,
    hosts: d.hosts.map((h) => ({ host: h.host, port: h.port, ...(h.preference !== undefined ? { preference: h.preference } : {}), ...(h.address ? { address: h.address } : {}) })),
    ...(d.tlsPolicy ? { tlsPolicy: d.tlsPolicy } : {}),
    ...(d.mtaSts ? { mtaSts: true } : {}),
    ...(fallback.length ? { fallbackRelay: fallback.map((h) => ({ host: h.host, port: h.port })) } : {}),
  };
}
