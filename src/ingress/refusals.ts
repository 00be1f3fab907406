/**
 * The door's recent refusals, in memory (what a Postfix operator greps "NOQUEUE: reject:" for):
 * every reply of 400 or more the SMTP server sends, with the client, its HELO name, the user,
 * the sender, the command answered, the reply and its reason. The newest `capacity` are kept, per
 * node; GET /api/refusals pages through them newest first, filtered by reason, client (an
 * address or a network) and text.
 */
import ipaddr from 'ipaddr.js';
import type { Refusal, RefusalPage } from '../api-types.js';
import { normalizeClientAddress } from './policy.js';

export type { Refusal, RefusalPage };

export interface RefusalQuery {
  limit?: number;
  /** Only those older than this seq (a page's nextCursor). */
  before?: number;
  /** Only those newer than this seq (the newest one seen: to follow the log). */
  after?: number;
  reason?: string;
  /** An address, or a network in CIDR notation ("198.51.100.0/24"). */
  client?: string;
  /** Case-insensitive text in the HELO name, user, sender, command or reply. */
  text?: string;
}

/** A client filter that is neither an address nor a network. */
export class BadClientFilter extends Error {
  override name = 'BadClientFilter';
}

function clientMatcher(filter: string): (address: string) => boolean {
  const f = filter.trim();
  if (f.includes('/')) {
    let net: [ipaddr.IPv4 | ipaddr.IPv6, number];
    try {
      net = ipaddr.parseCIDR(f);
    } catch {
      throw new BadClientFilter(`client: "${filter}" is not a network in CIDR notation (e.g. 198.51.100.0/24)`);
    }
    return (address) => {
      try {
        const a = ipaddr.process(address);
        return a.kind() === net[0].kind() && a.match(net);
      } catch {
        return false;
      }
    };
  }
  if (!ipaddr.isValid(f)) throw new BadClientFilter(`client: "${filter}" is not an IP address or a network`);
  const want = ipaddr.process(f).toString();
  return (address) => ipaddr.isValid(address) && ipaddr.process(address).toString() === want;
}

export class RefusalLog {
  #capacity: number;
  #ring: Refusal[] = [];
  /** Where the next one goes once the ring is full. */
  #head = 0;
  #seq = 0;

  constructor(capacity = 1000) {
    this.#capacity = capacity;
  }

  get capacity(): number {
    return this.#capacity;
  }

  /** A new smtp.refusalsKept: the newest that fit stay. */
  resize(capacity: number): void {
    if (capacity === this.#capacity) return;
    const newest = this.#newestFirst().slice(0, capacity);
    this.#ring = newest.reverse();
    this.#head = 0;
    this.#capacity = capacity;
  }

  add(r: Omit<Refusal, 'seq'>): void {
    const entry: Refusal = { seq: ++this.#seq, ...r, client: normalizeClientAddress(r.client) };
    if (this.#capacity === 0) return;
    if (this.#ring.length < this.#capacity) {
      this.#ring.push(entry);
      return;
    }
    this.#ring[this.#head] = entry;
    this.#head = (this.#head + 1) % this.#capacity;
  }

  #newestFirst(): Refusal[] {
    const n = this.#ring.length;
    const out: Refusal[] = [];
    // The one before #head (once full) is the newest.
    for (let i = 1; i <= n; i++) out.push(this.#ring[(this.#head - i + n) % n]!);
    return out;
  }

  /** Throws BadClientFilter for a client filter that is not an address or network. */
  page(q: RefusalQuery = {}): RefusalPage {
    const limit = Math.max(1, Math.min(q.limit ?? 100, 1000));
    const client = q.client ? clientMatcher(q.client) : undefined;
    const text = q.text?.trim().toLowerCase();
    const items: Refusal[] = [];
    let nextCursor: number | undefined;
    for (const r of this.#newestFirst()) {
      if (q.after !== undefined && r.seq <= q.after) break;
      if (q.before !== undefined && r.seq >= q.before) continue;
      if (q.reason && r.reason !== q.reason) continue;
      if (client && !client(r.client)) continue;
      if (text && ![r.helo, r.user, r.sender, r.command, r.reply.text, r.reply.enhanced].some((v) => v?.toLowerCase().includes(text))) continue;
      if (items.length === limit) {
        nextCursor = items[items.length - 1]!.seq;
        break;
      }
      items.push(r);
    }
    return { items, ...(nextCursor !== undefined ? { nextCursor } : {}), capacity: this.#capacity, total: this.#seq };
  }
}
