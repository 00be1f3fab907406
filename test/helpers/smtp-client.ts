/**
 * A raw-socket SMTP client for protocol edge cases that a real mail library would never send
 * (bare LF, pipelined garbage, cut-off DATA). It writes exactly the bytes it is given and parses
 * replies (multi-line included) in order. STARTTLS and implicit TLS are supported.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface SmtpReply {
  code: number;
  /** Enhanced status code when the reply carries one, e.g. "5.7.1". */
  enhanced?: string;
  /** The text of the last line, without code and enhanced code. */
  text: string;
  /** Text of every line (without "250-" prefixes). */
  lines: string[];
  raw: string;
}

export class SmtpClient {
  #socket: net.Socket;
  #buffer = '';
  #replies: SmtpReply[] = [];
  #waiters: { resolve: (r: SmtpReply) => void; reject: (e: Error) => void }[] = [];
  #closed = false;
  #closeWaiters: (() => void)[] = [];
  #error: Error | undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    this.#attach(socket);
  }

  static async connect(o: { port: number; host?: string; implicitTls?: boolean; localAddress?: string; family?: number }): Promise<SmtpClient> {
    const host = o.host ?? '127.0.0.1';
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = o.implicitTls
        ? tls.connect({ host, port: o.port, rejectUnauthorized: false, servername: 'localhost' }, () => resolve(s))
        : net.connect({ host, port: o.port, ...(o.localAddress ? { localAddress: o.localAddress } : {}) }, () => resolve(s));
      s.once('error', reject);
    });
    return new SmtpClient(socket);
  }

  get closed(): boolean {
    return this.#closed;
  }

  #attach(socket: net.Socket): void {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', (err) => {
      this.#error = err;
    });
    socket.on('close', () => {
      this.#closed = true;
      for (const w of this.#waiters.splice(0)) w.reject(this.#error ?? new Error('connection closed'));
      for (const c of this.#closeWaiters.splice(0)) c();
    });
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    for (;;) {
      const lines: string[] = [];
      let pos = 0;
      let complete: SmtpReply | undefined;
      while (pos < this.#buffer.length) {
        const eol = this.#buffer.indexOf('\r\n', pos);
        if (eol < 0) break;
        const line = this.#buffer.slice(pos, eol);
        pos = eol + 2;
        lines.push(line);
        if (/^\d{3}( |$)/.test(line)) {
          complete = parseReply(lines);
          break;
        }
      }
      if (!complete) return;
      this.#buffer = this.#buffer.slice(pos);
      const waiter = this.#waiters.shift();
      if (waiter) waiter.resolve(complete);
      else this.#replies.push(complete);
    }
  }

  /** The next reply from the server (the greeting first). */
  read(timeoutMs = 10_000): Promise<SmtpReply> {
    const ready = this.#replies.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#closed) return Promise.reject(new Error('connection closed'));
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (r: SmtpReply) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error(`no SMTP reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /** Writes bytes exactly as given. */
  write(data: string | Buffer): void {
    this.#socket.write(data);
  }

  /** Sends one command line (CRLF added) and reads its reply. */
  async command(line: string): Promise<SmtpReply> {
    this.write(line + '\r\n');
    return this.read();
  }

  async ehlo(name = 'client.example'): Promise<SmtpReply> {
    return this.command(`EHLO ${name}`);
  }

  /** STARTTLS, then a new EHLO over TLS. Resolves with the EHLO reply. */
  async starttls(o: { ca?: string | Buffer; servername?: string; ehloName?: string } = {}): Promise<SmtpReply> {
    const r = await this.command('STARTTLS');
    if (r.code !== 220) throw new Error(`STARTTLS refused: ${r.raw}`);
    const plain = this.#socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ socket: plain, servername: o.servername ?? 'localhost', ...(o.ca ? { ca: o.ca } : { rejectUnauthorized: false }) }, () => resolve(s));
      s.once('error', reject);
    });
    this.#socket = secure;
    this.#buffer = '';
    this.#attach(secure);
    return this.ehlo(o.ehloName);
  }

  get isTls(): boolean {
    return this.#socket instanceof tls.TLSSocket;
  }

  /** A whole transaction: MAIL, RCPTs, DATA with `data` dot-stuffed by the caller (sent as is), then ".". */
  async sendMail(from: string, to: string[], data: string | Buffer, mailParams = ''): Promise<SmtpReply> {
    const mail = await this.command(`MAIL FROM:<${from}>${mailParams ? ' ' + mailParams : ''}`);
    if (mail.code !== 250) return mail;
    for (const rcpt of to) {
      const r = await this.command(`RCPT TO:<${rcpt}>`);
      if (r.code !== 250) return r;
    }
    const d = await this.command('DATA');
    if (d.code !== 354) return d;
    this.write(data);
    this.write('\r\n.\r\n');
    return this.read();
  }

  async quit(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.command('QUIT');
    } catch {
      // the server may already have closed
    }
    this.destroy();
  }

  /** Drops the connection at once (no QUIT): a client going away. */
  destroy(): void {
    this.#socket.destroy();
  }

  waitClosed(timeoutMs = 10_000): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('connection not closed in time')), timeoutMs);
      this.#closeWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

function parseReply(lines: string[]): SmtpReply {
  const code = Number(lines[lines.length - 1]!.slice(0, 3));
  const texts = lines.map((l) => l.slice(4));
  const last = texts[texts.length - 1] ?? '';
  const m = /^([245]\.\d{1,3}\.\d{1,3}) (.*)$/s.exec(last) ?? /^([245]\.\d{1,3}\.\d{1,3})$/.exec(last);
  return {
    code,
    ...(m ? { enhanced: m[1] } : {}),
    text: m ? (m[2] ?? '') : last,
    lines: texts,
    raw: lines.join('\r\n'),
  };
}

/** A small RFC 5322 message with CRLF line endings. */
export function makeMessage(o: { from?: string; to?: string; subject?: string; headers?: Record<string, string>; body?: string; messageId?: string | null } = {}): string {
  const lines = [
    `From: ${o.from ?? 'sender@example.org'}`,
    `To: ${o.to ?? 'rcpt@example.net'}`,
    `Subject: ${o.subject ?? 'test'}`,
    ...(o.messageId === null ? [] : [`Message-ID: ${o.messageId ?? `<${Math.random().toString(36).slice(2)}@example.org>`}`]),
    ...Object.entries(o.headers ?? {}).map(([k, v]) => `${k}: ${v}`),
    '',
    o.body ?? 'Hello.',
  ];
  return lines.join('\r\n');
}
