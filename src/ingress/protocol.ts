/**
 * Where smtp-server needs help (DESIGN.md), closed in one place without patching node_modules:
 * a subclass of SMTPServer that builds a subclass of SMTPConnection. What it guarantees:
 *
 * - RFC 5321 paths: quoted local parts ("john doe"@example.org), address literals, source routes
 *   (dropped), a path of up to 256 octets including the angle brackets. Anything else: 501.
 * - MAIL/RCPT parameters we do not implement: 555 5.5.4 (smtp-server accepts them silently).
 * - Non-ASCII addresses without SMTPUTF8 on MAIL: 553 5.6.7 (RFC 6531 §3.5).
 * - MT-PRIORITY (RFC 6710) and FUTURERELEASE HOLDFOR/HOLDUNTIL (RFC 4865) are parsed and
 *   checked for syntax here (501 5.5.4); who may use them and their bounds are policy, decided
 *   by the application's onMailFrom. The EHLO keywords come from `hooks.ehloFeatures`.
 * - Explicit enhanced status codes: a handler error whose message starts with an enhanced code
 *   that fits its reply ("5.7.1 Relaying denied" with responseCode 554) is sent as exactly that
 *   code, instead of smtp-server's guess from the numeric code (`replyError` builds such errors).
 * - The pre-greeting early-talker wait is `hooks.greetingDelayMs(address)` (smtp-server waits a
 *   fixed 100 ms), and connection admission (`hooks.admit`) answers 421 4.7.0 before the greeting.
 * - AUTH is refused while a mail transaction is open (RFC 4954 §4: 503 5.5.1) and, through
 *   `hooks.authRefusal`, when the policy wants TLS first (538 5.7.11).
 * - After 221 to QUIT a plain connection is closed at once (smtp-server half-closes and keeps
 *   reading until the client closes).
 * - PROXY protocol version 2 (binary; proxy-v2.ts) besides smtp-server's version 1, from the
 *   peers `hooks.expectsProxyHeader` names.
 * - The end of the data is found with indexOf rather than a loop over every byte (data-stream.ts;
 *   same semantics, checked against smtp-server's own parser), and a client that sends a second
 *   whole message without waiting for the first one's reply no longer hangs its session.
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { SMTPConnection, type SMTPConnectionOptions } from 'smtp-server/lib/smtp-connection.js';
import type { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { continueAfterData, feedDataStream } from './data-stream.js';
import { mayBeProxyV2, parseProxyV2 } from './proxy-v2.js';

/** An SMTP reply we decided on: code, enhanced code (RFC 3463) and text. */
export interface Reply {
  code: number;
  enhanced: string;
  text: string;
}

export type ReplyError = Error & { responseCode: number; enhancedCode: string; reason: string };

/** An error for an smtp-server callback that goes out as exactly `code enhanced text`. */
export function replyError(code: number, enhanced: string, text: string, reason: string): ReplyError {
  const err = new Error(`${enhanced} ${text}`) as ReplyError;
  err.responseCode = code;
  err.enhancedCode = enhanced;
  err.reason = reason;
  return err;
}

const ENHANCED_PREFIX = /^([245])\.(\d{1,3})\.(\d{1,3}) (.*)$/s;
const ENHANCED_CODE = /^[245]\.\d{1,3}\.\d{1,3}$/;

// ---------------------------------------------------------------------------------------------
// RFC 5321 path and parameter parsing (pure)

/** RFC 5321 §4.5.3.1.3: a path is at most 256 octets, angle brackets included. */
export const MAX_PATH_OCTETS = 256;

export interface ParsedPathCommand {
  /** Local-part "@" domain as given (source route dropped); '' for the null reverse path. */
  address: string;
  /** Upper-cased keywords; `true` for a keyword without a value. Values are kept as given (xtext not decoded). */
  args: Record<string, string | true> | false;
  /** A keyword given twice. */
  duplicate?: string;
}

const ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-";
// Dot-string with UTF-8 allowed (RFC 6531 extends atext with UTF8-non-ascii); whether
// non-ASCII is permitted in this transaction is decided separately (SMTPUTF8).
const DOT_STRING = new RegExp(`^[${ATEXT}\\u0080-\\u{10FFFF}]+(\\.[${ATEXT}\\u0080-\\u{10FFFF}]+)*$`, 'u');
// qtextSMTP (%d32-33 / %d35-91 / %d93-126) or quoted-pairSMTP (%d92 %d32-126), plus UTF-8.
const QUOTED_STRING = /^"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\u{10FFFF}]|\\[\x20-\x7e])*"$/u;
const SUB_DOMAIN = /^[A-Za-z0-9\u0080-\u{10FFFF}](?:[A-Za-z0-9\u0080-\u{10FFFF}-]*[A-Za-z0-9\u0080-\u{10FFFF}])?$/u;
const ESMTP_KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
// esmtp-value: CHAR except "=", SP and controls; UTF-8 allowed (RFC 6531).
const ESMTP_VALUE = /^[\x21-\x3c\x3e-\x7e\u0080-\u{10FFFF}]+$/u;

/** Parses "MAIL FROM:<path> params" / "RCPT TO:<path> params"; undefined when it is not valid. */
export function parsePathCommand(kind: 'MAIL FROM' | 'RCPT TO', line: string): ParsedPathCommand | undefined {
  const colon = line.indexOf(':');
  if (colon < 0) return undefined;
  const verb = line.slice(0, colon).trim().replace(/\s+/g, ' ').toUpperCase();
  if (verb !== kind) return undefined;
  // RFC 5321 has no space after the colon, but many clients send one; Postfix accepts it too.
  const rest = line.slice(colon + 1).replace(/^ +/, '');
  if (!rest.startsWith('<')) return undefined;
  const end = closingBracket(rest);
  if (end < 0) return undefined;
  const path = rest.slice(0, end + 1);
  if (Buffer.byteLength(path, 'utf8') > MAX_PATH_OCTETS) return undefined;
  const address = parsePath(path.slice(1, -1), kind);
  if (address === undefined) return undefined;
  const paramText = rest.slice(end + 1);
  if (paramText !== '' && !paramText.startsWith(' ')) return undefined;
  const params = parseParams(paramText.trim());
  if (!params) return undefined;
  return { address, ...params };
}

/** Index of the '>' that closes the path, skipping quoted strings; -1 if none. */
function closingBracket(text: string): number {
  let quoted = false;
  for (let i = 1; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '\\') i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') quoted = true;
    else if (c === '>') return i;
    else if (c === '<') return -1;
  }
  return -1;
}

function parsePath(inner: string, kind: 'MAIL FROM' | 'RCPT TO'): string | undefined {
  if (inner === '') return kind === 'MAIL FROM' ? '' : undefined;
  // RFC 5321 §4.1.2, appendix C: a source route "@a,@b:" must be accepted and ignored.
  const route = /^@[^,:@\s]+(?:,@[^,:@\s]+)*:/.exec(inner);
  const mailbox = route ? inner.slice(route[0].length) : inner;
  // RFC 5321 §4.1.1.3: the domainless Postmaster must be accepted as a recipient.
  if (kind === 'RCPT TO' && /^postmaster$/i.test(mailbox)) return mailbox;
  const at = mailbox.lastIndexOf('@');
  if (at <= 0) return undefined;
  const local = mailbox.slice(0, at);
  const domain = mailbox.slice(at + 1);
  if (!isLocalPart(local) || !isDomainOrLiteral(domain)) return undefined;
  return `${local}@${domain}`;
}

function isLocalPart(local: string): boolean {
  return local.startsWith('"') ? QUOTED_STRING.test(local) : DOT_STRING.test(local);
}

export function isDomainOrLiteral(domain: string): boolean {
  if (domain.startsWith('[')) return isAddressLiteral(domain);
  if (domain.length === 0 || Buffer.byteLength(domain, 'utf8') > 255) return false;
  return domain.split('.').every((label) => label.length <= 63 && SUB_DOMAIN.test(label));
}

export function isAddressLiteral(literal: string): boolean {
  const m = /^\[(.*)\]$/.exec(literal);
  if (!m) return false;
  const body = m[1]!;
  if (/^IPv6:/i.test(body)) return isIPv6(body.slice(5));
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(body)) return body.split('.').every((o) => Number(o) <= 255);
  // General-address-literal: Standardized-tag ":" 1*dcontent
  return /^[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+$/.test(body);
}

function isIPv6(text: string): boolean {
  // Delegate to node's parser through URL, which accepts exactly the textual IPv6 forms.
  try {
    return new URL(`http://[${text}]/`).hostname.length > 2 && !/[^0-9a-fA-F:.]/.test(text);
  } catch {
    return false;
  }
}

function parseParams(text: string): Pick<ParsedPathCommand, 'args' | 'duplicate'> | undefined {
  if (text === '') return { args: false };
  const args: Record<string, string | true> = {};
  let duplicate: string | undefined;
  for (const part of text.split(/ +/)) {
    const eq = part.indexOf('=');
    const keyword = (eq < 0 ? part : part.slice(0, eq)).toUpperCase();
    const value = eq < 0 ? true : part.slice(eq + 1);
    if (!ESMTP_KEYWORD.test(keyword)) return undefined;
    if (value !== true && !ESMTP_VALUE.test(value)) return undefined;
    if (keyword in args) duplicate = keyword;
    args[keyword] = value;
  }
  return { args, ...(duplicate ? { duplicate } : {}) };
}

export const MAIL_PARAMETERS = new Set(['SIZE', 'BODY', 'SMTPUTF8', 'RET', 'ENVID', 'AUTH', 'MT-PRIORITY', 'HOLDFOR', 'HOLDUNTIL']);
export const RCPT_PARAMETERS = new Set(['NOTIFY', 'ORCPT']);

export function hasNonAscii(text: string): boolean {
  return /[^\x00-\x7f]/.test(text);
}

/** xtext (RFC 3461 §4): "+" followed by two upper-case hex digits escapes a character. */
export function decodeXtext(value: string): string | undefined {
  if (/\+(?![0-9A-F]{2})/.test(value)) return undefined;
  return value.replace(/\+([0-9A-F]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/** Syntax checks of MAIL parameters that smtp-server leaves to us. */
export function checkMailParameters(parsed: ParsedPathCommand): Reply | undefined {
  const args = parsed.args || {};
  for (const key of Object.keys(args)) {
    if (!MAIL_PARAMETERS.has(key)) return { code: 555, enhanced: '5.5.4', text: `Unsupported MAIL parameter ${key}` };
  }
  if (hasNonAscii(parsed.address) && args.SMTPUTF8 === undefined) {
    return { code: 553, enhanced: '5.6.7', text: 'Non-ASCII sender address requires SMTPUTF8' };
  }
  if (args.ENVID !== undefined) {
    const envid = typeof args.ENVID === 'string' ? decodeXtext(args.ENVID) : undefined;
    // RFC 3461 §4.4: at most 100 characters of printable US-ASCII.
    if (envid === undefined || envid.length > 100 || /[^\x20-\x7e]/.test(envid)) {
      return { code: 501, enhanced: '5.5.4', text: 'Bad ENVID parameter (xtext of at most 100 printable characters)' };
    }
  }
  if (args['MT-PRIORITY'] !== undefined && parseMtPriority(args['MT-PRIORITY']) === undefined) {
    return { code: 501, enhanced: '5.5.4', text: 'MT-PRIORITY must be an integer from -9 to 9' };
  }
  if (args.HOLDFOR !== undefined && args.HOLDUNTIL !== undefined) {
    return { code: 501, enhanced: '5.5.4', text: 'Use HOLDFOR or HOLDUNTIL, not both' };
  }
  if (args.HOLDFOR !== undefined && parseHoldFor(args.HOLDFOR) === undefined) {
    return { code: 501, enhanced: '5.5.4', text: 'HOLDFOR must be a number of seconds' };
  }
  if (args.HOLDUNTIL !== undefined && parseHoldUntil(args.HOLDUNTIL) === undefined) {
    return { code: 501, enhanced: '5.5.4', text: 'HOLDUNTIL must be an RFC 3339 date-time, e.g. 2030-01-01T09:00:00Z' };
  }
  return undefined;
}

/** Syntax checks of RCPT parameters that smtp-server leaves to us. */
export function checkRcptParameters(parsed: ParsedPathCommand, smtputf8: boolean): Reply | undefined {
  const args = parsed.args || {};
  for (const key of Object.keys(args)) {
    if (!RCPT_PARAMETERS.has(key)) return { code: 555, enhanced: '5.5.4', text: `Unsupported RCPT parameter ${key}` };
  }
  if (hasNonAscii(parsed.address) && !smtputf8) {
    return { code: 553, enhanced: '5.6.7', text: 'Non-ASCII recipient address requires SMTPUTF8' };
  }
  if (typeof args.ORCPT === 'string') {
    const semi = args.ORCPT.indexOf(';');
    const decoded = semi > 0 ? decodeXtext(args.ORCPT.slice(semi + 1)) : undefined;
    if (decoded === undefined || decoded === '' || /[\x00-\x1f\x7f]/.test(decoded)) {
      return { code: 501, enhanced: '5.5.4', text: 'Bad ORCPT parameter (addr-type;xtext)' };
    }
  }
  return undefined;
}

/** RFC 6710: priority-value = ["-" / "+"] DIGIT, -9..9. */
export function parseMtPriority(value: string | true): number | undefined {
  if (typeof value !== 'string' || !/^[+-]?\d$/.test(value)) return undefined;
  return Number(value);
}

/** RFC 4865: HOLDFOR = 1*9DIGIT seconds. */
export function parseHoldFor(value: string | true): number | undefined {
  if (typeof value !== 'string' || !/^\d{1,9}$/.test(value)) return undefined;
  return Number(value);
}

/** RFC 4865 (erratum 2040): HOLDUNTIL = RFC 3339 date-time. Returns epoch ms. */
export function parseHoldUntil(value: string | true): number | undefined {
  if (typeof value !== 'string') return undefined;
  if (!/^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/.test(value)) return undefined;
  const ms = Date.parse(value.toUpperCase());
  return Number.isNaN(ms) ? undefined : ms;
}

/** "2026-11-25T06:00:00Z": the RFC 3339 form FUTURERELEASE advertises. */
export function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

// ---------------------------------------------------------------------------------------------
// smtp-server subclasses

/** What the application decides per connection; called by the connection. */
export interface ProtocolHooks {
  /** Refuse a new connection (too many): answered with 421 before the greeting. */
  admit(conn: SpoolhouseConnection): Reply | undefined;
  /** The early-talker wait before the greeting, in ms (0 for none). */
  greetingDelayMs(remoteAddress: string): number;
  /** The EHLO keywords to offer, given smtp-server's list (adds MT-PRIORITY, FUTURERELEASE; may hide AUTH). */
  ehloFeatures(conn: SpoolhouseConnection, features: string[]): string[];
  /** A reason to refuse AUTH now (e.g. TLS required), else undefined. */
  authRefusal(conn: SpoolhouseConnection): Reply | undefined;
  /**
   * Called for every reply of 400 or more, with its enhanced code and text, for metrics and the
   * refusal log; `reason` when the protocol layer itself knows it (`errors`).
   */
  onRejection(code: number, enhanced: string, text: string, conn: SpoolhouseConnection, reason?: string): void;
  /** The error limits for this session's client (Postfix's smtpd_*_error_limit), or undefined for none. */
  errorLimits(conn: SpoolhouseConnection): ErrorLimits | undefined;
  /** Must a connection from this peer open with a PROXY protocol header (a trusted load balancer)? */
  expectsProxyHeader(peerAddress: string): boolean;
}

/**
 * Postfix's smtpd_soft_error_limit, smtpd_hard_error_limit and smtpd_error_sleep_time: once a
 * client has made `soft` errors without delivering mail, each of its commands is answered `sleepMs`
 * late; at `hard` errors its next command gets `421 4.7.0 Error: too many errors` and the
 * connection is closed (null: never).
 */
export interface ErrorLimits {
  soft: number;
  hard: number | null;
  sleepMs: number;
  /** Postfix's smtpd_junk_command_limit: NOOP, VRFY, ETRN and RSET beyond this many count as errors. */
  junk: number;
}

const JUNK_COMMANDS = new Set(['NOOP', 'VRFY', 'ETRN', 'RSET']);

/** NOOP, VRFY, ETRN or RSET (any case, with or without an argument): commands that move no mail. */
export function isJunkCommand(line: Buffer): boolean {
  if (line.length < 4 || (line.length > 4 && line[4] !== 0x20 && line[4] !== 0x0d && line[4] !== 0x0a)) return false;
  return JUNK_COMMANDS.has(line.toString('latin1', 0, 4).toUpperCase());
}

/**
 * Does this refusal count as the client's error? Every reply of 400 or more does (a rejected
 * recipient, a syntax error, a failed AUTH, a command out of sequence), but 421 (the connection is
 * closing anyway) and our own trouble (4.3.x: storage full, a local error, shutting down).
 */
export function countsAsClientError(code: number, enhanced: string): boolean {
  return code >= 400 && code !== 421 && !enhanced.startsWith('4.3.');
}

type ProxyCallback = (err: Error | null, socketOptions?: SMTPConnectionOptions & { id: string }) => void;

/** Session ids: random per process, then counted (smtp-server draws 80 random bits for each). */
const SESSION_ID_PREFIX = randomBytes(6).toString('hex');
let sessionCount = 0;

export class SpoolhouseSmtpServer extends SMTPServer {
  readonly hooks: ProtocolHooks;

  constructor(options: SMTPServerOptions, hooks: ProtocolHooks) {
    super(options);
    this.hooks = hooks;
  }

  /**
   * Whether a PROXY header is required from this peer: the listener's `proxyProtocol` networks
   * (smtp-server's `useProxy` takes single addresses only). The header (v2 here, v1 by smtp-server)
   * is read before the TLS handshake of an implicit-TLS listener, and its source address becomes
   * the session's `remoteAddress`; a peer that sends something else is answered "* BAD" and closed.
   */
  override _expectsProxyHeader(socket: Socket): boolean {
    return this.hooks.expectsProxyHeader(socket.remoteAddress ?? '');
  }

  /**
   * smtp-server's, with a session id that costs no call into the system's random source, per
   * connection (ids name sessions in logs; they need to be unique, not secret). A peer that must
   * send a PROXY header goes through #readProxyHeader (v2 there, v1 by smtp-server's own reader).
   */
  override _handleProxy(socket: Socket, callback: ProxyCallback): void {
    if (this._expectsProxyHeader(socket)) return this.#readProxyHeader(socket, callback);
    const socketOptions = {
      id: `${SESSION_ID_PREFIX}${(++sessionCount).toString(32).padStart(4, '0')}`,
      ignore: !!this.options.ignoredHosts?.includes(socket.remoteAddress ?? ''),
    };
    setImmediate(() => callback(null, socketOptions));
  }

  /**
   * A peer that must send a PROXY header: version 2 (binary, proxy-v2.ts) is read here; anything
   * else goes, with the bytes read so far put back, to smtp-server's reader of version 1 (which
   * answers "* BAD" to what is neither). A bad v2 header is answered the same way and closed.
   */
  #readProxyHeader(socket: Socket, callback: ProxyCallback): void {
    let buffered: Buffer = Buffer.alloc(0);
    let finished = false;
    const cleanup = () => {
      finished = true;
      socket.off('readable', onReadable);
      socket.off('error', onError);
      socket.off('close', onClosed);
      socket.off('end', onClosed);
    };
    const fail = (err: Error, answer?: string): void => {
      if (finished) return;
      cleanup();
      socket.on('error', () => undefined); // a late EPIPE must not become an uncaught exception
      if (answer) {
        socket.end(answer);
        setTimeout(() => socket.destroy(), 1000).unref();
      } else {
        socket.destroy();
      }
      callback(err);
    };
    const onError = (err: Error) => fail(err);
    const onClosed = () => fail(new Error('Socket closed before PROXY header was received'));
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while ((chunk = socket.read() as Buffer | null) !== null) buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
      if (finished) return;
      if (!mayBeProxyV2(buffered)) {
        cleanup();
        socket.unshift(buffered);
        // After this turn, when the stream no longer counts our 'readable' listener: smtp-server's
        // reader then gets a 'readable' event for the bytes put back.
        setImmediate(() => super._handleProxy(socket, callback));
        return;
      }
      const parsed = parseProxyV2(buffered);
      if (parsed.kind === 'more') return;
      if (parsed.kind === 'invalid') return fail(new Error(parsed.reason), '* BAD Invalid PROXY header\r\n');
      cleanup();
      const rest = buffered.subarray(parsed.length);
      if (rest.length) socket.unshift(rest);
      callback(null, {
        id: `${SESSION_ID_PREFIX}${(++sessionCount).toString(32).padStart(4, '0')}`,
        // LOCAL (the balancer's health check) or UNSPEC: the balancer itself is the client.
        ...(parsed.source ? { remoteAddress: parsed.source.address, remotePort: parsed.source.port } : {}),
        ignore: !!this.options.ignoredHosts?.includes(parsed.source?.address ?? socket.remoteAddress ?? ''),
      });
    };
    socket.on('readable', onReadable);
    socket.on('error', onError);
    socket.on('close', onClosed);
    socket.on('end', onClosed);
  }

  override connect(socket: Socket | TLSSocket, socketOptions?: SMTPConnectionOptions | null): void {
    const connection = new SpoolhouseConnection(this, socket, socketOptions);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
  }
}

export class SpoolhouseConnection extends SMTPConnection {
  #inEhlo = false;
  /** The command line being answered, as smtp-server hands it (decoded only for a refusal). */
  #command: Buffer | undefined;
  /** It continues an AUTH exchange (credentials: never shown). */
  #continuation = false;
  /** 354 was sent: a refusal now answers the data's final ".". */
  #afterData = false;
  /** The client's errors since it last delivered a mail (countsAsClientError); see ErrorLimits. */
  #errors = 0;
  /** Its junk commands since then (isJunkCommand). */
  #junk = 0;
  /** The reason of the refusal being sent, when this layer knows it (onRejection's `reason`). */
  #reason: string | undefined;
  /** The MAIL or RCPT command handler_MAIL/RCPT parsed last: smtp-server's handler parses it again. */
  #lastPath?: { kind: 'MAIL FROM' | 'RCPT TO'; raw: string; parsed: ParsedPathCommand | undefined };

  #parsePath(kind: 'MAIL FROM' | 'RCPT TO', raw: string): ParsedPathCommand | undefined {
    const last = this.#lastPath;
    if (last && last.kind === kind && last.raw === raw) return last.parsed;
    const parsed = parsePathCommand(kind, raw);
    this.#lastPath = { kind, raw, parsed };
    return parsed;
  }

  get hooks(): ProtocolHooks {
    return (this._server as SpoolhouseSmtpServer).hooks;
  }

  /** smtp-server's answers per command name, for the session's disabled list they were computed with. */
  #supported?: { disabled: unknown; answers: Map<string, boolean> };

  /**
   * smtp-server asks this two or three times a command (the command, then AUTH twice), each time
   * normalising every entry of the session's disabled list. The answer only changes when that list
   * does, and the ingress replaces the list (never edits it in place), so it is kept per list.
   */
  override _isSupported(command: string): boolean {
    const disabled = this.session?.disabledCommands;
    let memo = this.#supported;
    if (!memo || memo.disabled !== disabled) memo = this.#supported = { disabled, answers: new Map() };
    let answer = memo.answers.get(command);
    if (answer === undefined) {
      answer = super._isSupported(command);
      // Only names we answer to are worth keeping; a client sending junk does not grow the map.
      if (answer || memo.answers.size < 32) memo.answers.set(command, answer);
    }
    return answer;
  }

  /** smtp-server's parser, finding the end of the data with indexOf and continuing after it right (data-stream.ts). */
  override _createParser(): SMTPStream {
    const parser = super._createParser();
    parser._feedDataStream = feedDataStream;
    parser.continue = continueAfterData;
    return parser;
  }

  /** smtp-server's init with our admission check and a configurable early-talker wait. */
  override init(): void {
    this._setListeners(() => {
      const refusal = this.hooks.admit(this);
      if (refusal) {
        this.send(refusal.code, `${refusal.enhanced} ${this.name} ${refusal.text}`);
        return;
      }
      const delay = this.hooks.greetingDelayMs(this.remoteAddress);
      if (delay <= 0) {
        this.connectionReady();
        return;
      }
      // Until connectionReady() greets, smtp-server answers anything the client sends with
      // "421 You talk too soon": that is the early-talker check.
      setTimeout(() => this.connectionReady(), delay).unref();
    });
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    const junk = this._nextHandler === false && isJunkCommand(command);
    const limits = junk || this.#errors > 0 ? this.hooks.errorLimits(this) : undefined;
    if (limits && limits.hard !== null && this.#errors >= limits.hard) {
      this.#command = command;
      this.#continuation = false;
      this.#afterData = false;
      this.#reason = 'errors';
      // smtp-server closes the connection after any 421.
      this.send(421, `4.7.0 ${this.name} Error: too many errors`);
      return;
    }
    const late = limits !== undefined && this.#errors >= limits.soft && limits.sleepMs > 0;
    // A client that keeps its session open with commands that move no mail makes errors too
    // (counted as this command is answered, as a refusal is).
    if (junk && limits && ++this.#junk > limits.junk) this.#errors++;
    if (late) {
      // smtp-server reads the next command only once this one's callback runs: everything after
      // it waits too, pipelined commands included.
      setTimeout(() => {
        if (!this._closing && !this._closed) this.#dispatch(command, callback);
      }, limits.sleepMs).unref();
      return;
    }
    this.#dispatch(command, callback);
  }

  #dispatch(command: Buffer, callback?: () => void): void {
    this.#command = command;
    this.#continuation = this._nextHandler !== false;
    this.#afterData = false;
    super._onCommand(command, callback);
  }

  /**
   * What the client said that is being answered, for the refusal log: the command line (cut at
   * 200 characters), AUTH without its credentials, "DATA (end of data)" after 354, or undefined
   * before the first command.
   */
  get commandForLog(): string | undefined {
    if (!this.#command) return undefined;
    if (this.#continuation) return 'AUTH (response)';
    if (this.#afterData) return 'DATA (end of data)';
    const line = this.#command.toString('utf8').replace(/[\r\n]+$/, '');
    if (/^AUTH\b/i.test(line)) return line.split(/\s+/).slice(0, 2).join(' ');
    return line.length > 200 ? `${line.slice(0, 200)}…` : line;
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    let payload = data;
    let ctx = context;
    if (typeof payload === 'string' && ctx !== false) {
      const m = ENHANCED_PREFIX.exec(payload);
      if (m && m[1] === String(code)[0]) {
        ctx = `${m[1]}.${m[2]}.${m[3]}`;
        payload = m[4]!;
      }
    }
    if (code === 250 && Array.isArray(payload) && this.#inEhlo) {
      // smtp-server sends EHLO as [greeting, ...features]; the policy edits the features.
      this.#inEhlo = false;
      payload = [payload[0]!, ...this.hooks.ehloFeatures(this, payload.slice(1))];
    }
    if (code === 354) this.#afterData = true;
    else if (code >= 400) {
      const reason = this.#reason;
      this.#reason = undefined;
      const enhanced = this._getEnhancedStatusCode(code, ctx) || '';
      // An explicit code counts even for a client that did not ask for them (HELO): 4.3.x is ours.
      if (countsAsClientError(code, (typeof ctx === 'string' && ENHANCED_CODE.test(ctx) ? ctx : '') || enhanced)) this.#errors++;
      try {
        const text = Array.isArray(payload) ? payload.join(' ') : (payload ?? '');
        this.hooks.onRejection(code, enhanced, text, this, reason);
      } catch {
        // metrics and the refusal log must never break a reply
      }
    } else if (code === 250 && this.#afterData) {
      // A mail delivered: the counts start again (Postfix counts errors "without delivering mail").
      this.#errors = 0;
      this.#junk = 0;
    }
    super.send(code, payload, ctx);
  }

  /** An explicit enhanced code passed as the context wins over smtp-server's mapping. */
  override _getEnhancedStatusCode(code: number, context?: string | false): string {
    if (typeof context === 'string' && ENHANCED_CODE.test(context)) {
      return this._useEnhancedStatusCodes() && !(code >= 300 && code < 400) ? context : '';
    }
    return super._getEnhancedStatusCode(code, context);
  }

  override _parseAddressCommand(rawName: string, rawCommand: Buffer | string): ReturnType<SMTPConnection['_parseAddressCommand']> {
    const kind = rawName.trim().toUpperCase() === 'MAIL FROM' ? 'MAIL FROM' : 'RCPT TO';
    const parsed = this.#parsePath(kind, rawCommand.toString());
    if (!parsed) return false;
    // A copy of the parameters: the parse may be reused for the same command line sent again.
    const args = parsed.args && { ...parsed.args };
    return parsed.duplicate ? { address: parsed.address, args, duplicate: parsed.duplicate } : { address: parsed.address, args };
  }

  override handler_EHLO(command: Buffer, callback: () => void): void {
    this.#inEhlo = true;
    try {
      super.handler_EHLO(command, callback);
    } finally {
      this.#inEhlo = false;
    }
  }

  override handler_MAIL(command: Buffer, callback: () => void): void {
    const parsed = this.#parsePath('MAIL FROM', command.toString());
    if (parsed && !this.session.envelope.mailFrom) {
      const problem = checkMailParameters(parsed);
      if (problem) return this.#refuse(problem, callback);
    }
    super.handler_MAIL(command, callback);
  }

  override handler_RCPT(command: Buffer, callback: () => void): void {
    const parsed = this.#parsePath('RCPT TO', command.toString());
    if (parsed && parsed.address && this.session.envelope.mailFrom) {
      const problem = checkRcptParameters(parsed, this.session.envelope.smtpUtf8 === true);
      if (problem) return this.#refuse(problem, callback);
    }
    super.handler_RCPT(command, callback);
  }

  /**
   * After the 221 the connection is closed at once (as Postfix does), not half-closed to wait for
   * the client's FIN: a client that resets the connection after 221 (smtp-source does) then costs
   * no read error, and nothing the client sends after QUIT is read. Only when the 221 has left
   * Node's queue (it is in the kernel's, which sends it before the FIN) and only without TLS
   * (there end() sends the close_notify alert first).
   */
  override handler_QUIT(command: Buffer, callback: () => void): void {
    super.handler_QUIT(command, callback);
    const socket = this._socket;
    if (!this.secure && !socket.destroyed && socket.writableLength === 0) socket.destroy();
  }

  override handler_AUTH(command: Buffer, callback: () => void): void {
    if (this.session.envelope?.mailFrom) {
      return this.#refuse({ code: 503, enhanced: '5.5.1', text: 'AUTH not permitted during a mail transaction' }, callback);
    }
    const refusal = this.hooks.authRefusal(this);
    if (refusal) return this.#refuse(refusal, callback);
    super.handler_AUTH(command, callback);
  }

  #refuse(reply: Reply, callback: () => void): void {
    this.send(reply.code, reply.text, reply.enhanced);
    callback();
  }
}
