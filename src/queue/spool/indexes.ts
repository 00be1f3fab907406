/**
 * Secondary index keys and counters of the spool, derived from a mail alone.
 *
 * Every index entry is a key in one LMDB database (`ix`, ordered-binary array keys, 1-byte value),
 * tagged by its family. Keys end with the sort tuple and the id, so a prefix range yields mails in
 * sort order and a cursor is just the last tuple seen. A change of a mail removes the keys of the
 * old version that the new one lacks and adds the new ones, in the same transaction as the mail.
 *
 * Families (R = receivedAt, NB = notBefore):
 *   q  [-priority, NB, id]            state queued: the due order reserveDue walks
 *   a  [lease.until, id]              state active: lapsed leases
 *   f  [updatedAt, id]                terminal states: purge order
 *   s  [state, R, id]                 by state, by received
 *   sp [state, priority, R, id]       by state, by priority (then received)
 *   sn [state, NB, id]                by state, by next attempt
 *   d  [domain, state, R, id]         each distinct recipient domain (also qshape ages)
 *   S  [sender, state, R, id]         lower-cased sender ('' = bounces)
 *   R  [recipient, state, R, id]      each distinct lower-cased recipient
 * With no state filter, browse merges the ranges of all seven states (cheaper than a second
 * state-less copy of every index: fewer writes per change, which is the spool's CPU cost).
 *
 * An active mail (leased for a delivery attempt) is indexed under 'queued' in s, sp, sn, S, d and
 * R (indexState): a reservation then rewrites two keys (q → a) instead of fourteen, and the
 * reservation is a third of a delivered mail's transitions. Active mail is few (the leases
 * held) and listed from the `a` family; browse checks every candidate's real state anyway.
 *
 * Counters (in the `meta` database, kept in the same transaction, mirrored in memory):
 *   ['c', 's', state]                  mails per state
 *   ['c', 'sp', state, priority]       mails per state and priority
 *   ['c', 'dd', domain, state]         mails per recipient domain and state
 */
import { domainOf, isTerminal } from '../model.js';
import type { MailState, QueuedMail } from '../types.js';

export type IndexKey = (string | number)[];

/** Sorts after every string and number an index key holds. */
export const HIGH = '\u{10ffff}';

function distinct(values: string[]): string[] {
  return [...new Set(values)];
}

export function mailDomains(mail: QueuedMail): string[] {
  return distinct(mail.recipients.map((r) => domainOf(r.address)));
}

/** The state a mail is indexed under in the state-keyed families: active mail stays under 'queued'. */
export function indexState(state: MailState): MailState {
  return state === 'active' ? 'queued' : state;
}

/**
 * The index keys of a mail. `legacyActive`: the keys versions before indexState wrote for an
 * active mail (its own state in every family), to remove them from an older spool at start.
 */
export function indexKeys(m: QueuedMail, legacyActive = false): IndexKey[] {
  const R = m.receivedAt;
  const st = legacyActive ? m.state : indexState(m.state);
  const keys: IndexKey[] = [
    ['s', st, R, m.id],
    ['sp', st, m.priority, R, m.id],
    ['sn', st, m.notBefore, m.id],
    ['S', m.sender.toLowerCase(), st, R, m.id],
  ];
  // `|| 0`: ordered-binary encodes -0 apart from 0, which would split priority 0 in two.
  if (m.state === 'queued') keys.push(['q', -m.priority || 0, m.notBefore, m.id]);
  if (m.state === 'active' && m.lease) keys.push(['a', m.lease.until, m.id]);
  if (isTerminal(m.state)) keys.push(['f', m.updatedAt, m.id]);
  for (const d of mailDomains(m)) keys.push(['d', d, st, R, m.id]);
  for (const r of distinct(m.recipients.map((x) => x.address.toLowerCase()))) keys.push(['R', r, st, R, m.id]);
  return keys;
}

export function counterKeys(m: QueuedMail): IndexKey[] {
  const keys: IndexKey[] = [['c', 's', m.state], ['c', 'sp', m.state, m.priority]];
  for (const d of mailDomains(m)) keys.push(['c', 'dd', d, m.state]);
  return keys;
}

function sameKey(a: IndexKey, b: IndexKey): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Above this many keys a side, keyDiff matches keys through a Map instead of pairwise. */
const PAIRWISE_MAX = 32;

/** Keys to delete and to add to go from `before` to `after` (either may be absent). */
export function keyDiff(before: IndexKey[], after: IndexKey[]): { remove: IndexKey[]; add: IndexKey[] } {
  if (!before.length) return { remove: [], add: after };
  if (before.length <= PAIRWISE_MAX && after.length <= PAIRWISE_MAX) {
    // The common case (a few recipients): comparing in place allocates nothing, unlike string keys.
    return {
      remove: before.filter((k) => !after.some((x) => sameKey(k, x))),
      add: after.filter((k) => !before.some((x) => sameKey(k, x))),
    };
  }
  const b = new Map(before.map((k) => [JSON.stringify(k), k]));
  const a = new Map(after.map((k) => [JSON.stringify(k), k]));
  return {
    remove: [...b].filter(([s]) => !a.has(s)).map(([, k]) => k),
    add: [...a].filter(([s]) => !b.has(s)).map(([, k]) => k),
  };
}
