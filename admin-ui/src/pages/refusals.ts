/**
 * Refused at the door: this node's recent refusals (GET /api/refusals), newest first, with the
 * refusal rate by reason over the last minute (GET /api/stats). Filters live in the URL
 * (#/refusals?reason=relay&client=198.51.100.0/24&text=...). Each row offers to block its client
 * (relay.reject, saved with PUT /api/config after a confirmation). Everything a client sent
 * (HELO name, sender, command) is shown as text.
 */
import { api, query, type ConsoleConfig, type Refusal, type RefusalPage, type RejectEntry, type Stats } from '../api';
import { field, h, mount } from '../dom';
import { timeEl } from '../format';
import { confirmDialog, emptyState, errorMessage, errorState, forgetConfig, loading, notify, runningConfig } from '../ui';
import type { Cleanup } from '../main';

const FILTERS = ['reason', 'client', 'text'] as const;
type Filter = Partial<Record<(typeof FILTERS)[number], string>>;

function navigate(filter: Filter): void {
  location.hash = '#/refusals' + query(filter);
}

function perMinute(n: number): string {
  return n.toLocaleString(undefined, { maximumFractionDigits: n < 10 ? 1 : 0 });
}

/** "over the last minute", or the seconds a node younger than a minute measured its rates over. */
function overWindow(seconds: number): string {
  return seconds < 60 ? `over the ${seconds} s since this node started` : 'over the last minute';
}

function replyCell(r: Refusal): HTMLElement {
  return h('td', { class: 'reply' }, `${r.reply.code}${r.reply.enhanced ? ` ${r.reply.enhanced}` : ''} ${r.reply.text}`);
}

async function blockClient(client: string, after: () => void): Promise<void> {
  const ok = await confirmDialog({
    title: `Block ${client}?`,
    body: h('p', null, 'Mail from ', h('code', null, client), ' is refused at MAIL FROM from now on (relay.reject: ', h('code', null, '554 5.7.1 … Access denied'),
      '), trusted and authenticated sessions included, until you unblock it on the Configuration page ("Blocked at the door").'),
    confirm: `Block ${client}`,
    danger: true,
  });
  if (!ok) return;
  try {
    const config: ConsoleConfig = await runningConfig(true);
    const current: RejectEntry[] = config.relay?.reject ?? [];
    if (current.some((e) => e.client?.length === 1 && e.client[0] === client && Object.keys(e).length === 1)) {
      notify(`${client} is already blocked.`);
      return;
    }
    await api('PUT', '/api/config', { body: { relay: { reject: [...current, { client: [client] }] } } });
    forgetConfig();
    notify(`${client} is blocked at the door.`);
    after();
  } catch (err) {
    notify(`Not blocked: ${errorMessage(err)}`, 'error');
  }
}

export function renderRefusals(main: HTMLElement, params: URLSearchParams): Cleanup {
  const filter: Filter = {};
  for (const k of FILTERS) {
    const v = params.get(k)?.trim();
    if (v) filter[k] = v;
  }
  const filtered = Object.keys(filter).length > 0;
  let items: Refusal[] = [];
  let reasons: Record<string, number> = {};
  let refusedPerMinute = 0;
  let windowSeconds = 60;
  let node = '';

  const reasonSelect = h('select', { name: 'reason' }, h('option', { value: '' }, 'Any reason'));
  const clientInput = h('input', { type: 'text', name: 'client', value: filter.client ?? '', placeholder: '198.51.100.7 or 198.51.100.0/24' });
  const textInput = h('input', { type: 'search', name: 'text', value: filter.text ?? '', placeholder: 'HELO name, sender, command or reply contains…' });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the refusals' },
    field('Reason', reasonSelect),
    field('Client address or network', clientInput),
    field('Text', textInput),
    h('div', { class: 'filter-actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Apply filters'),
      h('button', { type: 'button', onclick: () => navigate({}) }, 'Clear filters'),
      h('button', { type: 'button', onclick: () => void load() }, 'Refresh')));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    navigate({ reason: reasonSelect.value, client: clientInput.value.trim(), text: textInput.value.trim() });
  });
  const summary = h('p', { class: 'summary muted', role: 'status' });
  const rateList = h('div', { class: 'reason-rates' });
  const body = h('div', null, loading('Loading the refusals…'));
  mount(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Refused at the door'), summary),
    h('p', { class: 'muted' }, "Every SMTP reply of 400 or more this node sent lately: relay denials, blocklists, HELO and SPF checks, rate limits, failed logins, syntax errors. Kept in this node's memory; on a cluster each node shows its own."),
    rateList,
    form,
    body);

  function fillReasons(): void {
    const current = filter.reason ?? '';
    const known = [...new Set([...Object.keys(reasons), ...items.map((r) => r.reason), ...(current ? [current] : [])])].sort();
    reasonSelect.replaceChildren(h('option', { value: '' }, 'Any reason'), ...known.map((r) => h('option', { value: r, selected: r === current }, r)));
    const byRate = Object.entries(reasons).sort((a, b) => b[1] - a[1]);
    mount(rateList, byRate.length
      ? h('p', null, `${perMinute(refusedPerMinute)} refused a minute ${overWindow(windowSeconds)}: `,
        byRate.map(([reason, n], i) => [i ? ', ' : '', h('a', { href: '#/refusals' + query({ ...filter, reason }) }, reason), ` ${perMinute(n)}`]))
      : h('p', { class: 'muted' }, windowSeconds < 60 ? `Nothing was refused ${overWindow(windowSeconds)}.` : 'Nothing was refused in the last minute.'));
  }

  function render(page: RefusalPage): void {
    summary.textContent = `${filtered ? `${items.length}${page.nextCursor !== undefined ? '+' : ''} match the filters; ` : ''}`
      + `${node ? `node ${node}` : 'this node'} keeps the last ${page.capacity.toLocaleString()} and has refused ${page.total.toLocaleString()} since it started.`;
    fillReasons();
    if (items.length === 0) {
      mount(body, filtered
        ? emptyState('No refusal kept matches these filters', 'Loosen or clear the filters.')
        : emptyState('Nothing was refused', page.capacity === 0 ? 'smtp.refusalsKept is 0: refusals are counted but not kept.' : 'Refusals appear here as clients are turned away.'));
      return;
    }
    mount(body,
      h('div', { class: 'table-area' },
        h('table', { class: 'refusals', 'aria-label': 'Refusals' },
          h('thead', null, h('tr', null, ['When', 'Client', 'HELO', 'Sender', 'Command', 'Reply', 'Reason', ''].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', null, items.map((r) => h('tr', null,
            h('td', null, timeEl(r.at)),
            h('td', null, h('a', { href: '#/refusals' + query({ client: r.client }), title: `Only refusals of ${r.client}` }, r.client), r.user ? h('div', { class: 'muted' }, `user ${r.user}`) : null),
            h('td', { class: 'helo' }, r.helo ?? '—'),
            h('td', null, r.sender === undefined ? '—' : r.sender === '' ? '<> (bounce)' : r.sender),
            h('td', { class: 'command' }, r.command ?? '—'),
            replyCell(r),
            h('td', null, h('span', { class: 'badge' }, r.reason)),
            h('td', null, h('button', { type: 'button', class: 'link', onclick: () => void blockClient(r.client, () => void load()) }, `Block ${r.client}`))))))),
      page.nextCursor !== undefined ? h('p', { class: 'pager' }, h('button', { type: 'button', onclick: () => void load(page.nextCursor) }, 'Load older refusals')) : null);
  }

  async function load(before?: number): Promise<void> {
    try {
      const [page, stats] = await Promise.all([
        api<RefusalPage>('GET', '/api/refusals' + query({ ...filter, limit: 200, before })),
        before === undefined ? api<Stats>('GET', '/api/stats?topN=1') : Promise.resolve(undefined),
      ]);
      if (stats) {
        reasons = stats.refusedByReason ?? {};
        refusedPerMinute = stats.rates.refusedPerMinute ?? 0;
        windowSeconds = stats.ratesWindowSeconds ?? 60;
        node = stats.node ?? '';
      }
      items = before === undefined ? page.items : [...items, ...page.items];
      render(page);
    } catch (err) {
      mount(body, errorState('Could not load the refusals', err, () => void load(before)));
    }
  }
  void load();
}
