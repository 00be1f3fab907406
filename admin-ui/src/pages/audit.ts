/**
 * The audit log: every operator action (who, when, what, on which mails, from which address,
 * and how it ended), newest first, from GET /api/audit (src/admin/audit.ts: { items,
 * nextCursor }). Values are shown as text; fields this page does not know are kept visible
 * under "Details" rather than dropped, so nothing an auditor needs is hidden.
 */
import { api, query } from '../api';
import { h, mount } from '../dom';
import { timeEl } from '../format';
import { emptyState, errorState, loading } from '../ui';
import type { Cleanup } from '../main';

interface Entry {
  at: number;
  actor: string;
  role?: string;
  ip?: string;
  action: string;
  ids?: string[];
  idCount?: number;
  filter?: Record<string, unknown>;
  detail?: Record<string, unknown>;
  result?: 'ok' | 'error';
  status?: number;
  error?: string;
  [key: string]: unknown;
}

const KNOWN = new Set(['at', 'actor', 'role', 'ip', 'action', 'ids', 'idCount', 'filter', 'detail', 'result', 'status', 'error']);

function json(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function mailsCell(e: Entry): HTMLElement {
  const ids = e.ids ?? [];
  const total = e.idCount ?? ids.length;
  const parts: (Node | string)[] = [];
  if (ids.length === 1) parts.push(h('a', { href: `#/messages/${encodeURIComponent(ids[0]!)}` }, ids[0]!));
  else if (ids.length > 1) parts.push(h('span', { title: ids.slice(0, 50).join('\n') }, `${total.toLocaleString()} mails`));
  if (e.filter && Object.keys(e.filter).length) parts.push(h('div', { class: 'muted' }, 'filter ', json(e.filter)));
  return h('td', { class: 'ids' }, parts.length ? parts : '—');
}

function resultCell(e: Entry): HTMLElement {
  if (e.result === 'error') return h('td', null, h('span', { class: 'badge state-failed' }, 'error'), ' ', e.status ? `${e.status} ` : '', e.error ?? '');
  return h('td', null, h('span', { class: 'badge state-delivered' }, e.result ?? 'ok'));
}

export function renderAudit(main: HTMLElement): Cleanup {
  let entries: Entry[] = [];
  const head = h('div', { class: 'page-head' }, h('h1', null, 'Audit log'), h('p', { class: 'summary muted' }, 'Every change made through the API, the console or the CLI, newest first.'));
  mount(main, head, loading('Loading the audit log…'));

  function render(nextCursor: string | undefined): void {
    if (entries.length === 0) {
      mount(main, head, emptyState('No operator actions yet', 'Holds, releases, removals, priority changes and configuration edits are recorded here as they happen.'));
      return;
    }
    mount(main, head,
      h('div', { class: 'table-area' },
        h('table', { class: 'audit', 'aria-label': 'Audit log' },
          h('thead', null, h('tr', null, ['When', 'Who', 'From', 'Action', 'Mails', 'Result', 'Details'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', null, entries.map((e) => {
            const extra = Object.fromEntries(Object.entries(e).filter(([k]) => !KNOWN.has(k)));
            const details = { ...(e.detail ?? {}), ...extra };
            return h('tr', null,
              h('td', null, timeEl(e.at)),
              h('td', null, e.actor ?? '—', e.role ? h('span', { class: 'muted' }, ` (${e.role})`) : null),
              h('td', null, e.ip ?? '—'),
              h('td', null, h('strong', null, e.action ?? '—')),
              mailsCell(e),
              resultCell(e),
              h('td', { class: 'details' }, Object.keys(details).length ? json(details) : ''));
          })))),
      nextCursor ? h('p', { class: 'pager' }, h('button', { type: 'button', onclick: () => void load(nextCursor) }, 'Load older entries')) : null);
  }

  async function load(from?: string): Promise<void> {
    try {
      const res = await api<{ items: Entry[]; nextCursor?: string | null }>('GET', '/api/audit' + query({ limit: 200, cursor: from }));
      entries = from ? [...entries, ...res.items] : res.items;
      render(res.nextCursor ?? undefined);
    } catch (err) {
      mount(main, head, errorState('Could not load the audit log', err, () => void load(from)));
    }
  }
  void load();
}
