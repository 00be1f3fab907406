/**
 * smtp.helo: checks of the name a client gives in HELO/EHLO, as Postfix's
 * reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname and reject_unknown_helo_hostname.
 * Applied (by the ingress) only to clients outside relay.networks that did not authenticate, and
 * answered at RCPT, as Postfix does with its default smtpd_delay_reject, so the client's log shows
 * the sender and recipient the refusal was for.
 *
 * What it guarantees:
 * - Address literals ("[192.0.2.1]", "[IPv6:2001:db8::1]") pass every check: RFC 5321 §4.1.4 names
 *   them as what a client without a name sends.
 * - rejectInvalid: a name that is not a host name (labels of letters, digits, hyphens and
 *   underscores, none starting or ending with a hyphen, at most 63 octets each and 255 in all, not
 *   all digits) gets 501 5.5.2 "<name>: Helo command rejected: Invalid name". A bare IP address
 *   passes it (as in Postfix, for old clients) but not rejectNonFqdn.
 * - rejectNonFqdn: a name without a dot (one trailing dot is ignored) gets 504 5.5.2
 *   "<name>: Helo command rejected: need fully-qualified hostname".
 * - rejectUnknown: a name with neither an A/AAAA record nor a usable MX gets 450 4.7.1
 *   "<name>: Helo command rejected: Host not found" (temporary, as Postfix's default); a lookup
 *   that fails gets 451 4.4.3. Answers are kept CACHE_MS per name.
 */
import type { promises as dns } from 'node:dns';
import { isIP } from 'node:net';
import { hasAddressRecord, LookupFailed, mxOf } from './host-lookup.js';
import { isAddressLiteral, type Reply } from './protocol.js';
import { TtlCache } from './ttl-cache.js';

export interface HeloChecks {
  rejectInvalid: boolean;
  rejectNonFqdn: boolean;
  rejectUnknown: boolean;
}

const CACHE_MS = 5 * 60_000;
const MAX_CACHE = 20_000;

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/i;

/** What a HELO name is: an address literal, a bare IP address, a host name, or none of these. */
export function heloKind(name: string): 'literal' | 'ip' | 'hostname' | 'invalid' {
  if (name.startsWith('[')) return isAddressLiteral(name) ? 'literal' : 'invalid';
  if (isIP(name)) return 'ip';
  const host = name.endsWith('.') ? name.slice(0, -1) : name;
  if (!host || Buffer.byteLength(host) > 255 || /^[\d.]+$/.test(host)) return 'invalid';
  return host.split('.').every((label) => LABEL.test(label)) ? 'hostname' : 'invalid';
}

export function heloChecksOn(checks: HeloChecks): boolean {
  return checks.rejectInvalid || checks.rejectNonFqdn || checks.rejectUnknown;
}

export class HeloCheck {
  readonly #cache: TtlCache<Promise<Reply | undefined>>;

  constructor(private readonly resolver: () => dns.Resolver, now: () => number = Date.now) {
    this.#cache = new TtlCache(CACHE_MS, MAX_CACHE, now);
  }

  /** undefined when `name` passes the checks that are on; else the refusal. */
  async check(name: string, checks: HeloChecks): Promise<Reply | undefined> {
    const kind = heloKind(name);
    if (kind === 'literal') return undefined;
    if (checks.rejectInvalid && kind === 'invalid') return refusal(501, '5.5.2', name, 'Invalid name');
    const host = name.replace(/\.$/, '');
    if (checks.rejectNonFqdn && (kind !== 'hostname' || !host.includes('.'))) return refusal(504, '5.5.2', name, 'need fully-qualified hostname');
    if (!checks.rejectUnknown) return undefined;
    if (kind !== 'hostname') return refusal(450, '4.7.1', name, 'Host not found');
    let known = this.#cache.get(host);
    if (!known) {
      known = this.#lookup(host);
      this.#cache.set(host, known);
    }
    const r = await known;
    return r && { ...r, text: `<${name}>: ${r.text}` };
  }

  async #lookup(host: string): Promise<Reply | undefined> {
    const resolver = this.resolver();
    try {
      if (await hasAddressRecord(resolver, host)) return undefined;
      if ((await mxOf(resolver, host)) === 'usable') return undefined;
      return { code: 450, enhanced: '4.7.1', text: 'Helo command rejected: Host not found' };
    } catch (err) {
      if (err instanceof LookupFailed) return { code: 451, enhanced: '4.4.3', text: `Helo command rejected: cannot look up ${host} just now (${err.code}), try again later` };
      throw err;
    }
  }
}

function refusal(code: number, enhanced: string, name: string, why: string): Reply {
  return { code, enhanced, text: `<${name}>: Helo command rejected: ${why}` };
}
