/**
 * Turns what an operator typed (query strings, JSON bodies, CLI `--filter key=value`) into the
 * queue's `BrowseFilter`, refusing anything it cannot understand with a 400 that names the key:
 * a filter that silently matched everything would make a bulk remove dangerous.
 *
 * Accepted forms: `state` and `priority` as one value, a comma list or an array; a priority as a
 * class name ("bulk") or its level ("0"); `since`/`until` as ISO 8601 or epoch milliseconds;
 * sizes as bytes or "25KB"; `sender` "<>" (or "") for the null sender of bounces.
 */
import { parseSize, type Config } from '../config/schema.js';
import type { BrowseFilter, MailState } from '../queue/types.js';
import { MAIL_STATES } from '../queue/types.js';
import { BadRequestError } from './errors.js';

export const FILTER_KEYS = ['state', 'priority', 'sender', 'recipient', 'domain', 'since', 'until', 'minSize', 'maxSize', 'q', 'reply'] as const;
export type FilterKey = (typeof FILTER_KEYS)[number];
export type RawFilter = Partial<Record<FilterKey, unknown>>;

type Priorities = Config['priorities'];

function listOf(key: string, value: unknown): string[] {
  const parts = (Array.isArray(value) ? value : [value]).flatMap((v) => {
    if (typeof v === 'number') return [String(v)];
    if (typeof v !== 'string') throw new BadRequestError(`filter ${key}: expected a string, a number or a list`);
    return v.split(',');
  });
  const trimmed = parts.map((p) => p.trim()).filter((p) => p !== '');
  if (trimmed.length === 0) throw new BadRequestError(`filter ${key}: empty`);
  return trimmed;
}

function textOf(key: string, value: unknown): string {
  if (typeof value === 'number') return String(value);
  if (typeof value !== 'string') throw new BadRequestError(`filter ${key}: expected a string`);
  return value.trim();
}

export function parseStates(value: unknown): MailState[] {
  return listOf('state', value).map((s) => {
    const state = s.toLowerCase() as MailState;
    if (!MAIL_STATES.includes(state)) throw new BadRequestError(`filter state: unknown state "${s}" (one of ${MAIL_STATES.join(', ')})`);
    return state;
  });
}

/** A priority class name or level → the level. Numbers must be a configured level. */
export function parsePriority(value: unknown, priorities: Priorities, key = 'priority'): number {
  const text = textOf(key, value);
  if (/^\d+$/.test(text)) {
    const level = Number(text);
    if (!Object.values(priorities.classes).includes(level)) {
      throw new BadRequestError(`${key}: ${level} is not a configured priority level (${describeClasses(priorities)})`);
    }
    return level;
  }
  const level = priorities.classes[text.toLowerCase()];
  if (level === undefined) throw new BadRequestError(`${key}: unknown priority "${text}" (${describeClasses(priorities)})`);
  return level;
}

export function describeClasses(priorities: Priorities): string {
  return Object.entries(priorities.classes).map(([name, level]) => `${name}=${level}`).join(', ');
}

/** The name of a level, or undefined when no class has it (a class removed from config). */
export function priorityNameOf(level: number, priorities: Priorities): string | undefined {
  return Object.entries(priorities.classes).find(([, l]) => l === level)?.[0];
}

/** ISO 8601 date/time or epoch milliseconds. */
export function parseTime(value: unknown, key: string): number {
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  const text = textOf(key, value);
  if (/^\d+$/.test(text)) return Number(text);
  // Date.parse accepts much that is not ISO ("1", "March 7"); insist on a date first.
  const ms = /^\d{4}-\d{2}-\d{2}/.test(text) ? Date.parse(text) : NaN;
  if (Number.isNaN(ms)) throw new BadRequestError(`${key}: "${text}" is not a time (ISO 8601 such as 2026-11-25T06:00:00Z, or epoch milliseconds)`);
  return ms;
}

function parseBytes(value: unknown, key: string): number {
  const bytes = typeof value === 'number' ? (Number.isInteger(value) && value >= 0 ? value : NaN) : parseSize(textOf(key, value));
  if (Number.isNaN(bytes)) throw new BadRequestError(`filter ${key}: "${String(value)}" is not a size (bytes, or e.g. "25KB")`);
  return bytes;
}

export function parseFilter(raw: RawFilter | Record<string, unknown>, priorities: Priorities): BrowseFilter {
  const filter: BrowseFilter = {};
  for (const [key, value] of Object.entries(raw)) {
    if (value === undefined || value === null) continue;
    switch (key as FilterKey) {
      case 'state': filter.state = parseStates(value); break;
      case 'priority': filter.priority = listOf('priority', value).map((p) => parsePriority(p, priorities, 'filter priority')); break;
      case 'sender': {
        const s = textOf(key, value);
        filter.sender = s === '<>' ? '' : s;
        break;
      }
      case 'recipient': filter.recipient = nonEmpty(key, value); break;
      case 'domain': filter.domain = nonEmpty(key, value).toLowerCase().replace(/^@/, '').replace(/\.$/, ''); break;
      case 'since': filter.since = parseTime(value, 'filter since'); break;
      case 'until': filter.until = parseTime(value, 'filter until'); break;
      case 'minSize': filter.minSize = parseBytes(value, key); break;
      case 'maxSize': filter.maxSize = parseBytes(value, key); break;
      case 'q': {
        const q = textOf(key, value);
        if (q) filter.q = q;
        break;
      }
      case 'reply': {
        const reply = textOf(key, value);
        if (reply) filter.reply = reply;
        break;
      }
      default:
        throw new BadRequestError(`unknown filter "${key}" (known: ${FILTER_KEYS.join(', ')})`);
    }
  }
  if (filter.since !== undefined && filter.until !== undefined && filter.since > filter.until) {
    throw new BadRequestError('filter since is after until');
  }
  if (filter.minSize !== undefined && filter.maxSize !== undefined && filter.minSize > filter.maxSize) {
    throw new BadRequestError('filter minSize is larger than maxSize');
  }
  return filter;
}

function nonEmpty(key: string, value: unknown): string {
  const text = textOf(key, value);
  if (!text) throw new BadRequestError(`filter ${key}: empty`);
  return text;
}
