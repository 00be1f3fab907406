/**
 * DNS blocklists (smtp.dnsbl; Postfix's reject_rbl_client): a client is looked up in each zone
 * as its reversed address under the zone (192.0.2.7 → 7.2.0.192.zen.example; IPv6 as 32
 * reversed nibbles), and an A record there lists it, optionally only certain answers
 * ("127.0.0.2", as Postfix's `zone=127.0.0.2`).
 *
 * What it guarantees:
 * - Fail open: a lookup that times out or fails is "not listed" (and logged by the caller once per
 *   client), so a dead list server never stops mail.
 * - One lookup per client address and zone per CACHE_MS, however many connections it opens
 *   (results, listed or not, are kept that long; at most MAX_CACHE entries).
 * - The lookups of a connection start when it connects (`start`) and are awaited at RCPT, so a
 *   listed client spends no more time than a lookup, and an unlisted one usually none.
 */
import type { promises as dns } from 'node:dns';
import { isIPv4, isIPv6 } from 'node:net';
import ipaddr from 'ipaddr.js';
import { TtlCache } from './ttl-cache.js';

export interface DnsblZone {
  zone: string;
  /** Answers that list a client; null: any A record does. */
  answers: string[] | null;
}

export interface DnsblListing {
  zone: string;
  answer: string;
}

export type DnsblResult = { listed: DnsblListing | null; errors: { zone: string; code: string }[] };

const CACHE_MS = 60_000;
const MAX_CACHE = 50_000;

/** The name to look up for `address` under `zone`; undefined for what is not an IP address. */
export function dnsblName(address: string, zone: string): string | undefined {
  if (isIPv4(address)) return `${address.split('.').reverse().join('.')}.${zone}`;
  if (!isIPv6(address)) return undefined;
  let ip: ipaddr.IPv6;
  try {
    ip = ipaddr.IPv6.parse(address);
  } catch {
    return undefined; // e.g. a zone id ("fe80::1%eth0"), which no list knows
  }
  if (ip.isIPv4MappedAddress()) return dnsblName(ip.toIPv4Address().toString(), zone);
  const nibbles = ip.toByteArray().flatMap((b) => [(b >> 4).toString(16), (b & 0x0f).toString(16)]);
  return `${nibbles.reverse().join('.')}.${zone}`;
}

export class DnsblChecker {
  readonly #cache: TtlCache<Promise<DnsblResult>>;

  constructor(private readonly resolver: () => dns.Resolver, now: () => number = Date.now) {
    this.#cache = new TtlCache(CACHE_MS, MAX_CACHE, now);
  }

  /** Looks `address` up in every zone (in parallel); the first zone in order that lists it wins. Never rejects. */
  check(address: string, zones: DnsblZone[]): Promise<DnsblResult> {
    if (!zones.length) return Promise.resolve({ listed: null, errors: [] });
    const key = `${address}|${zones.map((z) => `${z.zone}=${z.answers?.join(',') ?? ''}`).join(' ')}`;
    const hit = this.#cache.get(key);
    if (hit) return hit;
    const result = this.#lookup(address, zones);
    this.#cache.set(key, result);
    return result;
  }

  async #lookup(address: string, zones: DnsblZone[]): Promise<DnsblResult> {
    const resolver = this.resolver();
    const errors: DnsblResult['errors'] = [];
    const answers = await Promise.all(zones.map(async (z) => {
      const name = dnsblName(address, z.zone);
      if (!name) return [];
      try {
        return await resolver.resolve4(name);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'unknown';
        // NXDOMAIN and NODATA: not listed. Anything else: could not tell.
        if (code !== 'ENOTFOUND' && code !== 'ENODATA') errors.push({ zone: z.zone, code });
        return [];
      }
    }));
    for (const [i, z] of zones.entries()) {
      const hit = answers[i]!.find((a) => (z.answers ? z.answers.includes(a) : true));
      if (hit) return { listed: { zone: z.zone, answer: hit }, errors };
    }
    return { listed: null, errors };
  }
}
