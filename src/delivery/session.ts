/**
 * One SMTP client session with one remote address, on nodemailer's SMTP connection class
 * (`nodemailer/lib/smtp-connection`), and the transactions sent over it.
 *
 * What it guarantees:
 * - `open` either gives a session ready for MAIL FROM (greeted, EHLO done, STARTTLS and AUTH
 *   done when due) or throws a `SessionError` whose reply says why (a made-up 4.4.x/4.7.x
 *   reply for network and TLS trouble, the remote's own reply otherwise). The TCP connection
 *   is ours (so we pick the address and the connect timeout); nodemailer speaks SMTP over it.
 * - `send` never throws for remote trouble. It returns per-recipient outcomes, or says the
 *   host failed before anything was decided (4xx to MAIL FROM, connection lost or timed out
 *   before the final "."), or that the transaction was aborted.
 * - The final "." of DATA is sent only after `message.stillWanted()` said yes, with nothing
 *   awaited in between. Otherwise the connection is destroyed without it, so the remote can never
 *   complete the transaction (RFC 5321 §4.1.1.4: only "." ends the data). A body of up to
 *   WHOLE_BODY_BYTES (nearly every mail) is read whole, asked about after the 354, then written
 *   with the "." in one socket write; a larger one is streamed out first and asked about after.
 * - The body goes out byte for byte as stored (dot-stuffed on the wire, lines ending CRLF; a
 *   bare CR or LF, which the ingress never stores, would be sent as CRLF).
 * - Timeouts: the connect timeout (ours), the greeting timeout, the command timeout for each
 *   reply, and the data timeout while the body is sent and its final reply awaited. A timeout
 *   is a temporary 4.4.2 failure.
 * - Capabilities: SIZE is respected (a larger message fails 5.3.4 without being sent), a
 *   message that needs SMTPUTF8 fails 5.6.7 if the server does not offer it, BODY=8BITMIME is
 *   declared when offered (an 8-bit body to a server without 8BITMIME is sent as is, as Postfix
 *   does with disable_mime_output_conversion), DSN parameters (RET, ENVID per message, NOTIFY,
 *   ORCPT per recipient) are passed on when DSN is offered, PIPELINING is used when offered.
 *
 * Where nodemailer has no public hook, this file reaches into it in one place (`Internals`):
 * the command writer (to add per-recipient DSN parameters and SMTPUTF8, which its envelope API
 * cannot express), the reply reader (to refuse replies that are not SMTP, see validReply), the
 * parsed EHLO extensions and the envelope replies. The delivery tests exercise each of them, so an
 * upgrade that changes them fails loudly.
 */
import net from 'node:net';
import { Readable } from 'node:stream';
import { format } from 'node:util';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { Logger } from '../logger.js';
import { installFastDotStuffing } from './dot-stuffing.js';
import { describeHost, made, parseReply } from './replies.js';
import type { OutboundMessage, RecipientResult, Reply } from './types.js';

installFastDotStuffing();

export type TlsMode = 'none' | 'opportunistic' | 'required' | 'implicit';

export interface SessionOptions {
  host: string;
  address: string;
  port: number;
  heloName: string;
  /** The local address to connect from (delivery.bindAddress for the remote's family). */
  localAddress?: string;
  /** `ca`: the trusted CAs when not only the system's (delivery.tls.caFile added to them). */
  tls: { mode: TlsMode; verify: boolean; ca?: string[] };
  auth?: { user: string; pass: string };
  timeouts: { connect: number; greeting: number; command: number; data: number };
  logger: Logger;
}

export interface Capabilities {
  pipelining: boolean;
  smtputf8: boolean;
  eightBitMime: boolean;
  dsn: boolean;
  /** Advertised SIZE limit; 0 when none (or SIZE without a number). */
  size: number;
  secure: boolean;
  authenticated: boolean;
}

/** Why a session could not be set up; `stage` says where, `tls` whether TLS itself failed. */
export class SessionError extends Error {
  constructor(readonly reply: Reply, readonly stage: 'connect' | 'greeting' | 'ehlo' | 'tls' | 'auth', readonly tlsHandshake = false) {
    super(`${reply.code} ${reply.enhanced ?? ''} ${reply.message}`.replace(/\s+/g, ' '));
    this.name = 'SessionError';
  }
}

export type TransactionOutcome =
  /** Every recipient has an outcome. `reply` is the one that ended the transaction. */
  | { kind: 'done'; recipients: RecipientResult[]; reply: Reply }
  /** Nothing decided on this host (4xx to MAIL FROM, lost connection before "."): try the next one. */
  | { kind: 'host-failure'; reply: Reply }
  /** stillWanted() said no (or could not say): the connection was dropped before ".". */
  | { kind: 'aborted' };

type SmtpError = SMTPConnection.SMTPError & { rejectedErrors?: (SMTPConnection.SMTPError & { recipient?: string })[]; timeoutType?: string };

/** The parts of nodemailer's connection that have no public API (see the file header). */
interface Internals {
  _sendCommand(str: string, logStr?: string): void;
  /** Takes the first whole reply off `_responseQueue` and hands it to the command waiting for it. */
  _processResponse(): unknown;
  _responseQueue?: string[];
  _supportedExtensions?: string[];
  _maxAllowedSize?: number;
  _envelope?: { accepted?: string[]; rejectedErrors?: (SMTPConnection.SMTPError & { recipient?: string })[] } | false;
  allowsAuth?: boolean;
}

/**
 * Bodies up to this size are read whole before they are sent, so that body and "." leave in one
 * write; larger ones are streamed (memory stays bounded by this per session).
 */
export const WHOLE_BODY_BYTES = 256 * 1024;

/**
 * `raw` as nodemailer holds a whole reply (lines joined by "\n"), or a 421 in its place when it is
 * not an SMTP reply (RFC 5321 §4.2): every line "ddd" or "ddd text", "ddd-" before the last, one
 * code from 200 to 599 on every line.
 */
export function validReply(raw: string, remote: string): string {
  const lines = raw.split(/\r?\n/).filter((l) => l !== '');
  const code = lines[0]?.slice(0, 3) ?? '';
  const ok = /^[2-5]\d\d$/.test(code) && lines.every((l, n) => l.startsWith(code) && (l.length === 3 || l[3] === (n === lines.length - 1 ? ' ' : '-')));
  if (ok) return raw;
  const shown = lines.join(' / ').replace(/[^\x20-\x7e]/g, '?');
  const { code: c, enhanced, message } = made.protocol(remote, `not an SMTP reply: ${shown.length > 200 ? `${shown.slice(0, 200)}…` : shown}`);
  return `${c} ${enhanced} ${message}`;
}

export function needsSmtpUtf8(message: Pick<OutboundMessage, 'smtputf8' | 'sender' | 'recipients'>): boolean {
  const nonAscii = /[^\x00-\x7f]/;
  return message.smtputf8 || nonAscii.test(message.sender) || message.recipients.some((r) => nonAscii.test(r.address));
}

export class OutboundSession {
  readonly remote: string;
  capabilities!: Capabilities;
  #conn: SMTPConnection;
  #o: SessionOptions;
  #closed = false;
  /** The last transaction did not end with a reply to "." (or RSET): RSET before the next. */
  #dirty = false;
  /** What the command writer adds to the current transaction's MAIL FROM and RCPT TO. */
  #current: { message: OutboundMessage } | undefined;
  /** Settles the send in flight with an error (used when the connection goes away under it). */
  #settlePending: ((err: SmtpError) => void) | undefined;
  #lastError: SmtpError | undefined;

  private constructor(conn: SMTPConnection, o: SessionOptions) {
    this.#conn = conn;
    this.#o = o;
    this.remote = describeHost(o);
    conn.on('end', () => {
      this.#closed = true;
      // nodemailer forgets a send in flight when it closes; settle it here so nothing hangs.
      // nodemailer emits 'error' (kept in #lastError) just before it closes.
      this.#settlePending?.(this.#lastError ?? Object.assign(new Error('Connection closed'), { code: 'ECONNECTION' }));
    });
    // Errors also reach the callback of whatever was in progress; this keeps them from
    // becoming unhandled 'error' events and marks the session dead.
    conn.on('error', (err: SmtpError) => {
      this.#closed = true;
      this.#lastError = err;
      o.logger.debug({ remote: this.remote, err: err.message, code: err.code }, 'smtp connection error');
    });
    this.#installCommandWriter();
    this.#installReplyReader();
  }

  get usable(): boolean {
    return !this.#closed && !this.#conn.destroyed;
  }

  /** Connects, reads the greeting, says EHLO, does STARTTLS and AUTH as configured. */
  static async open(o: SessionOptions): Promise<OutboundSession> {
    const remote = describeHost(o);
    const socket = await connectTcp(o.address, o.port, o.timeouts.connect, remote, o.localAddress);
    const { mode, verify, ca } = o.tls;
    const conn = new SMTPConnection({
      connection: socket,
      host: o.host,
      port: o.port,
      name: o.heloName,
      secure: mode === 'implicit',
      ignoreTLS: mode === 'none',
      requireTLS: mode === 'required',
      opportunisticTLS: mode === 'opportunistic',
      tls: { rejectUnauthorized: verify, ...(net.isIP(o.host) ? {} : { servername: o.host }), ...(ca ? { ca } : {}) },
      greetingTimeout: o.timeouts.greeting,
      // Bounds the whole set-up (greeting, EHLO, STARTTLS, EHLO again) in nodemailer.
      connectionTimeout: o.timeouts.greeting + 3 * o.timeouts.command,
      // During set-up the greeting timeout must win over the inactivity one, with a margin a busy
      // event loop cannot eat (1 ms was lost under load in CI); after set-up, each reply gets the
      // command timeout (set once the session is up).
      socketTimeout: Math.max(o.timeouts.greeting, o.timeouts.command) + 1000,
      // At log level "trace" the SMTP conversation is logged (nodemailer masks AUTH; no bodies).
      ...(o.logger.isLevelEnabled('trace') ? { logger: transcriptLogger(o.logger, remote), transactionLog: true } : { logger: false }),
    });
    const session = new OutboundSession(conn, o);
    try {
      await new Promise<void>((resolve, reject) => {
        const onError = (err: SmtpError): void => reject(err);
        conn.once('error', onError);
        conn.once('end', () => reject(Object.assign(new Error('Connection closed unexpectedly'), { code: 'ECONNECTION' })));
        conn.connect((err) => {
          conn.off('error', onError);
          if (err) reject(err);
          else resolve();
        });
      });
    } catch (err) {
      session.destroy();
      throw setupError(err as SmtpError, remote, mode);
    }
    session.#setSocketTimeout(o.timeouts.command);
    session.capabilities = session.#readCapabilities();
    if (mode === 'required' && !conn.secure) {
      session.destroy();
      throw new SessionError(made.tlsRequired(remote), 'tls');
    }
    if (o.auth) await session.#authenticate(o.auth);
    o.logger.debug({ remote, secure: conn.secure, capabilities: session.capabilities }, 'smtp session ready');
    return session;
  }

  async #authenticate(auth: { user: string; pass: string }): Promise<void> {
    const i = this.#conn as unknown as Internals;
    if (!i.allowsAuth) {
      this.destroy();
      throw new SessionError(made.authNotOffered(this.remote), 'auth');
    }
    // Credentials go in the clear only when the operator chose tls "none" for this smarthost.
    if (!this.#conn.secure && this.#o.tls.mode !== 'none') {
      this.destroy();
      throw new SessionError(made.authInsecure(this.remote), 'auth');
    }
    try {
      await new Promise<void>((resolve, reject) => this.#conn.login({ user: auth.user, pass: auth.pass }, (err) => (err ? reject(err) : resolve())));
      this.capabilities.authenticated = true;
    } catch (err) {
      this.destroy();
      const e = err as SmtpError;
      throw new SessionError(made.authFailed(this.remote, e.response ?? e.message), 'auth');
    }
  }

  #readCapabilities(): Capabilities {
    const i = this.#conn as unknown as Internals;
    let ext = i._supportedExtensions;
    let size = i._maxAllowedSize ?? 0;
    if (!Array.isArray(ext)) {
      // Fallback should nodemailer rename its field: parse the last EHLO reply ourselves.
      const ehlo = String(this.#conn.lastServerResponse || '');
      ext = ['PIPELINING', 'SMTPUTF8', '8BITMIME', 'DSN', 'SIZE'].filter((k) => new RegExp(`[ -]${k}\\b`, 'im').test(ehlo));
      size = Number(/[ -]SIZE[ \t]+(\d+)/im.exec(ehlo)?.[1] ?? 0);
    }
    return {
      pipelining: ext.includes('PIPELINING'),
      smtputf8: ext.includes('SMTPUTF8'),
      eightBitMime: ext.includes('8BITMIME'),
      dsn: ext.includes('DSN'),
      size,
      secure: this.#conn.secure,
      authenticated: false,
    };
  }

  /**
   * nodemailer writes every command through `_sendCommand`. Wrapping it is the one place where
   * the per-recipient DSN parameters and SMTPUTF8 (for a message whose headers need it while its
   * addresses are ASCII) can be added: its envelope API has one NOTIFY/ORCPT for all recipients.
   */
  #installCommandWriter(): void {
    const i = this.#conn as unknown as Internals;
    const write = i._sendCommand.bind(this.#conn);
    i._sendCommand = (str: string, logStr?: string) => write(this.#decorate(str), logStr);
  }

  /**
   * nodemailer takes the first line's code of a reply (an RCPT answered "250-Ok" / "550 No" is
   * accepted) and a reply with no code or a code such as 999 as a refusal, which our results
   * would report as a bounce. Before it reads a reply, one that is not SMTP is replaced by a 421
   * (validReply): the recipient is deferred, never delivered or bounced on it, and the
   * connection, out of step with the remote, is closed.
   */
  #installReplyReader(): void {
    const i = this.#conn as unknown as Internals;
    const read = i._processResponse.bind(this.#conn);
    i._processResponse = () => {
      const queue = i._responseQueue;
      const first = queue?.[0];
      if (queue && typeof first === 'string' && first.trim() && !/^\d+-/.test(first.split(/\r?\n/).pop() ?? '')) queue[0] = validReply(first, this.remote);
      return read();
    };
  }

  #decorate(command: string): string {
    const current = this.#current;
    if (!current) return command;
    const { message } = current;
    if (command.startsWith('MAIL FROM:')) {
      let out = command;
      if (this.capabilities.smtputf8 && needsSmtpUtf8(message) && !/ SMTPUTF8\b/i.test(out)) out += ' SMTPUTF8';
      if (this.capabilities.dsn && message.dsn) {
        if (message.dsn.ret) out += ` RET=${message.dsn.ret}`;
        if (message.dsn.envid) out += ` ENVID=${asXtext(message.dsn.envid)}`;
      }
      return out;
    }
    const rcpt = /^RCPT TO:<(.*)>$/.exec(command);
    if (rcpt && this.capabilities.dsn) {
      const r = message.recipients.find((x) => x.address === rcpt[1]);
      let out = command;
      if (r?.notify && r.notify.length > 0) out += ` NOTIFY=${r.notify.join(',')}`;
      if (r?.orcpt) out += ` ORCPT=${asOrcpt(r.orcpt)}`;
      return out;
    }
    return command;
  }

  /**
   * One transaction: MAIL FROM, RCPT TO for `recipients` (a subset of the message's when some
   * were decided on an earlier host), DATA, body, stillWanted(), ".".
   */
  async send(message: OutboundMessage, recipients: OutboundMessage['recipients']): Promise<TransactionOutcome> {
    // Made only when something is logged: a pino child per mail is not free.
    const log = (): Logger => this.#o.logger.child({ mailId: message.id });
    const caps = this.capabilities;
    const everyone = (outcome: RecipientResult['outcome'], reply: Reply): TransactionOutcome => ({
      kind: 'done', reply, recipients: recipients.map((r) => ({ address: r.address, outcome, reply, remoteHost: this.remote })),
    });
    if (needsSmtpUtf8(message) && !caps.smtputf8) return everyone('failed', made.smtputf8(this.remote));
    if (caps.size > 0 && message.size > caps.size) return everyone('failed', made.tooBig(this.remote, message.size, caps.size));
    // What cannot be written into a command line at all (a quoted local part may hold spaces).
    const badSyntax = recipients.filter((r) => /[\r\n<>]/.test(r.address) || r.address === '');
    if (/[\r\n<>]/.test(message.sender) || badSyntax.length === recipients.length) {
      return everyone('failed', { code: 553, enhanced: '5.1.3', message: 'bad address syntax' });
    }

    if (this.#dirty && !(await this.reset())) return { kind: 'host-failure', reply: made.lostConnection(this.remote, 'while resetting the session') };

    let body: NodeJS.ReadableStream | Buffer;
    try {
      body = await message.openBody();
    } catch (err) {
      log().error({ err }, 'cannot read the stored message; deferring');
      return everyone('deferred', made.local(`cannot read the message: ${(err as Error).message}`));
    }

    const state = { phase: 'envelope' as 'envelope' | 'data' | 'dot', aborted: false, bodyError: undefined as Error | undefined };
    const source = this.#bodySource(body, message, state, log);
    const sendable = recipients.filter((r) => !badSyntax.includes(r));
    this.#current = { message };
    this.#dirty = true;
    const { err, info } = await new Promise<{ err: SmtpError | null; info?: SMTPConnection.SentMessageInfo }>((resolve) => {
      this.#settlePending = (e) => resolve({ err: e });
      if (!this.usable) return this.#settlePending(Object.assign(new Error('Connection closed'), { code: 'ECONNECTION' }));
      this.#conn.send(
        { from: message.sender, to: sendable.map((r) => r.address), size: message.size, use8BitMime: message.bodyType === '8BITMIME' },
        source,
        (e, i) => resolve({ err: e, info: i }),
      );
    });
    this.#current = undefined;
    this.#settlePending = undefined;
    this.#setSocketTimeout(this.#o.timeouts.command);
    if (typeof (body as NodeJS.ReadableStream & { destroy?: () => void }).destroy === 'function' && state.phase !== 'dot') {
      (body as unknown as { destroy: () => void }).destroy();
    }

    const decided = badSyntax.map((r) => ({ address: r.address, outcome: 'failed' as const, reply: { code: 553, enhanced: '5.1.3', message: 'bad address syntax' }, remoteHost: this.remote }));
    if (state.aborted) return { kind: 'aborted' };
    if (state.bodyError) {
      this.destroy();
      const reply = made.local(`cannot read the message: ${state.bodyError.message}`);
      return { kind: 'done', reply, recipients: [...decided, ...sendable.map((r) => ({ address: r.address, outcome: 'deferred' as const, reply, remoteHost: this.remote }))] };
    }
    if (!err && info) {
      this.#dirty = false;
      return { kind: 'done', reply: parseReply(info.response), recipients: [...decided, ...this.#perRecipient(sendable, info.accepted, info.rejectedErrors ?? [], parseReply(info.response))] };
    }
    return this.#failedTransaction(err!, message.size, sendable, decided, state.phase);
  }

  /** Maps a send error to outcomes (see TransactionOutcome). */
  #failedTransaction(err: SmtpError, size: number, sendable: OutboundMessage['recipients'], decided: RecipientResult[], phase: 'envelope' | 'data' | 'dot'): TransactionOutcome {
    const i = this.#conn as unknown as Internals;
    const envelope = i._envelope || {};
    const accepted = envelope.accepted ?? [];
    const rejected = err.rejectedErrors ?? envelope.rejectedErrors ?? [];
    const reply = err.response ? parseReply(err.response) : undefined;
    const done = (finalReply: Reply): TransactionOutcome => ({ kind: 'done', reply: finalReply, recipients: [...decided, ...this.#perRecipient(sendable, accepted, rejected, finalReply)] });

    if (err.command === 'API') {
      // nodemailer refused before writing anything: the connection was already gone, or it
      // disliked the envelope (then the connection is fine and the mail is deferred).
      if (!this.usable) return { kind: 'host-failure', reply: made.lostConnection(this.remote, 'before the transaction') };
      this.#dirty = false;
      const local = made.local(`envelope refused by the SMTP client: ${err.message}`);
      return { kind: 'done', reply: local, recipients: [...decided, ...sendable.map((r) => ({ address: r.address, outcome: 'deferred' as const, reply: local, remoteHost: this.remote }))] };
    }
    if (err.code === 'EENVELOPE' && err.command === 'MAIL FROM' && reply) {
      // A 4xx to MAIL FROM is about this host (RFC 5321 §5.1: try the next); a 5xx is about the mail.
      if (reply.code >= 500) return { kind: 'done', reply, recipients: [...decided, ...sendable.map((r) => ({ address: r.address, outcome: 'failed' as const, reply, remoteHost: this.remote }))] };
      return { kind: 'host-failure', reply };
    }
    if (err.code === 'EENVELOPE' && err.command === 'RCPT TO') return done(reply ?? made.protocol(this.remote, err.message));
    if ((err.code === 'EENVELOPE' && err.command === 'DATA') || (err.code === 'EMESSAGE' && err.command === 'DATA')) {
      if (err.code === 'EMESSAGE') this.#dirty = false; // a reply to "." ends the transaction
      return done(reply ?? made.protocol(this.remote, err.message));
    }
    if (err.code === 'EMESSAGE' && !err.response && /size/i.test(err.message)) {
      // nodemailer's own SIZE check (ours runs first; this is the safety net).
      return done(made.tooBig(this.remote, size, this.capabilities.size));
    }
    // Network trouble: the connection is gone.
    this.destroy();
    const timedOut = err.code === 'ETIMEDOUT';
    if (phase === 'dot') {
      // The remote may have the message: defer (it may be sent twice), never try another host now.
      const r = timedOut ? made.timeout(this.remote, 'after end of data -- message may be sent more than once') : made.lostAfterDot(this.remote);
      return done(r);
    }
    if (reply && reply.code >= 400 && reply.code < 500) return { kind: 'host-failure', reply }; // e.g. 421 mid-transaction
    const where = phase === 'envelope' ? 'while sending the envelope' : 'while sending message content';
    return { kind: 'host-failure', reply: timedOut ? made.timeout(this.remote, where) : made.lostConnection(this.remote, where) };
  }

  #perRecipient(sendable: OutboundMessage['recipients'], accepted: string[], rejected: (SMTPConnection.SMTPError & { recipient?: string })[], finalReply: Reply): RecipientResult[] {
    return sendable.map((r) => {
      const refusal = rejected.find((e) => e.recipient === r.address);
      if (refusal) {
        const reply = refusal.response ? parseReply(refusal.response) : made.protocol(this.remote, refusal.message);
        return { address: r.address, outcome: reply.code >= 500 ? 'failed' : 'deferred', reply, remoteHost: this.remote };
      }
      if (!accepted.includes(r.address)) {
        const reply = made.protocol(this.remote, 'no reply to RCPT TO');
        return { address: r.address, outcome: 'deferred', reply, remoteHost: this.remote };
      }
      const outcome = finalReply.code >= 200 && finalReply.code < 300 ? 'delivered' : finalReply.code >= 500 ? 'failed' : 'deferred';
      return { address: r.address, outcome, reply: finalReply, remoteHost: this.remote, remoteDsn: this.capabilities.dsn };
    });
  }

  /**
   * The stream nodemailer reads the body from. It starts reading only when nodemailer starts
   * DATA (after 354), and withholds its end — which is what makes nodemailer write the final
   * "." — until stillWanted() said yes.
   */
  #bodySource(body: NodeJS.ReadableStream | Buffer, message: OutboundMessage, state: { phase: 'envelope' | 'data' | 'dot'; aborted: boolean; bodyError: Error | undefined }, log: () => Logger): Readable {
    let started = false;
    let input: Readable | undefined;
    /** stillWanted(); on no (or an error) the connection is dropped and false returned. */
    const wanted = async (): Promise<boolean> => {
      let yes = false;
      try {
        yes = await message.stillWanted();
      } catch (err) {
        log().error({ err }, 'stillWanted() failed; aborting the transaction to be safe');
      }
      if (yes) return true;
      log().info({ remote: this.remote }, 'mail no longer wanted; dropping the connection before the final "."');
      state.aborted = true;
      this.destroy();
      return false;
    };
    /**
     * Asks, then writes `rest` (the whole body, or nothing when it was streamed out already) and
     * the final "." to a corked socket in the same turn of the event loop, so they leave in one
     * write (not two: a loopback write costs the receiver's side of TCP too). A connection lost
     * while asking is settled by the 'end' handler, as lost before "."; from here on the "."
     * counts as sent.
     */
    const endData = async (rest: Buffer): Promise<void> => {
      if (!(await wanted()) || !this.usable) return;
      const socket = this.#conn._socket as net.Socket | undefined;
      socket?.cork();
      state.phase = 'dot';
      if (rest.length > 0) source.push(rest);
      source.push(null);
      // The encoder's end (and its ".") runs on process.nextTick, before any setImmediate.
      setImmediate(() => socket?.uncork());
    };
    const bodyFailed = (err: Error): void => {
      state.bodyError = err;
      log().error({ err }, 'reading the stored message failed mid-DATA; dropping the connection');
      this.destroy();
    };
    const source = new Readable({
      read: () => {
        if (!started) {
          started = true;
          state.phase = 'data';
          this.#setSocketTimeout(this.#o.timeouts.data);
          if (Buffer.isBuffer(body)) {
            void endData(body);
            return;
          }
          input = body instanceof Readable ? body : Readable.from(body as AsyncIterable<Buffer>);
          if (message.size <= WHOLE_BODY_BYTES) {
            readWhole(input).then(endData, bodyFailed);
            return;
          }
          input.on('data', (chunk: Buffer) => {
            if (!source.push(chunk)) input!.pause();
          });
          input.once('end', () => void endData(Buffer.alloc(0)));
          input.once('error', bodyFailed);
          return;
        }
        input?.resume();
      },
    });
    return source;
  }

  #setSocketTimeout(ms: number): void {
    const socket = this.#conn._socket as net.Socket | undefined;
    if (socket && !socket.destroyed) socket.setTimeout(ms);
  }

  /** RSET; false when the session is no longer usable. */
  async reset(): Promise<boolean> {
    if (!this.usable) return false;
    try {
      await new Promise<void>((resolve, reject) => this.#conn.reset((err) => (err ? reject(err) : resolve())));
      this.#dirty = false;
      return true;
    } catch (err) {
      this.#o.logger.debug({ remote: this.remote, err: (err as Error).message }, 'RSET failed; closing the session');
      this.destroy();
      return false;
    }
  }

  /**
   * QUIT politely and wait until the connection is closed (so a caller counting connections
   * per destination never has more open than it thinks). A remote that does not answer QUIT
   * within min(command timeout, 2 s) is cut off.
   */
  async quit(): Promise<void> {
    const socket = this.#conn._socket as net.Socket | undefined;
    if (!socket || socket.destroyed) {
      this.destroy();
      return;
    }
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    if (this.usable) {
      this.#closed = true;
      try {
        this.#conn.quit();
      } catch {
        this.#conn.close();
      }
    } else {
      this.destroy();
    }
    const timer = setTimeout(() => socket.destroy(), Math.min(this.#o.timeouts.command, 2000));
    await closed;
    clearTimeout(timer);
  }

  /** Drops the connection at once (nothing more is written). */
  destroy(): void {
    this.#closed = true;
    const socket = this.#conn._socket as net.Socket | undefined;
    socket?.destroy();
    this.#conn.close();
  }
}

/** Every chunk of a stream as one Buffer (the one chunk itself when there is only one, as from the queue's cache). */
async function readWhole(input: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of input) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}

/** nodemailer's bunyan-style logger calls, all sent to pino at trace level. */
function transcriptLogger(logger: Logger, remote: string): SMTPConnection.Options['logger'] {
  const write = (entry: unknown, message?: unknown, ...args: unknown[]): void => {
    const fields = typeof entry === 'object' && entry !== null ? entry : {};
    const text = typeof entry === 'string' ? format(entry, message, ...args) : format(String(message ?? ''), ...args);
    logger.trace({ remote, ...fields }, text);
  };
  return { trace: write, debug: write, info: write, warn: write, error: write, fatal: write, level: () => undefined } as unknown as SMTPConnection.Options['logger'];
}

/** A TCP connection to address:port within `timeoutMs`, or a SessionError with a 4.4.1 reply. */
function connectTcp(address: string, port: number, timeoutMs: number, remote: string, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: address, port, ...(localAddress ? { localAddress } : {}) });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new SessionError(made.connectTimeout(remote), 'connect'));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      // nodemailer attaches its handlers on the next tick; an error before then must not be
      // an uncaught exception (it also closes the socket, which nodemailer then notices).
      socket.on('error', () => {});
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      const reply = err.code === 'ECONNREFUSED' ? made.connectRefused(remote) : made.connectFailed(remote, err.code ?? err.message);
      reject(new SessionError(reply, 'connect'));
    });
  });
}

/** Turns a nodemailer set-up error into a SessionError with the reply to report. */
function setupError(err: SmtpError, remote: string, mode: TlsMode): SessionError {
  if (err instanceof SessionError) return err;
  const reply = err.response ? parseReply(err.response) : undefined;
  if (err.code === 'ETIMEDOUT') {
    const where = err.timeoutType === 'GREETING_TIMEOUT' ? 'while receiving the initial server greeting'
      : err.timeoutType === 'UPGRADE_TIMEOUT' ? 'during the TLS handshake' : 'while setting up the session';
    return new SessionError(made.timeout(remote, where), err.timeoutType === 'GREETING_TIMEOUT' ? 'greeting' : 'ehlo');
  }
  if (err.code === 'ETLS' || isTlsSocketError(err)) {
    if (reply && mode === 'required') return new SessionError({ ...made.tlsRequired(remote), message: `${made.tlsRequired(remote).message} (STARTTLS answered: ${reply.code} ${reply.message})` }, 'tls');
    if (reply) return new SessionError(reply, 'tls');
    return new SessionError(made.tlsFailed(remote, err.message.replace(/^Error initiating TLS - /, '')), 'tls', true);
  }
  if (reply && (err.command === 'CONN' || err.command === undefined)) return new SessionError(reply, 'greeting');
  if (reply) return new SessionError(reply, err.command === 'STARTTLS' ? 'tls' : 'ehlo');
  if (mode === 'required' && /STARTTLS/i.test(err.message)) return new SessionError(made.tlsRequired(remote), 'tls');
  return new SessionError(made.lostConnection(remote, 'while setting up the session'), 'greeting');
}

/** A TLS failure reported as a socket error (certificate verification, handshake alerts). */
function isTlsSocketError(err: SmtpError & { originalCode?: string }): boolean {
  if (err.code !== 'ESOCKET') return false;
  const code = err.originalCode ?? '';
  return /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|HOSTNAME|ERR_SSL|ERR_TLS|EPROTO/.test(code) || /certificate|SSL|TLS/i.test(err.message);
}

/**
 * ENVID/ORCPT values are kept as the client gave them (xtext, RFC 3461 §4). Anything that is
 * not valid xtext is encoded, so a value is never sent malformed nor encoded twice.
 */
export function asXtext(value: string): string {
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    const code = ch.charCodeAt(0);
    if (ch === '+' && /^[0-9A-F]{2}$/.test(value.slice(i + 1, i + 3))) out += ch;
    else if (code < 33 || code > 126 || ch === '+' || ch === '=') out += `+${code.toString(16).toUpperCase().padStart(2, '0')}`;
    else out += ch;
  }
  return out;
}

/** ORCPT is "addr-type;xtext"; a bare address is taken as rfc822. */
function asOrcpt(value: string): string {
  const semi = value.indexOf(';');
  return semi > 0 ? `${value.slice(0, semi)};${asXtext(value.slice(semi + 1))}` : `rfc822;${asXtext(value)}`;
}
