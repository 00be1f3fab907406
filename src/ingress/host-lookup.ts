/**
 * The DNS questions the ingress's checks share (relay.checkSenderDomain, smtp.helo.rejectUnknown):
 * does a name have a usable MX, and does it have an address. Each answers "no" for a name that
 * does not exist (NXDOMAIN) or has no such record (NODATA), and throws LookupFailed for anything
 * else (SERVFAIL, a timeout), which the checks answer with a 4xx, never a 5xx.
 */
import type { promises as dns } from 'node:dns';

const NOT_FOUND = new Set(['ENOTFOUND', 'ENODATA']);

export class LookupFailed extends Error {
  constructor(readonly code: string) {
    super(`DNS lookup failed (${code})`);
  }
}

function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? '';
}

/**
 * 'usable': an MX with a host; 'null': only the null MX of RFC 7505 (the name never receives);
 * 'none': no MX record; 'nxdomain': the name does not exist at all.
 */
export async function mxOf(resolver: dns.Resolver, name: string): Promise<'usable' | 'null' | 'none' | 'nxdomain'> {
  try {
    const mx = await resolver.resolveMx(name);
    if (mx.some((r) => r.exchange !== '' && r.exchange !== '.')) return 'usable';
    return mx.length > 0 ? 'null' : 'none';
  } catch (err) {
    const code = errorCode(err);
    if (code === 'ENOTFOUND') return 'nxdomain';
    if (code === 'ENODATA') return 'none';
    throw new LookupFailed(code || 'DNS error');
  }
}

/** Whether `name` has an A or an AAAA record (asked in parallel). */
export async function hasAddressRecord(resolver: dns.Resolver, name: string): Promise<boolean> {
  const tries = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
  if (tries.some((t) => t.status === 'fulfilled' && t.value.length > 0)) return true;
  const failed = tries.find((t): t is PromiseRejectedResult => t.status === 'rejected' && !NOT_FOUND.has(errorCode(t.reason)));
  if (failed) throw new LookupFailed(errorCode(failed.reason) || 'DNS error');
  return false;
}
