/**
 * Where mail for a domain goes (RFC 5321 §5.1, RFC 7505), as one `Destination`.
 *
 * Order of precedence: `delivery.smarthost` (everything goes there), then `delivery.routes`
 * (transport map: domain → host:port), then DNS:
 * - MX records sorted by preference, shuffled among equal preference (randomness injectable),
 *   each exchanger's A then AAAA addresses, at most MX_ADDRESS_LIMIT addresses in all;
 * - no MX record (NODATA) → the domain's own A/AAAA (implicit MX);
 * - a null MX (a single MX "." of preference 0) → permanent 556 5.1.10;
 * - NXDOMAIN → permanent 550 5.1.2; no address for any exchanger → permanent 5.4.4;
 * - SERVFAIL, timeouts, refused queries → temporary 451 4.4.3 (the scheduler defers);
 * - we are an exchanger ourselves (one of smtp.listen on delivery.port): only more preferred
 *   exchangers are used; none left → permanent 554 5.4.6 (mail would loop back to us).
 * Never throws: DNS trouble is a `failure` destination.
 *
 * `key` names the set of hosts mail goes to, so domains hosted by the same MX hosts share
 * connection pools and limits: the sorted MX names for MX delivery, the domain for an implicit
 * MX, "host:port" for routes and the smarthost.
 *
 * DNS servers come from `delivery.dns.servers` ("127.0.0.1:5353", "[::1]:53"; empty: the
 * system's), with `delivery.dns.timeout` per query and two tries.
 */
import { promises as dns } from 'node:dns';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { domainToASCII } from 'node:url';
import type { Config } from '../config/schema.js';
import { parseHostPort } from '../config/schema.js';
import { made } from './replies.js';
import type { Destination, DestinationHost, Reply } from './types.js';

/** Postfix tries 5 addresses (smtp_mx_address_limit); a few more cost nothing on a failed host. */
export const MX_ADDRESS_LIMIT = 10;

type DnsConfig = Config['delivery']['dns'];

export function makeResolver(config: DnsConfig): dns.Resolver {
  const resolver = new dns.Resolver({ timeout: config.timeout, tries: 2 });
  if (config.servers.length > 0) resolver.setServers(config.servers);
  return resolver;
}

/** Lower case, no trailing dot, IDNA (A-labels), so keys and lookups agree. */
export function normaliseDomain(domain: string): string {
  const d = domain.trim().toLowerCase().replace(/\.$/, '');
  return domainToASCII(d) || d;
}

export async function resolveDestination(rawDomain: string, config: Pick<Config, 'delivery' | 'smtp'>, random: () => number): Promise<Destination> {
  const domain = normaliseDomain(rawDomain);
  const delivery = config.delivery;
  if (delivery.smarthost) {
    const defaultPort = delivery.smarthost.tls === 'implicit' ? 465 : 25;
    const { host, port } = parseHostPort(delivery.smarthost.host, defaultPort)!;
    return { kind: 'hosts', domain, key: `${host}:${port}`, hosts: [{ host, port, ...literal(host) }], via: 'smarthost' };
  }
  const route = delivery.routes[domain];
  const destination: Destination = route !== undefined
    ? (() => {
        const { host, port } = parseHostPort(route, 25)!;
        return { kind: 'hosts' as const, domain, key: `${host}:${port}`, hosts: [{ host, port, ...literal(host) }], via: 'route' as const };
      })()
    : await resolveByDns(domain, makeResolver(delivery.dns), delivery.port, random, config.smtp.listen);
  const tlsPolicy = delivery.tls.policy[domain];
  if (!tlsPolicy || destination.kind !== 'hosts') return destination;
  // Its own pool: mail of other domains on the same MX hosts must not share its sessions (their TLS differs).
  return { ...destination, key: `${destination.key} tls=${tlsPolicy}`, tlsPolicy };
}

/** `{ address }` when the host is an IP literal (no lookup needed). */
export function literal(host: string): { address?: string } {
  return isIP(host) ? { address: host } : {};
}

async function resolveByDns(domain: string, resolver: dns.Resolver, port: number, random: () => number, listen: Config['smtp']['listen']): Promise<Destination> {
  if (isIP(domain)) return { kind: 'hosts', domain, key: domain, hosts: [{ host: domain, port, address: domain }], via: 'implicit-mx' };
  let records: { exchange: string; priority: number }[];
  try {
    records = await resolver.resolveMx(domain);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === dns.NODATA) return implicitMx(domain, resolver, port, listen);
    return failure(domain, domain, dnsFailureReply(domain, 'MX', code));
  }
  const exchangers = records.filter((r) => r.exchange !== '' && r.exchange !== '.');
  // RFC 7505: a domain that accepts no mail publishes one MX with an empty exchange.
  if (exchangers.length === 0) return failure(domain, domain, made.nullMx());

  const ordered = orderByPreference(exchangers, random);
  const key = [...new Set(ordered.map((r) => r.exchange.toLowerCase()))].sort().join(',');
  const hosts: DestinationHost[] = [];
  let temporary: Reply | undefined;
  const looked = await Promise.all(ordered.map((r) => addressesOf(r.exchange.toLowerCase(), resolver)));
  ordered.forEach((r, i) => {
    const found = looked[i]!;
    if ('reply' in found) {
      if (found.reply.code < 500) temporary ??= found.reply;
      return;
    }
    for (const address of found.addresses) hosts.push({ host: r.exchange.toLowerCase(), port, preference: r.priority, address });
  });
  if (hosts.length === 0) {
    // Some exchanger could not be looked up just now: try again later rather than bounce.
    return failure(domain, key, temporary ?? made.noAddress(domain));
  }
  const usable = withoutOurselves(hosts, listen);
  if (usable.length === 0) return failure(domain, key, made.loop(domain));
  return { kind: 'hosts', domain, key, hosts: usable.slice(0, MX_ADDRESS_LIMIT), via: 'mx' };
}

/**
 * RFC 5321 §5.1: when we are one of the exchangers, only the more preferred ones may be used
 * (else mail would loop back to us). "Ourselves" is one of our smtp.listen addresses (a
 * wildcard listener covers every local address) on the delivery port.
 */
export function withoutOurselves(hosts: DestinationHost[], listen: Config['smtp']['listen']): DestinationHost[] {
  const own = hosts.filter((h) => h.address !== undefined && isOwnListener(h.address, h.port, listen));
  if (own.length === 0) return hosts;
  const ourPreference = Math.min(...own.map((h) => h.preference ?? 0));
  return hosts.filter((h) => (h.preference ?? 0) < ourPreference);
}

export function isOwnListener(address: string, port: number, listen: Config['smtp']['listen']): boolean {
  return listen.some((l) => {
    const p = parseHostPort(l.address);
    if (!p || p.port !== port || p.port === 0) return false;
    if (p.host === address) return true;
    return (p.host === '0.0.0.0' || p.host === '::') && isLocalAddress(address);
  });
}

function isLocalAddress(address: string): boolean {
  if (address.startsWith('127.') || address === '::1') return true;
  return Object.values(networkInterfaces()).some((list) => list?.some((i) => i.address === address));
}

async function implicitMx(domain: string, resolver: dns.Resolver, port: number, listen: Config['smtp']['listen']): Promise<Destination> {
  const found = await addressesOf(domain, resolver);
  if ('reply' in found) return failure(domain, domain, found.reply.code >= 500 ? made.noAddress(domain) : found.reply);
  const hosts = withoutOurselves(found.addresses.slice(0, MX_ADDRESS_LIMIT).map((address) => ({ host: domain, port, preference: 0, address })), listen);
  if (hosts.length === 0) return failure(domain, domain, made.loop(domain));
  return { kind: 'hosts', domain, key: domain, hosts, via: 'implicit-mx' };
}

/** RFC 5321 §5.1: lowest preference first; equal preferences in random order (Fisher–Yates). */
export function orderByPreference<T extends { priority: number }>(records: T[], random: () => number): T[] {
  const byPreference = new Map<number, T[]>();
  for (const r of records) byPreference.set(r.priority, [...(byPreference.get(r.priority) ?? []), r]);
  return [...byPreference.keys()].sort((a, b) => a - b).flatMap((p) => shuffle(byPreference.get(p)!, random));
}

function shuffle<T>(list: T[], random: () => number): T[] {
  const out = list.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.min(i, Math.floor(random() * (i + 1)));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/**
 * A host's addresses, IPv4 first (IPv6 reachability is the rarer fault on a mail host).
 * Permanent (5xx reply) when the name does not exist or has neither A nor AAAA.
 */
export async function addressesOf(host: string, resolver: dns.Resolver): Promise<{ addresses: string[] } | { reply: Reply }> {
  if (isIP(host)) return { addresses: [host] };
  const [v4, v6] = await Promise.allSettled([resolver.resolve4(host), resolver.resolve6(host)]);
  const addresses = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
  if (addresses.length > 0) return { addresses };
  const errors = [v4, v6].flatMap((r, i) => (r.status === 'rejected' ? [{ type: i === 0 ? 'A' : 'AAAA', code: (r.reason as NodeJS.ErrnoException).code }] : []));
  const temporary = errors.find((e) => !isPermanentDnsError(e.code));
  if (temporary) return { reply: dnsFailureReply(host, temporary.type, temporary.code) };
  if (errors.some((e) => e.code === dns.NOTFOUND)) return { reply: made.nxdomain(host, 'A') };
  return { reply: made.noAddress(host) };
}

function isPermanentDnsError(code: string | undefined): boolean {
  return code === dns.NOTFOUND || code === dns.NODATA || code === dns.BADNAME || code === dns.FORMERR;
}

function dnsFailureReply(name: string, type: string, code: string | undefined): Reply {
  if (code === dns.NOTFOUND) return made.nxdomain(name, type);
  if (code === dns.BADNAME || code === dns.FORMERR) return { ...made.nxdomain(name, type), message: `Host or domain name not found. Name service error for name=${name} type=${type}: bad name` };
  const why = code === dns.TIMEOUT ? 'timed out' : code === dns.SERVFAIL ? 'server failure' : code === dns.REFUSED ? 'query refused' : `error ${code ?? 'unknown'}`;
  return made.dnsTemporary(name, type, why);
}

function failure(domain: string, key: string, reply: Reply): Destination {
  return { kind: 'failure', domain, key, permanent: reply.code >= 500, reply };
}
