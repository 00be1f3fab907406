/**
 * A real DNS server on loopback (UDP and TCP on the same port of 127.0.0.1), answering from a
 * table the test gives and may change at any time. Built on `dns-packet` (encoding) and
 * node:dgram/node:net (transport), so node's own resolver (c-ares) talks to it exactly as it
 * would to a real recursive server.
 *
 * What it guarantees:
 * - A name in the table gets its records (MX, A, AAAA, TXT), NOERROR with no answer (NODATA) for a
 *   type it has none of, or the failure given for the name or for one type (SERVFAIL,
 *   NXDOMAIN, REFUSED, or "drop": no answer at all, so the client times out).
 * - A name not in the table is NXDOMAIN.
 * - Names are matched case-insensitively, without the trailing dot.
 * - Every query is recorded (`queries`), so a test can assert what was asked.
 *
 * Usage:
 *   const dns = await startDnsServer({ 'example.test': { mx: [{ preference: 10, exchange: 'mx.example.test' }] },
 *                                      'mx.example.test': { a: ['127.0.0.1'] } });
 *   config.delivery.dns.servers = [dns.address];   // "127.0.0.1:PORT"
 *   …
 *   await dns.close();
 */
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';

/** A failure answer: SERVFAIL/NXDOMAIN/REFUSED rcodes, or "drop" (never answer). */
export type DnsFailure = 'servfail' | 'nxdomain' | 'refused' | 'drop';

export interface MxRecord {
  preference: number;
  /** Host name of the exchanger; "." (or "") is the null MX of RFC 7505. */
  exchange: string;
}

/** What the server knows about one name. Every list may instead be a failure for that type only. */
export interface DnsEntry {
  mx?: MxRecord[] | DnsFailure;
  a?: string[] | DnsFailure;
  aaaa?: string[] | DnsFailure;
  /** TXT records, each one string (sent as character-strings of at most 255 octets). */
  txt?: string[] | DnsFailure;
  /** Record TTL in seconds (default 60). */
  ttl?: number;
}

/** name → entry, or a failure for every type of that name. */
export type DnsZone = Record<string, DnsEntry | DnsFailure>;

export interface DnsQuery {
  name: string;
  type: string;
  transport: 'udp' | 'tcp';
}

/** The null MX record of RFC 7505, for a zone table: `{ mx: NULL_MX }`. */
export const NULL_MX: MxRecord[] = [{ preference: 0, exchange: '.' }];

const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

export class DnsServer {
  readonly host = '127.0.0.1';
  readonly port: number;
  /** Every query received, in order. */
  readonly queries: DnsQuery[] = [];
  #zone = new Map<string, DnsEntry | DnsFailure>();
  #udp: dgram.Socket;
  #tcp: net.Server;
  #tcpSockets = new Set<net.Socket>();

  private constructor(udp: dgram.Socket, tcp: net.Server, port: number, zone: DnsZone) {
    this.#udp = udp;
    this.#tcp = tcp;
    this.port = port;
    this.setZone(zone);
    udp.on('message', (msg, rinfo) => this.#onUdp(msg, rinfo));
    tcp.on('connection', (socket) => this.#onTcp(socket));
  }

  /** Starts a server on 127.0.0.1, on a port free for both UDP and TCP. */
  static async start(zone: DnsZone = {}): Promise<DnsServer> {
    for (let tries = 0; ; tries++) {
      const udp = dgram.createSocket('udp4');
      await new Promise<void>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind(0, '127.0.0.1', () => { udp.off('error', reject); resolve(); });
      });
      const port = udp.address().port;
      const tcp = net.createServer();
      try {
        await new Promise<void>((resolve, reject) => {
          tcp.once('error', reject);
          tcp.listen(port, '127.0.0.1', () => { tcp.off('error', reject); resolve(); });
        });
        return new DnsServer(udp, tcp, port, zone);
      } catch (err) {
        // The TCP side of the port is taken by someone else: try another port.
        udp.close();
        if (tries >= 20) throw err;
      }
    }
  }

  /** "127.0.0.1:PORT", the form `delivery.dns.servers` takes. */
  get address(): string {
    return `${this.host}:${this.port}`;
  }

  /** Replaces the whole table. */
  setZone(zone: DnsZone): void {
    this.#zone.clear();
    for (const [name, entry] of Object.entries(zone)) this.set(name, entry);
  }

  /** Adds or replaces one name. */
  set(name: string, entry: DnsEntry | DnsFailure): void {
    this.#zone.set(normalise(name), entry);
  }

  /** Forgets a name (it becomes NXDOMAIN). */
  delete(name: string): void {
    this.#zone.delete(normalise(name));
  }

  /** Queries received for a name (and type, when given). */
  queriesFor(name: string, type?: string): DnsQuery[] {
    const n = normalise(name);
    return this.queries.filter((q) => q.name === n && (type === undefined || q.type === type));
  }

  async close(): Promise<void> {
    for (const s of this.#tcpSockets) s.destroy();
    await Promise.all([
      new Promise<void>((resolve) => this.#udp.close(() => resolve())),
      new Promise<void>((resolve) => this.#tcp.close(() => resolve())),
    ]);
  }

  #onUdp(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const reply = this.#answer(msg, 'udp');
    if (reply) this.#udp.send(reply, rinfo.port, rinfo.address);
  }

  #onTcp(socket: net.Socket): void {
    this.#tcpSockets.add(socket);
    socket.on('close', () => this.#tcpSockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buffered = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      // TCP DNS messages carry a two-byte length prefix (RFC 1035 §4.2.2).
      while (buffered.length >= 2) {
        const length = buffered.readUInt16BE(0);
        if (buffered.length < 2 + length) break;
        const msg = buffered.subarray(2, 2 + length);
        buffered = buffered.subarray(2 + length);
        const reply = this.#answer(msg, 'tcp');
        if (reply) {
          const prefix = Buffer.alloc(2);
          prefix.writeUInt16BE(reply.length);
          socket.write(Buffer.concat([prefix, reply]));
        }
      }
    });
  }

  /** The encoded response to one query, or undefined to stay silent. */
  #answer(msg: Buffer, transport: 'udp' | 'tcp'): Buffer | undefined {
    let query: dnsPacket.DecodedPacket;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return undefined;
    }
    const question = query.questions?.[0];
    if (!question) return undefined;
    const name = normalise(question.name);
    this.queries.push({ name, type: question.type, transport });

    const entry = this.#zone.get(name);
    const failure = entry === undefined ? 'nxdomain' : typeof entry === 'string' ? entry : typeFailure(entry, question.type);
    if (failure === 'drop') return undefined;
    const rcode = failure === undefined ? RCODE.NOERROR : failure === 'nxdomain' ? RCODE.NXDOMAIN : failure === 'servfail' ? RCODE.SERVFAIL : RCODE.REFUSED;
    const answers = failure === undefined && typeof entry === 'object' ? recordsFor(name, entry, question.type) : [];
    return dnsPacket.encode({
      type: 'response',
      id: query.id ?? 0,
      // dns-packet keeps the rcode in the low four bits of the flags.
      flags: dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | rcode,
      questions: [question],
      answers,
    });
  }
}

/** Starts a DNS server on 127.0.0.1 (see DnsServer). */
export function startDnsServer(zone: DnsZone = {}): Promise<DnsServer> {
  return DnsServer.start(zone);
}

function normalise(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

function typeFailure(entry: DnsEntry, type: string): DnsFailure | undefined {
  const field = type === 'MX' ? entry.mx : type === 'A' ? entry.a : type === 'AAAA' ? entry.aaaa : type === 'TXT' ? entry.txt : undefined;
  return typeof field === 'string' ? field : undefined;
}

function recordsFor(name: string, entry: DnsEntry, type: string): dnsPacket.Answer[] {
  const ttl = entry.ttl ?? 60;
  if (type === 'MX' && Array.isArray(entry.mx)) {
    return entry.mx.map((mx) => ({ type: 'MX' as const, name, ttl, class: 'IN' as const, data: { preference: mx.preference, exchange: mx.exchange === '.' ? '' : normalise(mx.exchange) } }));
  }
  if (type === 'A' && Array.isArray(entry.a)) {
    return entry.a.map((address) => ({ type: 'A' as const, name, ttl, class: 'IN' as const, data: address }));
  }
  if (type === 'TXT' && Array.isArray(entry.txt)) {
    return entry.txt.map((text) => {
      const chunks: string[] = [];
      for (let i = 0; i < text.length; i += 255) chunks.push(text.slice(i, i + 255));
      return { type: 'TXT' as const, name, ttl, class: 'IN' as const, data: chunks.length ? chunks : [''] };
    });
  }
  if (type === 'AAAA' && Array.isArray(entry.aaaa)) {
    return entry.aaaa.map((address) => ({ type: 'AAAA' as const, name, ttl, class: 'IN' as const, data: address }));
  }
  return [];
}
