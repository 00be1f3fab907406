/**
 * relay.reject: clients, senders and recipients an operator refuses outright (Postfix's
 * check_client_access / check_sender_access / check_recipient_access with REJECT), e.g. while a
 * spam run or a compromised account is going on. Pure decisions; the ingress asks them.
 *
 * What it guarantees:
 * - An entry refuses when every match key it gives fits: `client` (CIDRs), `sender` and
 *   `recipient` (globs of the whole address, case-insensitive; sender "" is the null sender),
 *   `senderDomain` and `recipientDomain` (globs of the domain).
 * - An entry without recipient keys is decided at MAIL FROM; one with recipient keys at each RCPT
 *   (with the sender and client of the transaction), so only the recipients it names are refused.
 * - It holds for every client, trusted and authenticated ones included: it is the operator's own
 *   list, and a stolen account is one of the things it is for.
 * - The reply is the entry's `reply`, else 554 5.7.1 in Postfix's words ("<a@b>: Sender address
 *   rejected: Access denied"); the first entry in order that fits decides.
 */
import { isIPv4 } from 'node:net';
import { globMatch } from '../config/rules.js';
import { networkList, parseReplyText, type Config } from '../config/schema.js';
import type { Reply } from './protocol.js';

type Entry = Config['relay']['reject'][number];

const lists = new WeakMap<string[], ReturnType<typeof networkList>>();

function clientFits(entry: Entry, client: string): boolean {
  if (!entry.client) return true;
  let list = lists.get(entry.client);
  if (!list) {
    list = networkList(entry.client);
    lists.set(entry.client, list);
  }
  try {
    return list.check(client, isIPv4(client) ? 'ipv4' : 'ipv6');
  } catch {
    return false; // not an IP address
  }
}

function addressFits(pattern: string | undefined, address: string): boolean {
  if (pattern === undefined) return true;
  if (pattern === '') return address === '';
  return globMatch(pattern, address);
}

function domainFits(pattern: string | undefined, address: string): boolean {
  if (pattern === undefined) return true;
  const at = address.lastIndexOf('@');
  return at >= 0 && globMatch(pattern, address.slice(at + 1));
}

function reply(entry: Entry, fallback: string): Reply {
  return entry.reply ? parseReplyText(entry.reply) : { code: 554, enhanced: '5.7.1', text: fallback };
}

const hasRecipientKey = (e: Entry) => e.recipient !== undefined || e.recipientDomain !== undefined;

/** At MAIL FROM: the first entry without recipient keys that fits this client and sender. */
export function rejectAtMail(entries: Entry[], o: { client: string; sender: string }): Reply | undefined {
  for (const e of entries) {
    if (hasRecipientKey(e)) continue;
    if (!clientFits(e, o.client) || !addressFits(e.sender, o.sender) || !domainFits(e.senderDomain, o.sender)) continue;
    const bySender = e.sender !== undefined || e.senderDomain !== undefined;
    return reply(e, bySender ? `<${o.sender}>: Sender address rejected: Access denied` : `Client host [${o.client}] rejected: Access denied`);
  }
  return undefined;
}

/** At RCPT: the first entry with recipient keys that fits this recipient (and client and sender). */
export function rejectAtRcpt(entries: Entry[], o: { client: string; sender: string; recipient: string }): Reply | undefined {
  for (const e of entries) {
    if (!hasRecipientKey(e)) continue;
    if (!clientFits(e, o.client) || !addressFits(e.sender, o.sender) || !domainFits(e.senderDomain, o.sender)) continue;
    if (!addressFits(e.recipient, o.recipient) || !domainFits(e.recipientDomain, o.recipient)) continue;
    return reply(e, `<${o.recipient}>: Recipient address rejected: Access denied`);
  }
  return undefined;
}
