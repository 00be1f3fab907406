/**
 * How values read at a glance: times relative with the absolute time as a tooltip, sizes in
 * KB/MB, states as a coloured badge that also carries the word (colour is never the only cue).
 */
import { h } from './dom';

const RTF = new Intl.RelativeTimeFormat('en', { numeric: 'auto', style: 'short' });
const ABS = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

export function absoluteTime(ms: number): string {
  return ABS.format(new Date(ms));
}

export function relativeTime(ms: number, now = Date.now()): string {
  const diff = ms - now;
  const abs = Math.abs(diff);
  if (abs < 5_000) return 'just now';
  const units: [Intl.RelativeTimeFormatUnit, number][] = [['day', 86_400_000], ['hour', 3_600_000], ['minute', 60_000], ['second', 1000]];
  for (const [unit, size] of units) {
    if (abs >= size || unit === 'second') return RTF.format(Math.round(diff / size), unit);
  }
  return 'just now';
}

/** A <time> showing "3 min ago" with the full date and time on hover. */
export function timeEl(ms: number | undefined | null, empty = '—'): HTMLElement {
  if (ms === undefined || ms === null || !Number.isFinite(ms) || ms <= 0) return h('span', { class: 'muted' }, empty);
  return h('time', { datetime: new Date(ms).toISOString(), title: absoluteTime(ms) }, relativeTime(ms));
}

export function humanSize(bytes: number | undefined | null): string {
  if (bytes === undefined || bytes === null || !Number.isFinite(bytes)) return '—';
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = bytes / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function sizeEl(bytes: number): HTMLElement {
  return h('span', { title: `${bytes.toLocaleString()} bytes` }, humanSize(bytes));
}

/** "5m", "2h", "1d", "90s" from milliseconds: the same units as the config file. */
export function durationText(ms: number): string {
  const units: [string, number][] = [['w', 604_800_000], ['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]];
  for (const [u, size] of units) if (ms >= size && ms % size === 0) return `${ms / size}${u}`;
  return `${ms}ms`;
}

/** "12 min", "3 h 5 min": a length of time for people. */
export function ageText(ms: number): string {
  const min = Math.floor(ms / 60_000);
  if (min < 1) return `${Math.max(0, Math.round(ms / 1000))} s`;
  if (min < 60) return `${min} min`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return `${hours} h ${min % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

const STATE_HELP: Record<string, string> = {
  queued: 'waiting for delivery (due now or at its next attempt)',
  active: 'being delivered right now',
  held: 'held by an operator or a rule; release it to deliver',
  delivered: 'delivered to every recipient',
  bounced: 'a recipient failed permanently; a bounce was sent',
  expired: 'still undeliverable when its lifetime ran out',
  removed: 'removed by an operator; it will never be delivered',
  pending: 'not tried yet',
  deferred: 'the last try failed temporarily; it will be retried',
  failed: 'failed permanently',
};

/** A badge with the state's colour and its word, e.g. "held". */
export function stateBadge(state: string): HTMLElement {
  return h('span', { class: `badge state-${state}`, title: STATE_HELP[state] ?? state }, state);
}

export function replyText(reply: { code: number; enhanced?: string; message: string } | undefined): string {
  if (!reply) return '—';
  return [reply.code, reply.enhanced, reply.message].filter((x) => x !== undefined && x !== '').join(' ');
}

export function senderText(sender: string): string {
  return sender === '' ? '<> (bounce)' : sender;
}

/** "1.2KB" / "25MB" / "1024" → bytes; undefined when empty or unreadable. */
export function parseSizeInput(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]?)b?\s*$/i.exec(text);
  if (!m) return undefined;
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase()]!;
  return Math.round(Number(m[1]) * mult);
}

/** The value of a datetime-local input as epoch ms (local time), or undefined. */
export function parseLocalDateTime(text: string): number | undefined {
  if (!text) return undefined;
  const t = new Date(text).getTime();
  return Number.isFinite(t) ? t : undefined;
}

export function toLocalDateTimeInput(ms: number): string {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}
