/**
 * SMTP replies as delivery reports them: parsed from what a remote said, or made up (with the
 * RFC 3463 enhanced code an operator expects, Postfix's wording where it has one) when the
 * trouble was ours or the network's. Every outcome the scheduler gets carries one of these.
 */
import type { Reply } from './types.js';

/**
 * Parses a (possibly multi-line) reply such as "550-5.1.1 No such\n550 5.1.1 user".
 * The enhanced code is taken from the first line when it matches the reply's class.
 */
export function parseReply(text: string): Reply {
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
  const code = Number(/^(\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0);
  let enhanced: string | undefined;
  const parts: string[] = [];
  for (const line of lines) {
    let rest = line.replace(/^\d{3}[ -]?/, '');
    const m = /^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)/.exec(rest);
    if (m && m[1]![0] === String(code)[0]) {
      enhanced ??= m[1];
      rest = rest.slice(m[0].length);
    }
    parts.push(rest.trim());
  }
  return { code, ...(enhanced ? { enhanced } : {}), message: parts.filter(Boolean).join(' ') };
}

/** "mx.example.org[192.0.2.1]:25", how logs, results and DSNs name a remote. */
export function describeHost(target: { host: string; address?: string; port: number }): string {
  return `${target.host}[${target.address ?? target.host}]:${target.port}`;
}

export const isTemporary = (r: Reply): boolean => r.code >= 400 && r.code < 500;
export const isPermanent = (r: Reply): boolean => r.code >= 500;

/** Makes sure a reply is temporary: a host-level 5xx (e.g. a 554 greeting) only skips that host. */
export function asTemporary(r: Reply, context: string): Reply {
  if (isTemporary(r)) return r;
  return { code: 451, enhanced: '4.4.0', message: `${context}: ${r.code}${r.enhanced ? ` ${r.enhanced}` : ''} ${r.message}`.trim() };
}

export const made = {
  connectRefused: (remote: string): Reply => ({ code: 421, enhanced: '4.4.1', message: `connect to ${remote}: Connection refused` }),
  connectTimeout: (remote: string): Reply => ({ code: 421, enhanced: '4.4.1', message: `connect to ${remote}: Connection timed out` }),
  connectFailed: (remote: string, why: string): Reply => ({ code: 421, enhanced: '4.4.1', message: `connect to ${remote}: ${why}` }),
  timeout: (remote: string, while_: string): Reply => ({ code: 421, enhanced: '4.4.2', message: `conversation with ${remote} timed out ${while_}` }),
  lostConnection: (remote: string, while_: string): Reply => ({ code: 421, enhanced: '4.4.2', message: `lost connection with ${remote} ${while_}` }),
  lostAfterDot: (remote: string): Reply => ({ code: 421, enhanced: '4.4.2', message: `lost connection with ${remote} while sending end of data -- message may be sent more than once` }),
  tlsFailed: (remote: string, why: string): Reply => ({ code: 421, enhanced: '4.7.5', message: `TLS with ${remote} failed: ${why}` }),
  tlsRequired: (remote: string): Reply => ({ code: 421, enhanced: '4.7.4', message: `TLS is required, but was not offered by host ${remote}` }),
  authNotOffered: (remote: string): Reply => ({ code: 421, enhanced: '4.7.0', message: `SASL authentication is configured, but ${remote} offers no AUTH` }),
  authInsecure: (remote: string): Reply => ({ code: 421, enhanced: '4.7.0', message: `SASL credentials would be sent to ${remote} without TLS; refusing` }),
  authFailed: (remote: string, said: string): Reply => ({ code: 421, enhanced: '4.7.0', message: `SASL authentication failed with ${remote}; server said: ${said}` }),
  protocol: (remote: string, why: string): Reply => ({ code: 421, enhanced: '4.5.0', message: `protocol error with ${remote}: ${why}` }),
  tooBig: (remote: string, size: number, limit: number): Reply => ({ code: 552, enhanced: '5.3.4', message: `message size ${size} exceeds size limit ${limit} of server ${remote}` }),
  smtputf8: (remote: string): Reply => ({ code: 550, enhanced: '5.6.7', message: `SMTPUTF8 is required, but was not offered by host ${remote}` }),
  nullMx: (): Reply => ({ code: 556, enhanced: '5.1.10', message: 'Recipient address has null MX' }),
  stsNoMx: (domain: string, mx: string[]): Reply => ({ code: 451, enhanced: '4.7.5', message: `MTA-STS policy of ${domain} allows no MX host it has (mx: ${mx.join(', ')})` }),
  nxdomain: (name: string, type: string): Reply => ({ code: 550, enhanced: '5.1.2', message: `Host or domain name not found. Name service error for name=${name} type=${type}: Host not found` }),
  noAddress: (name: string): Reply => ({ code: 550, enhanced: '5.4.4', message: `Host or domain name not found. Name service error for name=${name}: no MX, A or AAAA record` }),
  dnsTemporary: (name: string, type: string, why: string): Reply => ({ code: 451, enhanced: '4.4.3', message: `Host or domain name not found. Name service error for name=${name} type=${type}: ${why}, try again` }),
  loop: (domain: string): Reply => ({ code: 554, enhanced: '5.4.6', message: `mail for ${domain} loops back to myself` }),
  local: (why: string): Reply => ({ code: 451, enhanced: '4.3.0', message: `local delivery error: ${why}` }),
};
