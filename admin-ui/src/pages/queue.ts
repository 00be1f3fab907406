/**
 * The queue browser: filters (kept in the URL, so a view can be bookmarked and shared), sortable
 * columns, cursor paging, live refresh from the event feed, and multi-select bulk actions. Bulk
 * actions on "all mails matching the filter" first ask the server for the count (dryRun) so the
 * confirmation names the real number.
 */
import { api, query, MAIL_STATES, type BrowsePage, type BulkAction, type ConsoleConfig, type MailSummary } from '../api';
import { field, h, mount } from '../dom';
import { onQueueEvent } from '../events';
import { parseLocalDateTime, parseSizeInput, replyText, senderText, sizeEl, stateBadge, timeEl } from '../format';
import { confirmDialog, coalesce, emptyState, errorMessage, errorState, loading, notify, priorityClasses, priorityLabel, runningConfig } from '../ui';
import type { Cleanup } from '../main';
import { ACTION_WORDS, bulkByFilter, bulkWarning, mails } from '../bulk';

const FILTER_KEYS = ['state', 'priority', 'sender', 'recipient', 'domain', 'q', 'reply', 'since', 'until', 'minSize', 'maxSize'] as const;
type FilterKey = (typeof FILTER_KEYS)[number];
type SortField = 'received' | 'priority' | 'nextAttempt';
const PAGE_SIZE = 50;

/** The filter as the API takes it (numbers where the queue model has numbers). */
export function apiFilter(f: Partial<Record<FilterKey, string>>): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const key of FILTER_KEYS) {
    const v = f[key]?.trim();
    if (!v) continue;
    if (key === 'priority') out[key] = Number(v);
    else if (key === 'since' || key === 'until') {
      const ms = parseLocalDateTime(v);
      if (ms !== undefined) out[key] = ms;
    } else if (key === 'minSize' || key === 'maxSize') {
      const bytes = parseSizeInput(v);
      if (bytes !== undefined) out[key] = bytes;
    } else out[key] = v;
  }
  return out;
}

/** One operator action on one mail, through the per-message routes. */
async function actOnOne(id: string, action: BulkAction, priority?: number, reason?: string): Promise<void> {
  const path = `/api/messages/${encodeURIComponent(id)}`;
  if (action === 'remove') await api('DELETE', path);
  else if (action === 'priority') await api('PATCH', path, { body: { priority } });
  else if (action === 'bounce') await api('POST', `${path}/bounce`, reason ? { body: { reason } } : {});
  else await api('POST', `${path}/${action}`);
}

/** What the confirmation of a destructive action warns of (and, for a bounce, asks the reason). */
/** Runs `fn` over `items` with a few requests in flight at once. */
async function inBatches<T>(items: T[], fn: (item: T) => Promise<void>, width = 4): Promise<{ ok: number; failed: { item: T; err: unknown }[] }> {
  let ok = 0;
  const failed: { item: T; err: unknown }[] = [];
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
        ok += 1;
      } catch (err) {
        failed.push({ item, err });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  return { ok, failed };
}

export function renderQueue(main: HTMLElement, params: URLSearchParams): Cleanup {
  const filter: Partial<Record<FilterKey, string>> = {};
  for (const k of FILTER_KEYS) {
    const v = params.get(k);
    if (v) filter[k] = v;
  }
  let sort = (params.get('sort') as SortField | null) ?? 'received';
  let order: 'asc' | 'desc' = params.get('order') === 'asc' ? 'asc' : params.get('order') === 'desc' ? 'desc' : sort === 'nextAttempt' ? 'asc' : 'desc';
  let cursors: (string | undefined)[] = [undefined];
  let page: BrowsePage | null = null;
  let config: ConsoleConfig | null = null;
  let loadSeq = 0;
  let updatedAt = 0;
  const selected = new Set<string>();

  // ---- filter form ----
  const input = (key: FilterKey, attrs: Record<string, string> = {}) =>
    h('input', { name: key, value: filter[key] ?? '', ...attrs });
  const stateSelect = h('select', { name: 'state' },
    h('option', { value: '' }, 'Any state'),
    MAIL_STATES.map((s) => h('option', { value: s, selected: filter.state === s }, s)));
  const prioritySelect = h('select', { name: 'priority' }, h('option', { value: '' }, 'Any priority'));
  const fields = {
    state: stateSelect,
    priority: prioritySelect,
    sender: input('sender', { type: 'text', placeholder: 'exact address; <> for bounces' }),
    recipient: input('recipient', { type: 'text', placeholder: 'exact address' }),
    domain: input('domain', { type: 'text', placeholder: 'example.org' }),
    q: input('q', { type: 'search', placeholder: 'contains…' }),
    reply: input('reply', { type: 'search', placeholder: 'e.g. TSS04, 4.2.2, over quota' }),
    since: input('since', { type: 'datetime-local' }),
    until: input('until', { type: 'datetime-local' }),
    minSize: input('minSize', { type: 'text', placeholder: 'e.g. 10KB', inputmode: 'text' }),
    maxSize: input('maxSize', { type: 'text', placeholder: 'e.g. 5MB' }),
  };
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the queue' },
    field('State', stateSelect),
    field('Priority', prioritySelect),
    field('Sender', fields.sender),
    field('Recipient', fields.recipient),
    field('Recipient domain', fields.domain),
    field('Subject or Message-ID', fields.q),
    field('Last reply contains', fields.reply),
    field('Received after', fields.since),
    field('Received before', fields.until),
    field('Minimum size', fields.minSize),
    field('Maximum size', fields.maxSize),
    h('div', { class: 'filter-actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Apply filters'),
      h('button', { type: 'button', onclick: () => navigate({}) }, 'Clear filters')));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const next: Partial<Record<FilterKey, string>> = {};
    for (const k of FILTER_KEYS) {
      const v = (fields[k] as HTMLInputElement | HTMLSelectElement).value.trim();
      if (v) next[k] = v;
    }
    const sizeProblem = (['minSize', 'maxSize'] as const).find((k) => next[k] && parseSizeInput(next[k]!) === undefined);
    if (sizeProblem) {
      notify(`"${next[sizeProblem]}" is not a size: use bytes or e.g. 10KB, 5MB.`, 'error');
      fields[sizeProblem].focus();
      return;
    }
    navigate(next);
  });

  function navigate(next: Partial<Record<FilterKey, string>>, nextSort = sort, nextOrder = order): void {
    location.hash = '#/queue' + query({ ...next, sort: nextSort === 'received' ? undefined : nextSort, order: nextOrder });
  }

  // ---- summary, bulk bar, table, pager ----
  const summary = h('p', { class: 'summary', role: 'status', 'aria-live': 'polite' });
  const selectedCount = h('span', { class: 'selected-count' });
  const allMatching = h('input', { type: 'checkbox', id: 'all-matching', onchange: () => renderBulkState() });
  const bulkPriority = h('select', { 'aria-label': 'New priority' });
  const bulkButtons: HTMLButtonElement[] = [];
  const bulkButton = (action: BulkAction, label: string, cls = '') => {
    const b = h('button', { type: 'button', class: cls, onclick: () => void runBulk(action) }, label);
    bulkButtons.push(b);
    return b;
  };
  const bulkBar = h('div', { class: 'bulkbar', role: 'toolbar', 'aria-label': 'Bulk actions' },
    selectedCount,
    h('label', { class: 'check', for: 'all-matching' }, allMatching, ' All mails matching the filter'),
    bulkButton('hold', 'Hold'),
    bulkButton('release', 'Release'),
    bulkButton('retry', 'Retry now'),
    h('span', { class: 'group' }, bulkPriority, bulkButton('priority', 'Set priority')),
    bulkButton('bounce', 'Bounce', 'danger'),
    bulkButton('remove', 'Remove', 'danger'));
  const tableArea = h('div', { class: 'table-area' }, loading('Loading the queue…'));
  const prevButton = h('button', { type: 'button', onclick: () => { cursors.pop(); void load(); } }, '← Previous page');
  const nextButton = h('button', { type: 'button', onclick: () => { if (page?.nextCursor) { cursors.push(page.nextCursor); void load(); } } }, 'Next page →');
  const pageInfo = h('span', { class: 'muted' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' }, prevButton, pageInfo, nextButton);

  mount(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Queue'), summary,
      filter.domain ? h('a', { href: `#/destinations/${encodeURIComponent(filter.domain)}` }, `Destination ${filter.domain}: replies and actions`) : null),
    form, bulkBar, tableArea, pager);

  function renderBulkState(): void {
    const all = allMatching.checked;
    const n = all ? page?.total?.count ?? 0 : selected.size;
    selectedCount.textContent = all
      ? `All ${page?.total?.exact === false ? 'about ' : ''}${mails(n)} matching the filter`
      : selected.size ? `${mails(selected.size)} selected` : 'Select mails to act on them';
    for (const b of bulkButtons) b.disabled = !all && selected.size === 0;
  }

  function sortHeader(label: string, fieldName: SortField): HTMLTableCellElement {
    const activeSort = sort === fieldName;
    const arrow = activeSort ? (order === 'asc' ? ' ▲' : ' ▼') : '';
    return h('th', { scope: 'col', 'aria-sort': activeSort ? (order === 'asc' ? 'ascending' : 'descending') : 'none' },
      h('button', {
        type: 'button', class: 'sort',
        'aria-label': `Sort by ${label.toLowerCase()}`,
        onclick: () => {
          const nextOrder = activeSort ? (order === 'asc' ? 'desc' : 'asc') : fieldName === 'nextAttempt' ? 'asc' : 'desc';
          navigate(filter, fieldName, nextOrder);
        },
      }, label, arrow));
  }

  function row(m: MailSummary): HTMLTableRowElement {
    const label = m.subject ? m.subject : `mail ${m.id}`;
    const box = h('input', {
      type: 'checkbox', 'aria-label': `Select ${label}`, checked: selected.has(m.id),
      onchange: (e: Event) => {
        if ((e.target as HTMLInputElement).checked) selected.add(m.id);
        else selected.delete(m.id);
        renderBulkState();
        syncPageCheckbox();
      },
    });
    const firstRcpt = m.recipients[0]?.address ?? '';
    const count = m.recipientCount ?? m.recipients.length;
    const more = count > 1 ? ` +${count - 1} more` : '';
    const live = m.state === 'queued' || m.state === 'active' || m.state === 'held';
    return h('tr', { 'data-id': m.id, class: selected.has(m.id) ? 'selected' : '' },
      h('td', null, box),
      h('td', null, stateBadge(m.state)),
      h('td', null, timeEl(m.receivedAt)),
      h('td', { class: 'addr', title: senderText(m.sender) }, senderText(m.sender)),
      h('td', { class: 'addr', title: m.recipients.map((r) => r.address).join(', ') }, firstRcpt, more ? h('span', { class: 'muted' }, more) : null),
      h('td', { class: 'subject' }, h('a', { href: `#/messages/${encodeURIComponent(m.id)}` }, m.subject ? m.subject : h('em', null, '(no subject)'))),
      h('td', { class: 'num' }, sizeEl(m.size)),
      h('td', null, priorityLabel(m.priority, config, m.priorityName)),
      h('td', null, live ? (m.state === 'held' ? h('span', { class: 'muted' }, 'on hold') : timeEl(m.notBefore)) : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'num', title: m.lastReply ? `Last reply: ${replyText(m.lastReply)}` : '' }, String(m.attempts)));
  }

  let pageCheckbox: HTMLInputElement | null = null;
  function syncPageCheckbox(): void {
    if (!pageCheckbox || !page) return;
    const onPage = page.items.filter((m) => selected.has(m.id)).length;
    pageCheckbox.checked = onPage > 0 && onPage === page.items.length;
    pageCheckbox.indeterminate = onPage > 0 && onPage < page.items.length;
  }

  function renderTable(): void {
    if (!page) return;
    const filtered = Object.keys(filter).length > 0;
    const total = page.total ?? { count: page.items.length, exact: !page.nextCursor };
    summary.textContent = `${total.exact ? '' : 'about '}${mails(total.count)}${filtered ? (total.count === 1 ? ' matches the filters' : ' match the filters') : ' in the queue'}`
      + (updatedAt ? ` · updated ${new Date(updatedAt).toLocaleTimeString()}` : '');
    pageInfo.textContent = `Page ${cursors.length}`;
    prevButton.disabled = cursors.length <= 1;
    nextButton.disabled = !page.nextCursor;
    if (page.items.length === 0) {
      mount(tableArea, cursors.length > 1
        ? emptyState('No more mail on this page', 'The queue changed while you paged. Go back to the first page.')
        : filtered
          ? emptyState('No mail matches these filters', 'Loosen or clear the filters to see more of the queue.')
          : emptyState('The queue is empty', 'Mail accepted by the SMTP listener shows up here as soon as it is queued.'));
      renderBulkState();
      return;
    }
    pageCheckbox = h('input', {
      type: 'checkbox', 'aria-label': 'Select all mails on this page',
      onchange: (e: Event) => {
        const on = (e.target as HTMLInputElement).checked;
        for (const m of page!.items) on ? selected.add(m.id) : selected.delete(m.id);
        renderTable();
      },
    });
    const table = h('table', { class: 'queue', 'aria-label': 'Queued mail' },
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, pageCheckbox),
        h('th', { scope: 'col' }, 'State'),
        sortHeader('Received', 'received'),
        h('th', { scope: 'col' }, 'Sender'),
        h('th', { scope: 'col' }, 'Recipients'),
        h('th', { scope: 'col' }, 'Subject'),
        h('th', { scope: 'col', class: 'num' }, 'Size'),
        sortHeader('Priority', 'priority'),
        sortHeader('Next attempt', 'nextAttempt'),
        h('th', { scope: 'col', class: 'num' }, 'Attempts'))),
      h('tbody', null, page.items.map(row)));
    mount(tableArea, table);
    syncPageCheckbox();
    renderBulkState();
  }

  async function load(): Promise<void> {
    const seq = ++loadSeq;
    try {
      let next = await api<BrowsePage>('GET', '/api/messages' + query({ ...apiFilter(filter), sort, order, cursor: cursors[cursors.length - 1], limit: PAGE_SIZE }));
      // A filter no index narrows (subject text, size) is answered a slice of the queue at a time:
      // an empty page with a cursor means "nothing in this slice", not "nothing matches". Keep
      // searching (this page's start moves on) until mail is found or the queue is exhausted.
      for (let slices = 1; next.items.length === 0 && next.nextCursor && seq === loadSeq; slices++) {
        cursors[cursors.length - 1] = next.nextCursor;
        summary.textContent = `Searching the queue… (${slices} part${slices === 1 ? '' : 's'} looked through)`;
        next = await api<BrowsePage>('GET', '/api/messages' + query({ ...apiFilter(filter), sort, order, cursor: next.nextCursor, limit: PAGE_SIZE }));
      }
      if (seq !== loadSeq) return;
      page = next;
      updatedAt = Date.now();
      renderTable();
    } catch (err) {
      if (seq !== loadSeq) return;
      summary.textContent = '';
      mount(tableArea, errorState('Could not load the queue', err, () => void load()));
    }
  }

  async function runBulk(action: BulkAction): Promise<void> {
    const words = ACTION_WORDS[action];
    const priority = action === 'priority' ? Number(bulkPriority.value) : undefined;
    if (action === 'priority' && !Number.isFinite(priority)) {
      notify('Choose the new priority first.', 'error');
      return;
    }
    const priorityNote = action === 'priority' ? ` to ${priorityLabel(priority!, config)}` : '';
    const reasonInput = h('input', { type: 'text', name: 'bounce-reason', placeholder: 'bounced by the operator', maxlength: '500' });
    const reason = () => reasonInput.value.trim() || undefined;
    const danger = action === 'remove' || action === 'bounce';
    if (allMatching.checked) {
      if (await bulkByFilter(apiFilter(filter), action, { which: 'matching the current filter', note: priorityNote, ...(priority !== undefined ? { priority } : {}) })) allMatching.checked = false;
    } else {
      const ids = [...selected];
      const ok = await confirmDialog({
        title: `${words.verb} ${mails(ids.length)}?`,
        body: [
          h('p', null, `${words.verb} the ${mails(ids.length)} you selected${priorityNote}.`),
          bulkWarning(action, reasonInput),
        ],
        confirm: `${words.verb} ${mails(ids.length)}`,
        danger,
      });
      if (!ok) return;
      const why = reason();
      const result = await inBatches(ids, (id) => actOnOne(id, action, priority, why));
      for (const id of ids) if (!result.failed.some((f) => f.item === id)) selected.delete(id);
      if (result.failed.length) {
        notify(`${mails(result.ok)} ${words.done}; ${result.failed.length} could not be: ${errorMessage(result.failed[0]!.err)}`, 'error');
      } else {
        notify(`${mails(result.ok)} ${words.done}.`);
      }
    }
    await load();
  }

  // ---- priorities from the running config fill the selects ----
  runningConfig().then((c) => {
    config = c;
    for (const [name, level] of priorityClasses(c)) {
      prioritySelect.append(h('option', { value: String(level), selected: filter.priority === String(level) }, `${name} (${level})`));
      bulkPriority.append(h('option', { value: String(level) }, `${name} (${level})`));
    }
    if (page) renderTable();
  }).catch(() => {
    // Without the config, priorities still show as numbers; the filter takes a number.
    if (filter.priority) prioritySelect.append(h('option', { value: filter.priority, selected: true }, filter.priority));
  });

  const refresh = coalesce(() => void load(), 700);
  const unsubscribe = onQueueEvent(() => refresh());
  renderBulkState();
  void load();
  return () => {
    unsubscribe();
    refresh.cancel();
  };
}
