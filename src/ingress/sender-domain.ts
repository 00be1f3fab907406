/**
 * relay.checkSenderDomain (Postfix's reject_unknown_sender_domain): mail from a client outside
 * relay.networks that did not authenticate must name a sender whose domain can receive mail,
 * else its bounces would have nowhere to go (and such senders are forged more often than not).
 *
 * What it guarantees:
 * - A domain with an MX, or without one but with an A or AAAA record (RFC 5321 §5.1's implicit
 *   MX), passes. The null sender and an address literal (user@[192.0.2.1]) always pass.
 * - A domain that does not exist, or has neither MX nor address: 450 4.1.8 "<a@b>: Sender address
 *   rejected: Domain not found" (temporary, as Postfix's unknown_address_reject_code: a domain
 *   can be broken for an hour).
 * - A null MX (RFC 7505, the domain sends but never receives): 550 5.7.27 (RFC 7505 §4.2), "Sender
 *   address rejected: Domain D does not accept mail (null MX)".
 * - A lookup that fails (SERVFAIL, timeout): 451 4.4.3, try again later; never a 5xx for it.
 * - Answers are kept CACHE_MS per domain (at most MAX_CACHE domains).
 */
import type { promises as dns } from 'node:dns';
import { hasAddressRecord, LookupFailed, mxOf } from './host-lookup.js';
import type { Reply } from './protocol.js';
import { TtlCache } from './ttl-cache.js';

const CACHE_MS = 5 * 60_000;
const MAX_CACHE = 20_000;

export class SenderDomainCheck {
  readonly #cache: TtlCache<Promise<Reply | undefined>>;

  constructor(private readonly resolver: () => dns.Resolver, now: () => number = Date.now) {
    this.#cache = new TtlCache(CACHE_MS, MAX_CACHE, now);
  }

  /** undefined when the sender's domain can receive mail; else the refusal. */
  check(sender: string): Promise<Reply | undefined> {
    const at = sender.lastIndexOf('@');
    const domain = at < 0 ? '' : sender.slice(at + 1).toLowerCase().replace(/\.$/, '');
    if (!domain || domain.startsWith('[')) return Promise.resolve(undefined);
    let result = this.#cache.get(domain);
    if (!result) {
      result = this.#lookup(domain);
      this.#cache.set(domain, result);
    }
    return result.then((r) => r && personal(r, sender));
  }

  async #lookup(domain: string): Promise<Reply | undefined> {
    const resolver = this.resolver();
    try {
      const mx = await mxOf(resolver, domain);
      if (mx === 'usable') return undefined;
      if (mx === 'null') return { code: 550, enhanced: '5.7.27', text: `Sender address rejected: Domain ${domain} does not accept mail (null MX)` };
      if (mx === 'nxdomain') return notFound();
      // No MX: an address record makes it the implicit MX.
      return (await hasAddressRecord(resolver, domain)) ? undefined : notFound();
    } catch (err) {
      if (err instanceof LookupFailed) return lookupFailed(domain, err.code);
      throw err;
    }
  }
}

/** The cached answer with this sender's address in its text. */
function personal(r: Reply, sender: string): Reply {
  return { ...r, text: `<${sender}>: ${r.text}` };
}

function notFound(): Reply {
  return { code: 450, enhanced: '4.1.8', text: 'Sender address rejected: Domain not found' };
}

function lookupFailed(domain: string, code: string): Reply {
  return { code: 451, enhanced: '4.4.3', text: `Sender address rejected: cannot look up ${domain} just now (${code}), try again later` };
}
