/**
 * The rule classifier: which priority, delay and hold a new mail gets from the `rules` of the
 * configuration. Pure (no I/O, the clock comes in as `now`), so the ingress, the admin API's
 * "test a rule" endpoint and the unit tests all get the same answer.
 *
 * Semantics (documented in README "rules"):
 * - Rules are tried in order; the first rule whose every given match field matches wins.
 *   No rule matches → the default class, no delay, no hold.
 * - sender / senderDomain / recipientDomain / authUser / header values are globs (`*` any run,
 *   `?` one character), case-insensitive, matched against the whole value. A header value may
 *   instead be a regular expression written "/…/flags".
 * - sender "" matches only the null sender (bounces); recipientDomain matches when any recipient's
 *   domain matches; header matches when any header of that name (case-insensitive) matches.
 * - body is a glob or "/regex/flags" over the body as sent (not MIME-decoded: a base64 part is seen
 *   as base64), its first BODY_MATCH_BYTES, read as latin1 so that any byte is one character.
 * - minSize / maxSize bound the message size in bytes (inclusive).
 * - A rule that sets only some of priority / delay / hold leaves the others at their defaults.
 * - A rule may instead `reject` (a reply such as "550 5.7.1 text"): the mail is refused at the end
 *   of DATA and nothing is queued (the schema forbids a rejecting rule to set anything else).
 */
import { parseReplyText, type Config, type Rule } from './schema.js';

// Structurally the same as Classification / QueuedMail['classification'] in src/queue/types.ts;
// repeated here because config imports no stage (dependency-cruiser rule), not even types.
export interface Classification {
  source: 'default' | 'rule' | 'mt-priority' | 'futurerelease' | 'operator';
  rule?: string;
  detail?: string;
}
export interface MailClassification {
  priority: Classification;
  delay?: Classification;
  hold?: Classification;
}

export interface ClassifyInput {
  sender: string;
  recipients: string[];
  authUser?: string;
  headers: { name: string; value: string }[];
  size: number;
  /** The body as sent, for rules that match on it; a function so it is only made when one does. */
  body?: string | (() => string);
}

/** How much of the body a `body` match looks at (Postfix's body_checks_size_limit is 51200). */
export const BODY_MATCH_BYTES = 256 * 1024;

export interface ClassifyResult {
  /** Numeric level of the class (higher is served first). */
  priority: number;
  priorityName: string;
  /** now + delayMs. */
  notBefore: number;
  delayMs: number;
  hold: boolean;
  /** The matching rule refuses the mail: its reply ("550 5.7.1 text"). Nothing else applies then. */
  reject?: { code: number; enhanced: string; text: string };
  /** Name of the rule that matched, if one did. */
  rule?: string;
  classification: MailClassification;
}

export function classify(input: ClassifyInput, config: Pick<Config, 'rules' | 'priorities'>, now: number = Date.now()): ClassifyResult {
  let body: string | undefined;
  // The body is made at most once, and only when a rule looks at it.
  const lazy = typeof input.body === 'function' && config.rules.some((r) => r.match.body !== undefined);
  const once: ClassifyInput = lazy ? { ...input, body: () => (body ??= (input.body as () => string)()) } : input;
  const rule = config.rules.find((r) => ruleMatches(r, once));
  const defaultClass: Classification = { source: 'default' };
  if (!rule) {
    const name = config.priorities.default;
    return {
      priority: levelOf(name, config),
      priorityName: name,
      notBefore: now,
      delayMs: 0,
      hold: false,
      classification: { priority: defaultClass },
    };
  }
  const byRule: Classification = { source: 'rule', rule: rule.name };
  const priorityName = rule.priority ?? config.priorities.default;
  const delayMs = rule.delay ?? 0;
  const hold = rule.hold === true;
  return {
    priority: levelOf(priorityName, config),
    priorityName,
    notBefore: now + delayMs,
    delayMs,
    hold,
    ...(rule.reject !== undefined ? { reject: parseReplyText(rule.reject) } : {}),
    rule: rule.name,
    classification: {
      priority: rule.priority !== undefined ? byRule : defaultClass,
      ...(rule.delay !== undefined ? { delay: byRule } : {}),
      ...(hold ? { hold: byRule } : {}),
    },
  };
}

/** True when every match field the rule gives matches the mail. */
export function ruleMatches(rule: Rule, input: ClassifyInput): boolean {
  const m = rule.match;
  if (m.sender !== undefined && !matchSender(m.sender, input.sender)) return false;
  if (m.senderDomain !== undefined && (input.sender === '' || !globMatch(m.senderDomain, domainPart(input.sender)))) return false;
  if (m.recipientDomain !== undefined && !input.recipients.some((r) => globMatch(m.recipientDomain!, domainPart(r)))) return false;
  if (m.authUser !== undefined && (input.authUser === undefined || !globMatch(m.authUser, input.authUser))) return false;
  if (m.header !== undefined) {
    const name = m.header.name.toLowerCase();
    const test = valueMatcher(m.header.value);
    if (!input.headers.some((h) => h.name.toLowerCase() === name && test(h.value.trim()))) return false;
  }
  if (m.body !== undefined) {
    const text = typeof input.body === 'function' ? input.body() : input.body ?? '';
    if (!valueMatcher(m.body)(text)) return false;
  }
  if (m.minSize !== undefined && input.size < m.minSize) return false;
  if (m.maxSize !== undefined && input.size > m.maxSize) return false;
  return true;
}

function matchSender(pattern: string, sender: string): boolean {
  // "" is the null sender and matches nothing else (a glob "" would match only "" anyway).
  if (pattern === '') return sender === '';
  return globMatch(pattern, sender);
}

function domainPart(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1);
}

const globCache = new Map<string, RegExp>();

/** Whole-value, case-insensitive glob: `*` any run of characters, `?` exactly one. */
export function globMatch(pattern: string, value: string): boolean {
  let re = globCache.get(pattern);
  if (!re) {
    const body = pattern.split('').map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\/-]/g, '\\$&'))).join('');
    re = new RegExp(`^${body}$`, 'is');
    if (globCache.size > 1000) globCache.clear();
    globCache.set(pattern, re);
  }
  return re.test(value);
}

/** A header value pattern: "/regex/flags" or a glob. An invalid regex matches nothing. */
function valueMatcher(pattern: string): (value: string) => boolean {
  const m = /^\/(.*)\/([a-z]*)$/s.exec(pattern);
  if (!m) return (v) => globMatch(pattern, v);
  let re: RegExp;
  try {
    re = new RegExp(m[1]!, m[2]!.replace(/[gy]/g, ''));
  } catch {
    return () => false;
  }
  return (v) => re.test(v);
}

function levelOf(name: string, config: Pick<Config, 'priorities'>): number {
  const level = config.priorities.classes[name];
  // The schema checks that every rule names a class; this guards a config changed under us.
  return level ?? config.priorities.classes[config.priorities.default] ?? 0;
}

/** Class name of a numeric level (the highest-named one if two share it; the schema forbids that). */
export function priorityNameOf(level: number, config: Pick<Config, 'priorities'>): string | undefined {
  return Object.entries(config.priorities.classes).find(([, l]) => l === level)?.[0];
}
