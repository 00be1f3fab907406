/**
 * Session policy as small pure functions (no sockets), so each decision is unit-tested on its
 * own and the smtp-server callbacks in index.ts stay thin:
 * - who is trusted (relay.networks, IPv4-mapped IPv6 included) and who may relay where;
 * - connection admission (smtp.maxConnections, smtp.maxConnectionsPerClient);
 * - the sender's own requests: MT-PRIORITY (RFC 6710) and FUTURERELEASE (RFC 4865), accepted only
 *   from trusted or authenticated clients and bounded by smtp.mtPriority / smtp.maxFutureRelease;
 * - how rule classification and those requests combine into the queued mail's priority and delay;
 * - which counter a refusal increments.
 * Never an open relay: a recipient outside relay.domains needs a trusted address or AUTH. With
 * relay.recipients, a recipient in relay.domains must also be listed there (no backscatter).
 */
import { BlockList, isIPv4 } from 'node:net';
import ipaddr from 'ipaddr.js';
import { domainToASCII } from 'node:url';
import { networkList, type Config } from '../config/schema.js';
import type { ClassifyResult } from '../config/rules.js';
import type { QueuedMail } from '../queue/types.js';
import type { Reply } from './protocol.js';
import { parseHoldFor, parseHoldUntil, parseMtPriority, rfc3339 } from './protocol.js';

const networkCache = new WeakMap<string[], { list: BlockList; answers: Map<string, boolean> }>();
/** Answers remembered per relay.networks list (a config reload brings a new list, so a new cache). */
const MAX_REMEMBERED_ADDRESSES = 10_000;

/** Strips the IPv4-mapped prefix (::ffff:192.0.2.1 → 192.0.2.1) so IPv4 CIDRs apply. */
export function normalizeClientAddress(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1]! : address.toLowerCase();
}

const clientKeys = new Map<string, string>();
const MAX_CLIENT_KEYS = 10_000;

/**
 * The key a client is counted under by smtp.maxConnectionsPerClient and smtp.rateLimits.perClient
 * (smtp.clientPrefixLength): its address, or the network of its first `ipv4`/`ipv6` bits, written
 * "2001:db8:1:2::/64". An IPv6 host usually has a whole /64 to itself and can take a new address
 * for every connection: counted by address it would pass any per-client limit.
 */
export function clientKey(address: string, prefix: { ipv4: number; ipv6: number }): string {
  const a = normalizeClientAddress(address);
  const v4 = isIPv4(a);
  const bits = v4 ? prefix.ipv4 : prefix.ipv6;
  if (bits >= (v4 ? 32 : 128)) return a;
  const cacheKey = `${bits}/${a}`;
  let key = clientKeys.get(cacheKey);
  if (key !== undefined) return key;
  try {
    const net = v4 ? ipaddr.IPv4.networkAddressFromCIDR(`${a}/${bits}`) : ipaddr.IPv6.networkAddressFromCIDR(`${a}/${bits}`);
    key = `${net.toString()}/${bits}`;
  } catch {
    key = a; // not an IP address (a Unix socket, a zone id): counted as itself
  }
  if (clientKeys.size >= MAX_CLIENT_KEYS) clientKeys.clear();
  clientKeys.set(cacheKey, key);
  return key;
}

/** Is the client address inside relay.networks? */
export function isTrustedAddress(address: string, networks: string[]): boolean {
  let cached = networkCache.get(networks);
  if (!cached) {
    cached = { list: networkList(networks), answers: new Map() };
    networkCache.set(networks, cached);
  }
  const known = cached.answers.get(address);
  if (known !== undefined) return known;
  const a = normalizeClientAddress(address);
  let trusted: boolean;
  try {
    trusted = cached.list.check(a, isIPv4(a) ? 'ipv4' : 'ipv6');
  } catch {
    trusted = false;
  }
  if (cached.answers.size >= MAX_REMEMBERED_ADDRESSES) cached.answers.clear();
  cached.answers.set(address, trusted);
  return trusted;
}

/** Lower-cased domain of an address in its ASCII (A-label) form; '' when it has none. */
export function recipientDomain(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return '';
  const domain = address.slice(at + 1).toLowerCase().replace(/\.$/, '');
  // relay.domains are ASCII; an IDN recipient (SMTPUTF8) is compared in its punycode form.
  return /[^\x00-\x7f]/.test(domain) ? domainToASCII(domain) || domain : domain;
}

export const RELAY_DENIED: Reply = { code: 554, enhanced: '5.7.1', text: 'Relay access denied' };

/** Relay control at RCPT: our domains from anyone; elsewhere only trusted or authenticated. */
export function relayDecision(o: { recipient: string; trusted: boolean; authUser?: string; relayDomains: string[] }): Reply | undefined {
  const domain = recipientDomain(o.recipient);
  if (domain && o.relayDomains.includes(domain)) return undefined;
  if (o.trusted || o.authUser) return undefined;
  return RELAY_DENIED;
}

/**
 * The relay recipient table at RCPT (Postfix's reject_unlisted_recipient with relay_recipient_maps):
 * with a table, a recipient in relay.domains must be listed, whoever the client is; but for
 * postmaster@ each of them, which RFC 5321 §4.5.1 requires a domain's mail servers to accept.
 */
export function unlistedRecipientDecision(o: {
  recipient: string;
  relayDomains: string[];
  table: { has(address: string, delimiters?: string | null): boolean } | undefined;
  delimiters?: string | null;
}): Reply | undefined {
  if (!o.table || !o.relayDomains.includes(recipientDomain(o.recipient)) || o.table.has(o.recipient, o.delimiters)) return undefined;
  if (/^postmaster@/i.test(o.recipient)) return undefined;
  return { code: 550, enhanced: '5.1.1', text: `<${o.recipient}>: Recipient address rejected: User unknown in relay recipient table` };
}

/** Admission of a new connection, given how many are open (this one included). */
export function admissionDecision(o: { total: number; fromClient: number; maxConnections: number; maxConnectionsPerClient: number }): Reply | undefined {
  if (o.total > o.maxConnections) return { code: 421, enhanced: '4.7.0', text: 'Too many connections, try again later' };
  if (o.fromClient > o.maxConnectionsPerClient) return { code: 421, enhanced: '4.7.0', text: 'Too many connections from your address, try again later' };
  return undefined;
}

/** The EHLO keywords for MT-PRIORITY and FUTURERELEASE (advertised to every client; see README). */
export function senderRequestKeywords(config: Config, now: number): string[] {
  const maxSeconds = Math.floor(config.smtp.maxFutureRelease / 1000);
  return ['MT-PRIORITY', `FUTURERELEASE ${maxSeconds} ${rfc3339(now + maxSeconds * 1000)}`];
}

export interface SenderRequests {
  mtPriority?: number;
  /** Epoch ms the client asked the mail to be held until. */
  releaseAt?: number;
  /** "HOLDFOR=3600" / "HOLDUNTIL=…", for the classification detail. */
  releaseDetail?: string;
}

/**
 * Checks MT-PRIORITY / HOLDFOR / HOLDUNTIL (syntax was checked by protocol.ts) against who the
 * client is and the configured bounds. Returns the requests, or the reply refusing MAIL.
 */
export function senderRequestDecision(
  args: Record<string, string | true> | false,
  o: { trusted: boolean; authUser?: string; maxFutureReleaseMs: number; now: number },
): { requests: SenderRequests } | { refusal: Reply } {
  const a = args || {};
  const requests: SenderRequests = {};
  const mayAsk = o.trusted || !!o.authUser;
  if (a['MT-PRIORITY'] !== undefined) {
    if (!mayAsk) return { refusal: { code: 550, enhanced: '5.7.1', text: 'MT-PRIORITY is accepted only from trusted networks or authenticated clients' } };
    requests.mtPriority = parseMtPriority(a['MT-PRIORITY']);
  }
  const holdFor = a.HOLDFOR !== undefined ? parseHoldFor(a.HOLDFOR) : undefined;
  const holdUntil = a.HOLDUNTIL !== undefined ? parseHoldUntil(a.HOLDUNTIL) : undefined;
  if (holdFor !== undefined || holdUntil !== undefined) {
    if (!mayAsk) return { refusal: { code: 550, enhanced: '5.7.1', text: 'FUTURERELEASE is accepted only from trusted networks or authenticated clients' } };
    const releaseAt = holdFor !== undefined ? o.now + holdFor * 1000 : Math.max(o.now, holdUntil!);
    if (releaseAt - o.now > o.maxFutureReleaseMs) {
      const max = Math.floor(o.maxFutureReleaseMs / 1000);
      return { refusal: { code: 501, enhanced: '5.5.4', text: `Release time is beyond the maximum of ${max} seconds (${rfc3339(o.now + max * 1000)})` } };
    }
    requests.releaseAt = releaseAt;
    requests.releaseDetail = holdFor !== undefined ? `HOLDFOR=${holdFor}` : `HOLDUNTIL=${String(a.HOLDUNTIL)}`;
  }
  return { requests };
}

/** The class an MT-PRIORITY value maps to: the class with the highest threshold not above it. */
export function mtPriorityClass(value: number, mapping: Record<string, number>): string | undefined {
  let best: [string, number] | undefined;
  for (const [name, threshold] of Object.entries(mapping)) {
    if (threshold <= value && (!best || threshold > best[1])) best = [name, threshold];
  }
  return best?.[0];
}

export interface Placement {
  priority: number;
  notBefore: number;
  hold?: { reason: string };
  classification: QueuedMail['classification'];
  mtPriority?: number;
}

/**
 * Rules first, then the sender's requests (which were only accepted from trusted clients):
 * MT-PRIORITY replaces the rule's class (mapped through smtp.mtPriority); FUTURERELEASE moves the
 * release later, never earlier than a rule's delay. A rule's hold stays.
 */
export function placeMail(rules: ClassifyResult, requests: SenderRequests, config: Pick<Config, 'smtp' | 'priorities'>): Placement {
  const placement: Placement = {
    priority: rules.priority,
    notBefore: rules.notBefore,
    classification: { ...rules.classification },
  };
  if (rules.hold) placement.hold = { reason: `rule ${rules.rule ?? ''}`.trim() };
  if (requests.mtPriority !== undefined) {
    placement.mtPriority = requests.mtPriority;
    const name = mtPriorityClass(requests.mtPriority, config.smtp.mtPriority);
    const level = name !== undefined ? config.priorities.classes[name] : undefined;
    if (level !== undefined) {
      placement.priority = level;
      placement.classification.priority = { source: 'mt-priority', detail: `MT-PRIORITY=${requests.mtPriority} → ${name}` };
    }
  }
  if (requests.releaseAt !== undefined && requests.releaseAt > placement.notBefore) {
    placement.notBefore = requests.releaseAt;
    placement.classification.delay = { source: 'futurerelease', detail: requests.releaseDetail ?? '' };
  }
  return placement;
}

/** The reply to a client on a DNS blocklist, in Postfix's words. */
export function dnsblRefusal(client: string, zone: string): Reply {
  return { code: 554, enhanced: '5.7.1', text: `Service unavailable; Client host [${client}] blocked using ${zone}` };
}

/**
 * The label of spoolhouse_rejected_total for a refusal, from its reply code and enhanced code
 * (refusals that these cannot tell apart carry their own label: SmtpIngress #refuse).
 */
export function rejectionReason(code: number, enhanced: string): string {
  if (code === 421) return enhanced === '4.7.0' ? 'connections' : enhanced === '4.4.2' ? 'timeout' : 'protocol';
  if (code === 553 && enhanced === '5.7.1') return 'sender_login';
  if (code === 450 && enhanced === '4.7.1') return 'rate';
  if (enhanced === '5.7.1') return code === 554 ? 'relay' : 'policy';
  if (enhanced === '5.3.4') return 'size';
  if (enhanced === '4.5.3') return 'recipients';
  if (enhanced.startsWith('4.3.')) return 'storage';
  if (code === 550 && enhanced === '5.5.2') return 'bare_line_ending';
  if (code === 550 && enhanced === '5.1.1') return 'unknown_recipient';
  if (enhanced === '5.6.7') return 'smtputf8';
  if (enhanced === '5.4.6') return 'loop';
  if (code === 555) return 'parameter';
  if (code === 530 || code === 535 || code === 538 || code === 454) return 'auth';
  if (code >= 500 && code <= 504) return 'syntax';
  return 'other';
}
