/**
 * A scripted receiving SMTP server on loopback (npm `smtp-server`), the "remote MX" of delivery
 * tests. It records everything a sender did and answers the way the test tells it to.
 *
 * What it guarantees:
 * - Every TCP connection is counted (`openConnections`, `maxConcurrency`), from accept to close,
 *   whether or not it got as far as a greeting.
 * - Every SMTP session is recorded (`connections`): HELO name, TLS, AUTH user, each command line
 *   as received (credentials redacted by smtp-server), and its transactions.
 * - Every transaction that reached DATA is recorded (`transactions`) with MAIL FROM and RCPT TO
 *   and their ESMTP parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, NOTIFY, ORCPT), the message
 *   bytes exactly as received (dot-unstuffed by smtp-server), whether the final "." arrived
 *   (`complete`) and the reply given to it. `completed()` lists only transactions whose data
 *   ended with "." — a sender that aborts before the dot leaves `complete: false` behind.
 *   `data`/`bytes` are live while DATA is in progress (all but the last ≤4 bytes read so far),
 *   so a test can see a sender that stopped just before its final ".".
 * - Waiting is event-driven: `until(probe)` re-asks on every recorded step (and every 200 ms),
 *   `waitForCompleted(n)`; for numbered mail (an "X-Seq:" header, see `seqOf`) `tally` and
 *   `waitForDeliveries` say what arrived, what is missing and how many came twice.
 * - Replies follow `script`, which the test may replace at any time (`receiver.script = …`):
 *   per step a reply text such as "450 4.2.0 Mailbox busy" (the code is its first three digits;
 *   the rest is sent verbatim), "drop" (close the TCP connection at once) or "stall" (never
 *   answer; the sender's timeout must act). Unscripted steps accept.
 * - Extensions are advertised per options: SMTPUTF8, 8BITMIME, DSN, PIPELINING (default on),
 *   SIZE (when `size` is set), STARTTLS (when `starttls`, with a self-signed certificate made
 *   by openssl for the test; `brokenTls` offers it but fails every handshake), AUTH PLAIN/LOGIN
 *   (when `auth`; then required before MAIL). `implicitTls` speaks TLS from the first byte.
 * - It binds 127.0.0.1 port 0 unless told otherwise (`host`, `port`): several receivers on
 *   127.0.0.1, 127.0.0.2, … sharing one port stand for several MX hosts on delivery.port.
 *
 * Usage:
 *   const rx = await startReceiver({ script: { rcpt: { 'b@x.test': '550 5.1.1 No such user' } } });
 *   … deliver to 127.0.0.1:rx.port …
 *   expect(rx.completed()[0].data.equals(body)).toBe(true);
 *   await rx.close();
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer, type SMTPServerAddress, type SMTPServerSession } from 'smtp-server';

/** "250 …", "450 4.2.0 …", "550 5.1.1 …"; or drop the connection, or never answer. */
export type ScriptStep = string | 'drop' | 'stall';

export interface ReceiverScript {
  /**
   * Instead of the 220 greeting: a 4xx/5xx reply (then the server closes), "drop" or "stall"; or
   * a function of the sessions greeted with 220 and still open (a remote's per-client limit),
   * which may also have the greeting wait (`{ step, delayMs }`).
   */
  greeting?: ScriptStep | ((sessionsOpen: number) => ScriptStep | undefined | { step?: ScriptStep; delayMs: number });
  /** Reply to EHLO/HELO ("drop"/"stall" or a 4xx/5xx reply). */
  ehlo?: ScriptStep;
  /** Reply to MAIL FROM, fixed or per sender. */
  mailFrom?: ScriptStep | ((address: string, connection: ReceivedConnection) => ScriptStep | undefined);
  /** Reply to RCPT TO per recipient address (lower-cased keys), or a function. */
  rcpt?: Record<string, ScriptStep> | ((address: string, connection: ReceivedConnection) => ScriptStep | undefined);
  /** Reply after the final "." (the whole message has been read by then). */
  dataEnd?: ScriptStep | ((transaction: ReceivedTransaction) => ScriptStep | undefined);
  /** Wait this long before that reply (a slow remote: keeps connections open). */
  dataEndDelayMs?: number;
}

export interface ReceiverOptions {
  script?: ReceiverScript;
  /** Loopback address to bind (default 127.0.0.1; any of 127.0.0.0/8 works on Linux, handy for MX fail-over tests). */
  host?: string;
  /** Port to bind (default 0: any free one); e.g. a second receiver on 127.0.0.2 with the first one's port. */
  port?: number;
  /** The server's name in its greeting and EHLO reply. */
  name?: string;
  /** Offer STARTTLS with a generated self-signed certificate (or `certificate`). */
  starttls?: boolean;
  /** The certificate to offer instead of the generated one (PEM). */
  certificate?: { key: string; cert: string };
  /** Offer STARTTLS but make every handshake fail (the server speaks only TLS 1.0/1.1, which clients refuse). */
  brokenTls?: boolean;
  /** TLS from the first byte (SMTPS), with the same generated certificate. */
  implicitTls?: boolean;
  /** Offer AUTH PLAIN LOGIN with these credentials and require it before MAIL FROM. */
  auth?: { user: string; pass: string };
  /** Advertise SIZE with this limit (and enforce it); undefined: no SIZE. */
  size?: number;
  smtputf8?: boolean;
  eightBitMime?: boolean;
  dsn?: boolean;
  pipelining?: boolean;
  /**
   * Advertise ENHANCEDSTATUSCODES (default false: scripted replies carry their own codes). When
   * true, smtp-server prefixes its own enhanced code, so script replies without one ("450 Busy").
   */
  enhancedStatusCodes?: boolean;
}

export interface Param {
  address: string;
  /** ESMTP parameters as given (keys upper-cased by smtp-server), e.g. { NOTIFY: 'FAILURE', ORCPT: 'rfc822;a@b' }. */
  args: Record<string, string | true>;
}

export interface ReceivedTransaction {
  connectionId: string;
  mailFrom: Param;
  /** The recipients the server accepted (a rejected RCPT is not part of the transaction). */
  rcptTo: Param[];
  /**
   * Message bytes as received (after dot-unstuffing), up to the final "." or the connection loss.
   * Live while DATA is in progress: smtp-server holds back the last 4 bytes it has read until it
   * knows they are not part of the final "\r\n.\r\n", so a sender stopped just before the "."
   * shows here as all of its body but at most its last 4 bytes.
   */
  readonly data: Buffer;
  /** Bytes received so far (the length of `data`). */
  readonly bytes: number;
  /** The final "." arrived: the remote had the whole message. */
  complete: boolean;
  /** The reply given to the final "." (undefined when none was given), and when (ms since the epoch). */
  reply?: string;
  repliedAt?: number;
  secure: boolean;
}

export interface ReceivedConnection {
  id: string;
  remoteAddress: string;
  openedAt: number;
  closedAt?: number;
  /** Greeted with 220 (not refused at the greeting). */
  greeted?: boolean;
  /** The name given in EHLO/HELO. */
  heloName?: string;
  secure: boolean;
  authUser?: string;
  /** Every command line in order, as received ("EHLO x", "MAIL FROM:<a@b> SIZE=10", "RSET", …). */
  commands: string[];
  /** RCPT TO commands answered with a scripted 4xx/5xx (or dropped/stalled), with that step. */
  refusedRecipients: { address: string; step: ScriptStep }[];
  transactions: ReceivedTransaction[];
}

/** An error smtp-server turns into the reply `text` (code from its first three digits). */
class ScriptedReplyError extends Error {
  readonly responseCode: number;
  constructor(text: string) {
    const m = /^(\d{3})(?:[ -](.*))?$/s.exec(text.trim());
    if (!m) throw new Error(`bad scripted reply ${JSON.stringify(text)} (want e.g. "450 4.2.0 Busy")`);
    super(m[2] ?? '');
    this.responseCode = Number(m[1]);
  }
}

type Callback = (err?: Error | null) => void;

let sharedCert: { key: string; cert: string } | undefined;

/** A self-signed certificate for "localhost"/127.0.0.1, made once per test process. */
export function testCertificate(): { key: string; cert: string } {
  if (sharedCert) return sharedCert;
  const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-rx-tls-'));
  try {
    const keyFile = join(dir, 'key.pem');
    const certFile = join(dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile,
      '-out', certFile, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
    sharedCert = { key: readFileSync(keyFile, 'utf8'), cert: readFileSync(certFile, 'utf8') };
    return sharedCert;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export class Receiver {
  readonly host: string;
  port: number;
  /** Replace or edit at any time; read on every step. */
  script: ReceiverScript;
  readonly connections: ReceivedConnection[] = [];
  readonly transactions: ReceivedTransaction[] = [];
  /** TCP connections open now and the most seen at once. */
  openConnections = 0;
  maxConcurrency = 0;
  /** TCP connections accepted in all. */
  acceptedConnections = 0;

  readonly #server: SMTPServer;
  readonly #byId = new Map<string, ReceivedConnection>();
  readonly #sockets = new Set<Socket>();
  #waiters: (() => void)[] = [];
  #closing: Promise<void> | undefined;
  /** X-Seq of completed transactions, parsed once. */
  readonly #seqs = new WeakMap<ReceivedTransaction, number>();

  constructor(options: ReceiverOptions = {}) {
    this.script = options.script ?? {};
    this.host = options.host ?? '127.0.0.1';
    this.port = options.port ?? 0;
    const tls = options.starttls || options.implicitTls || options.brokenTls ? options.certificate ?? testCertificate() : undefined;
    this.#server = new SMTPServer({
      name: options.name ?? 'receiver.test',
      secure: options.implicitTls === true,
      ...(tls ? { key: tls.key, cert: tls.cert } : {}),
      hideSTARTTLS: !options.starttls && !options.brokenTls,
      // Without `starttls` the command is refused too, not merely unadvertised.
      ...(options.starttls || options.implicitTls || options.brokenTls ? {} : { disabledCommands: ['STARTTLS'] }),
      ...(options.brokenTls ? { minVersion: 'TLSv1' as const, maxVersion: 'TLSv1.1' as const } : {}),
      hideSMTPUTF8: options.smtputf8 === false,
      hide8BITMIME: options.eightBitMime === false,
      hideDSN: options.dsn === false,
      hidePIPELINING: options.pipelining === false,
      hideENHANCEDSTATUSCODES: options.enhancedStatusCodes !== true,
      ...(options.size !== undefined ? { size: options.size } : {}),
      authMethods: options.auth ? ['PLAIN', 'LOGIN'] : [],
      authOptional: !options.auth,
      allowInsecureAuth: true,
      disableReverseLookup: true,
      closeTimeout: 100,
      socketTimeout: 60_000,
      logger: this.#commandLogger(),
      onConnect: (session, cb) => this.#onConnect(session, cb),
      onAuth: (auth, session, cb) => {
        const ok = options.auth && auth.username === options.auth.user && auth.password === options.auth.pass;
        if (!ok) return cb(new ScriptedReplyError('535 5.7.8 Authentication credentials invalid'));
        this.#connection(session).authUser = auth.username;
        cb(null, { user: auth.username });
      },
      onMailFrom: (address, session, cb) => this.#onMailFrom(address, session, cb),
      onRcptTo: (address, session, cb) => this.#onRcptTo(address, session, cb),
      onData: (stream, session, cb) => this.#onData(stream, session, cb),
      onClose: (session) => {
        const c = this.#byId.get(session.id);
        if (c) c.closedAt = Date.now();
      },
    });
    this.#server.on('error', () => { /* client misbehaviour is what these tests provoke */ });
    // EHLO has no hook in smtp-server: wrap the connection's handler when a script asks for it.
    this.#server.server.on('connection', (socket: Socket) => this.#onTcpConnection(socket));
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  async listen(): Promise<this> {
    await new Promise<void>((resolve, reject) => {
      this.#server.server.once('error', reject);
      this.#server.listen(this.port, this.host, () => {
        this.#server.server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.#server.server.address() as { port: number }).port;
    return this;
  }

  /** Transactions whose data ended with the final "." (whatever the reply to it). */
  completed(): ReceivedTransaction[] {
    return this.transactions.filter((t) => t.complete);
  }

  /** Completed transactions that were answered 2xx: what the remote took responsibility for. */
  accepted(): ReceivedTransaction[] {
    return this.transactions.filter((t) => t.complete && t.reply !== undefined && t.reply.startsWith('2'));
  }

  /** Resolves once `n` transactions are complete (or rejects after timeoutMs). */
  async waitForCompleted(n: number, timeoutMs = 10_000): Promise<ReceivedTransaction[]> {
    await this.until(() => this.completed().length >= n, timeoutMs).catch(() => {
      throw new Error(`receiver: ${this.completed().length} of ${n} transactions completed after ${timeoutMs} ms`);
    });
    return this.completed();
  }

  /**
   * Resolves with the first truthy value of `probe`, asked again whenever the receiver records
   * something (a command's effect, a data chunk, a final ".") and at least every 200 ms; rejects
   * after timeoutMs.
   */
  async until<T>(probe: () => T | undefined | false | null, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = probe();
      if (v) return v;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`receiver: condition not met after ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 200));
        this.#waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }

  /**
   * How the mails numbered `expected` (by their X-Seq header, see `seqOf`) arrived: each completed
   * transaction's number in order of arrival, which never arrived, how many arrived twice or more.
   */
  tally(expected: Iterable<number>): DeliveryTally {
    const received: number[] = [];
    for (const tx of this.completed()) {
      let seq = this.#seqs.get(tx);
      if (seq === undefined) {
        seq = seqOf(tx.data) ?? NaN;
        this.#seqs.set(tx, seq);
      }
      received.push(seq);
    }
    const times = new Map<number, number>();
    for (const s of received) times.set(s, (times.get(s) ?? 0) + 1);
    return {
      received,
      distinct: new Set(times.keys()),
      missing: [...expected].filter((s) => !times.has(s)),
      duplicates: received.length - times.size,
      times,
    };
  }

  /**
   * Waits until every mail numbered in `expected` has arrived complete at least once, or until
   * timeoutMs, and returns the tally either way (the caller asserts on `missing`, so a failure
   * names the mails that never came). Duplicates are counted, never waited for.
   */
  async waitForDeliveries(expected: Iterable<number>, timeoutMs: number): Promise<DeliveryTally> {
    const wanted = [...expected];
    await this.until(() => this.tally(wanted).missing.length === 0, timeoutMs).catch(() => undefined);
    return this.tally(wanted);
  }

  /** Forgets what was recorded (the counters of open connections stay true). */
  clear(): void {
    this.connections.length = 0;
    this.transactions.length = 0;
    this.acceptedConnections = 0;
    this.maxConcurrency = this.openConnections;
  }

  /** Closes the server and every connection; calling it again waits for the same close. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const s of this.#sockets) s.destroy();
      await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    })();
    return this.#closing;
  }

  #notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  #onTcpConnection(socket: Socket): void {
    this.acceptedConnections++;
    this.openConnections++;
    this.maxConcurrency = Math.max(this.maxConcurrency, this.openConnections);
    this.#sockets.add(socket);
    socket.once('close', () => {
      this.openConnections--;
      this.#sockets.delete(socket);
    });
  }

  #connection(session: SMTPServerSession): ReceivedConnection {
    let c = this.#byId.get(session.id);
    if (!c) {
      c = { id: session.id, remoteAddress: session.remoteAddress, openedAt: Date.now(), secure: session.secure, commands: [], refusedRecipients: [], transactions: [] };
      this.#byId.set(session.id, c);
      this.connections.push(c);
    }
    c.secure = session.secure;
    if (session.hostNameAppearsAs) c.heloName = session.hostNameAppearsAs;
    return c;
  }

  /** Destroys the TCP connection of a session (smtp-server gives callbacks no socket). */
  #drop(session: SMTPServerSession): void {
    const connections = (this.#server as unknown as { connections: Set<{ id: string; _socket?: Socket }> }).connections;
    for (const c of connections) if (c.id === session.id) c._socket?.destroy();
  }

  /** Applies a script step: undefined accepts, a reply text answers, drop/stall do what they say. */
  #step(step: ScriptStep | undefined, session: SMTPServerSession, cb: Callback): void {
    if (step === undefined) return cb();
    if (step === 'stall') return;
    if (step === 'drop') return this.#drop(session);
    if (/^2/.test(step)) return cb();
    cb(new ScriptedReplyError(step));
  }

  #onConnect(session: SMTPServerSession, cb: Callback): void {
    const c = this.#connection(session);
    const g = this.script.greeting;
    const chosen = typeof g === 'function' ? g(this.connections.filter((x) => x.greeted && x.closedAt === undefined).length) : g;
    const { step, delayMs } = typeof chosen === 'object' ? chosen : { step: chosen, delayMs: 0 };
    const greet = () => {
      if (step === 'drop') {
        c.closedAt = Date.now();
        return this.#drop(session);
      }
      this.#wrapEhlo(session);
      if (step === undefined || /^2/.test(step)) c.greeted = true;
      this.#step(step, session, cb);
    };
    if (delayMs > 0) setTimeout(greet, delayMs);
    else greet();
  }

  /** smtp-server has no EHLO hook: intercept the connection's EHLO/HELO handlers for scripts. */
  #wrapEhlo(session: SMTPServerSession): void {
    const connections = (this.#server as unknown as { connections: Set<Record<string, unknown> & { id: string }> }).connections;
    for (const conn of connections) {
      if (conn.id !== session.id) continue;
      for (const name of ['handler_EHLO', 'handler_HELO'] as const) {
        const original = conn[name] as (command: Buffer, callback: () => void) => void;
        if (typeof original !== 'function') continue;
        conn[name] = (command: Buffer, callback: () => void) => {
          const step = this.script.ehlo;
          if (step === undefined || /^2/.test(step)) return original.call(conn, command, callback);
          if (step === 'stall') return;
          if (step === 'drop') return this.#drop(session);
          const err = new ScriptedReplyError(step);
          (conn.send as (code: number, text: string) => void).call(conn, err.responseCode, err.message);
          callback();
        };
      }
    }
  }

  #onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: Callback): void {
    const c = this.#connection(session);
    const s = this.script.mailFrom;
    this.#step(typeof s === 'function' ? s(address.address, c) : s, session, cb);
  }

  #onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: Callback): void {
    const c = this.#connection(session);
    const s = this.script.rcpt;
    const step = typeof s === 'function' ? s(address.address, c) : s?.[address.address.toLowerCase()];
    if (step !== undefined && !/^2/.test(step)) c.refusedRecipients.push({ address: address.address, step });
    this.#step(step, session, cb);
  }

  #onData(stream: NodeJS.ReadableStream & { sizeExceeded?: boolean }, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const c = this.#connection(session);
    const chunks: Buffer[] = [];
    let bytes = 0;
    let joined: Buffer | undefined;
    const tx: ReceivedTransaction = {
      connectionId: c.id,
      mailFrom: param(session.envelope.mailFrom || { address: '', args: false }),
      rcptTo: session.envelope.rcptTo.map(param),
      // Joined on demand (and kept until the next chunk), so a large message is not copied per chunk.
      get data() {
        joined ??= Buffer.concat(chunks, bytes);
        return joined;
      },
      get bytes() {
        return bytes;
      },
      complete: false,
      secure: session.secure,
    };
    c.transactions.push(tx);
    this.transactions.push(tx);
    stream.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      bytes += chunk.length;
      joined = undefined;
      this.#notify();
    });
    stream.on('end', () => {
      tx.complete = true;
      const delay = this.script.dataEndDelayMs ?? 0;
      if (delay > 0) setTimeout(answer, delay);
      else answer();
    });
    const answer = () => {
      const s = this.script.dataEnd;
      const step = typeof s === 'function' ? s(tx) : s;
      if (step === 'stall') return this.#notify();
      if (step === 'drop') {
        this.#drop(session);
        return this.#notify();
      }
      tx.repliedAt = Date.now();
      if (step === undefined || /^2/.test(step)) {
        tx.reply = step ?? '250 2.0.0 Ok: queued';
        cb(null, tx.reply.slice(4));
      } else {
        const err = new ScriptedReplyError(step);
        tx.reply = step;
        cb(err);
      }
      this.#notify();
    };
  }

  /** A bunyan-style logger that keeps each client command line (smtp-server logs them at debug). */
  #commandLogger(): Record<string, (...args: unknown[]) => void> {
    const keep = (meta: unknown, ...rest: unknown[]): void => {
      const m = meta as { tnx?: string; cid?: string } | undefined;
      if (m?.tnx !== 'command' || !m.cid || rest[0] !== 'C:') return;
      const c = this.#byId.get(m.cid);
      if (c) c.commands.push(String(rest[1]));
    };
    const nothing = (): void => {};
    return { debug: keep, info: nothing, warn: nothing, error: nothing, trace: nothing, fatal: nothing, child: () => this.#commandLogger() } as Record<string, (...args: unknown[]) => void>;
  }
}

function param(a: SMTPServerAddress | { address: string; args: false }): Param {
  const args: Record<string, string | true> = {};
  if (a.args && typeof a.args === 'object') for (const [k, v] of Object.entries(a.args)) args[k.toUpperCase()] = v as string | true;
  return { address: a.address, args };
}

/** What arrived of a numbered set of mails (see `Receiver.tally`). */
export interface DeliveryTally {
  /** X-Seq of every completed transaction, in order of arrival (NaN for a message without one). */
  received: number[];
  distinct: Set<number>;
  /** Expected numbers that never arrived complete. */
  missing: number[];
  /** Arrivals beyond the first of the same number. */
  duplicates: number;
  /** How often each number arrived. */
  times: Map<number, number>;
}

/** The number in a message's "X-Seq:" header: how end-to-end tests tell apart the mails they send. */
export function seqOf(data: Buffer): number | undefined {
  const text = data.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const m = /(?:^|\r\n)X-Seq: (\d+)\r\n/i.exec(end < 0 ? text : text.slice(0, end + 2));
  return m ? Number(m[1]) : undefined;
}

/** Starts a receiver on 127.0.0.1 port 0. */
export async function startReceiver(options: ReceiverOptions = {}): Promise<Receiver> {
  return new Receiver(options).listen();
}
