/**
 * The running configuration an operator may change without a restart: priority classes, the
 * classification rules (with a tester), per-destination delivery limits, paused domains, routes,
 * the clients, senders and recipients refused at the door (relay.reject), and the door's DNS
 * checks (smtp.dnsbl, smtp.helo, smtp.spf, relay.checkSenderDomain). Each section saves
 * on its own with PUT /api/config; the server validates, and its message (naming the key and
 * the problem) is shown next to the section.
 */
import { api, ApiError, type ConsoleConfig, type DnsblZone, type Limits, type RejectEntry, type Rule } from '../api';
import { field, h, mount, uid } from '../dom';
import { durationText } from '../format';
import { errorMessage, errorState, forgetConfig, loading, notify, priorityClasses, runningConfig } from '../ui';
import type { Cleanup } from '../main';

/** Sizes and durations go back as typed: a bare number stays a number (bytes / ms). */
function numberOrText(text: string): number | string | undefined {
  const t = text.trim();
  if (!t) return undefined;
  return /^\d+$/.test(t) ? Number(t) : t;
}

function sectionBox(title: string, intro: string, ...children: (Node | null)[]): HTMLElement {
  const id = uid('sec');
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), h('p', { class: 'muted' }, intro), children);
}

/** The submit button of a section and the place its validation message appears. */
function saveRow(label: string): { row: HTMLElement; status: HTMLElement } {
  const status = h('div', { class: 'form-error', role: 'alert' });
  const row = h('div', { class: 'save-row' }, h('button', { type: 'submit', class: 'primary' }, label), status);
  return { row, status };
}

async function save(patch: Partial<ConsoleConfig> | Record<string, unknown>, status: HTMLElement, done: string, after: () => void): Promise<void> {
  status.textContent = '';
  try {
    await api('PUT', '/api/config', { body: patch });
    forgetConfig();
    notify(done);
    after();
  } catch (err) {
    const problems = err instanceof ApiError ? err.problems : [];
    mount(status,
      h('span', null, problems.length ? 'Not saved:' : `Not saved: ${errorMessage(err)}`),
      problems.length ? h('ul', null, problems.map((p) => h('li', null, h('code', null, p.key), ': ', p.problem))) : null);
  }
}

// ---- priorities ----

function prioritiesEditor(config: ConsoleConfig, reload: () => void): HTMLElement {
  const rows = h('tbody');
  const defaultSelect = h('select', { name: 'default' });
  const share = h('input', { type: 'number', min: '0', max: '0.5', step: '0.01', value: String(config.priorities.lowPriorityShare) });
  const readClasses = () => [...rows.querySelectorAll('tr')].map((tr) => {
    const [name, level] = [...tr.querySelectorAll('input')] as HTMLInputElement[];
    return [name!.value.trim(), level!.value.trim()] as const;
  });
  const refreshDefault = () => {
    const current = defaultSelect.value || config.priorities.default;
    defaultSelect.replaceChildren(...readClasses().filter(([n]) => n).map(([n]) => h('option', { value: n, selected: n === current }, n)));
  };
  const addRow = (name = '', level = '') => {
    const tr = h('tr', null,
      h('td', null, h('input', { type: 'text', 'aria-label': 'Class name', value: name, oninput: refreshDefault })),
      h('td', null, h('input', { type: 'number', 'aria-label': `Level of ${name || 'new class'}`, min: '0', max: '99', value: level })),
      h('td', null, h('button', { type: 'button', class: 'link', onclick: () => { tr.remove(); refreshDefault(); } }, `Remove class ${name}`.trim())));
    rows.append(tr);
  };
  for (const [name, level] of priorityClasses(config)) addRow(name, String(level));
  refreshDefault();
  const { row, status } = saveRow('Save priorities');
  const form = h('form', { 'aria-label': 'Priorities' },
    h('table', { class: 'edit' }, h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Class'), h('th', { scope: 'col' }, 'Level (higher is served first)'), h('th', null))), rows),
    h('button', { type: 'button', onclick: () => addRow() }, 'Add class'),
    h('p', { class: 'muted' }, 'The classes of the shipped defaults (config/default.json) always exist; you can change their levels, and add or remove your own.'),
    h('div', { class: 'inline-fields' },
      field('Default class', defaultSelect, 'for mail no rule classifies'),
      field('Low-priority share', share, 'fraction of deliveries kept for lower classes (0–0.5), so they never starve')),
    row);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const classes: Record<string, number> = {};
    for (const [n, l] of readClasses()) if (n) classes[n] = Number(l);
    void save({ priorities: { classes, default: defaultSelect.value, lowPriorityShare: Number(share.value) } }, status, 'Priorities saved and applied.', reload);
  });
  return sectionBox('Priorities', 'Priority classes and their levels. Mail of a higher level is delivered first.', form);
}

// ---- rules ----

function ruleFieldset(rule: Rule, index: number, classes: [string, number][], list: HTMLElement): HTMLFieldSetElement {
  const t = (name: string, value: string | number | undefined, placeholder = '') =>
    h('input', { type: 'text', name, value: value === undefined ? '' : String(value), placeholder });
  const inputs = {
    name: t('name', rule.name),
    sender: t('sender', rule.match.sender, 'glob, e.g. *@news.example.org'),
    senderDomain: t('senderDomain', rule.match.senderDomain, 'e.g. example.org'),
    recipientDomain: t('recipientDomain', rule.match.recipientDomain, 'e.g. *.example.com'),
    authUser: t('authUser', rule.match.authUser),
    headerName: t('headerName', rule.match.header?.name, 'e.g. Precedence'),
    headerValue: t('headerValue', rule.match.header?.value, 'glob or /regex/i'),
    body: t('body', rule.match.body, 'e.g. *phish.example* or /regex/i'),
    minSize: t('minSize', rule.match.minSize, 'e.g. 5MB'),
    maxSize: t('maxSize', rule.match.maxSize),
    delay: t('delay', typeof rule.delay === 'number' ? durationText(rule.delay) : rule.delay, 'e.g. 10m'),
    reject: t('reject', rule.reject, 'e.g. 550 5.7.1 Not accepted here'),
  };
  const priority = h('select', { name: 'priority' },
    h('option', { value: '' }, '(default class)'),
    classes.map(([n, l]) => h('option', { value: n, selected: rule.priority === n }, `${n} (${l})`)));
  const hold = h('input', { type: 'checkbox', name: 'hold', checked: rule.hold === true });
  const legendText = `Rule ${index + 1}: ${rule.name || 'new rule'}`;
  const fs = h('fieldset', { class: 'rule' },
    h('legend', null, legendText),
    h('div', { class: 'rule-grid' },
      field('Rule name', inputs.name),
      h('p', { class: 'rule-sub' }, 'Matches when every field given matches:'),
      field('Sender', inputs.sender),
      field('Sender domain', inputs.senderDomain),
      field('Recipient domain', inputs.recipientDomain),
      field('Authenticated user', inputs.authUser),
      field('Header name', inputs.headerName),
      field('Header value', inputs.headerValue),
      field('Body contains', inputs.body),
      field('Minimum size', inputs.minSize),
      field('Maximum size', inputs.maxSize),
      h('p', { class: 'rule-sub' }, 'Then:'),
      field('Priority', priority),
      field('Delay', inputs.delay),
      h('div', { class: 'field check' }, h('label', null, hold, ' Hold for an operator')),
      field('Or reject with', inputs.reject)),
    h('div', { class: 'rule-actions' },
      h('button', { type: 'button', onclick: () => { const prev = fs.previousElementSibling; if (prev) list.insertBefore(fs, prev); renumber(list); } }, 'Move up'),
      h('button', { type: 'button', onclick: () => { const next = fs.nextElementSibling; if (next) list.insertBefore(next, fs); renumber(list); } }, 'Move down'),
      h('button', { type: 'button', class: 'danger', onclick: () => { fs.remove(); renumber(list); } }, 'Delete rule')));
  (fs as HTMLFieldSetElement & { readRule: () => Rule }).readRule = () => {
    const v = (k: keyof typeof inputs) => inputs[k].value.trim();
    const match: Rule['match'] = {};
    if (v('sender') || inputs.sender.value === '""') match.sender = v('sender') === '""' ? '' : v('sender');
    if (v('senderDomain')) match.senderDomain = v('senderDomain');
    if (v('recipientDomain')) match.recipientDomain = v('recipientDomain');
    if (v('authUser')) match.authUser = v('authUser');
    if (v('headerName') || v('headerValue')) match.header = { name: v('headerName'), value: v('headerValue') };
    if (v('body')) match.body = v('body');
    const minSize = numberOrText(v('minSize'));
    const maxSize = numberOrText(v('maxSize'));
    if (minSize !== undefined) match.minSize = minSize;
    if (maxSize !== undefined) match.maxSize = maxSize;
    const out: Rule = { name: v('name'), match };
    if (priority.value) out.priority = priority.value;
    const delay = numberOrText(v('delay'));
    if (delay !== undefined) out.delay = delay;
    if (hold.checked) out.hold = true;
    if (v('reject')) out.reject = v('reject');
    return out;
  };
  inputs.name.addEventListener('input', () => renumber(list));
  return fs;
}

function renumber(list: HTMLElement): void {
  [...list.children].forEach((fs, i) => {
    const legend = fs.querySelector('legend');
    const name = (fs.querySelector('input[name=name]') as HTMLInputElement | null)?.value.trim();
    if (legend) legend.textContent = `Rule ${i + 1}: ${name || 'new rule'}`;
  });
}

function readRules(list: HTMLElement): Rule[] {
  return [...list.children].map((fs) => (fs as HTMLElement & { readRule: () => Rule }).readRule());
}

function rulesEditor(config: ConsoleConfig, reload: () => void): HTMLElement {
  const classes = priorityClasses(config);
  const list = h('div', { class: 'rules' });
  config.rules.forEach((r, i) => list.append(ruleFieldset(r, i, classes, list)));
  const { row, status } = saveRow('Save rules');
  const form = h('form', { 'aria-label': 'Rules' },
    config.rules.length === 0 ? h('p', { class: 'muted', id: 'no-rules' }, 'No rules: every mail gets the default class, no delay and no hold. Add a rule to change that.') : null,
    list,
    h('button', {
      type: 'button',
      onclick: () => {
        document.getElementById('no-rules')?.remove();
        const fs = ruleFieldset({ name: '', match: {} }, list.children.length, classes, list);
        list.append(fs);
        (fs.querySelector('input[name=name]') as HTMLInputElement).focus();
      },
    }, 'Add rule'),
    row);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void save({ rules: readRules(list) }, status, 'Rules saved and applied to new mail.', reload);
  });
  return h('div', null,
    sectionBox('Rules', 'Tried in order for each new mail; the first rule that matches sets its priority, delay or hold. Globs use * and ?.', form),
    ruleTester(list));
}

function ruleTester(list: HTMLElement): HTMLElement {
  const sender = h('input', { type: 'text', value: 'someone@example.org' });
  const recipients = h('input', { type: 'text', value: 'user@example.com' });
  const authUser = h('input', { type: 'text' });
  const headers = h('textarea', { rows: 3, placeholder: 'Subject: Hello\nPrecedence: bulk' });
  const size = h('input', { type: 'number', min: '0', value: '2048' });
  const bodyText = h('textarea', { rows: 2, placeholder: 'For rules that match the body' });
  const result = h('div', { class: 'test-result', role: 'status', 'aria-live': 'polite' });
  const run = async (proposed: boolean) => {
    result.textContent = 'Testing…';
    const body: Record<string, unknown> = {
      sender: sender.value.trim(),
      recipients: recipients.value.split(/[\s,;]+/).filter(Boolean),
      headers: headers.value.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => {
        const i = l.indexOf(':');
        return i < 0 ? { name: l, value: '' } : { name: l.slice(0, i).trim(), value: l.slice(i + 1).trim() };
      }),
      size: Number(size.value) || 0,
      ...(bodyText.value ? { body: bodyText.value } : {}),
      ...(authUser.value.trim() ? { authUser: authUser.value.trim() } : {}),
      ...(proposed ? { rules: readRules(list) } : {}),
    };
    try {
      const r = await api<{ rule?: string | null; priority: number; priorityName: string; delayMs: number; hold: boolean; reject?: string | null }>('POST', '/api/rules/test', { body });
      result.replaceChildren(
        h('strong', null, r.rule ? `Matched rule "${r.rule}"` : 'No rule matched (default class)'),
        r.reject ? h('ul', null, h('li', null, `Rejected with: ${r.reject}`)) : h('ul', null,
          h('li', null, `Priority: ${r.priorityName} (${r.priority})`),
          h('li', null, `Delay: ${r.delayMs ? durationText(r.delayMs) : 'none'}`),
          h('li', null, `Hold: ${r.hold ? 'yes' : 'no'}`)));
    } catch (err) {
      result.replaceChildren(h('span', { class: 'form-error' }, `Test failed: ${errorMessage(err)}`));
    }
  };
  return sectionBox('Test the rules', 'Classify a sample envelope to see which rule matches and what follows.',
    h('div', { class: 'inline-fields' },
      field('Test sender', sender),
      field('Test recipients', recipients, 'comma-separated'),
      field('Test authenticated user', authUser),
      field('Test size in bytes', size)),
    field('Test headers', headers, 'one "Name: value" per line'),
    field('Test body', bodyText),
    h('div', { class: 'save-row' },
      h('button', { type: 'button', class: 'primary', onclick: () => void run(false) }, 'Test against the running rules'),
      h('button', { type: 'button', onclick: () => void run(true) }, 'Test against the rules above (unsaved)')),
    result);
}

// ---- limits ----

function limitsRow(domain: string | null, l: Limits): HTMLTableRowElement {
  const who = domain === null ? 'all other domains' : domain || 'the new destination';
  const num = (name: string, v: number | undefined, label: string) => h('input', { type: 'number', min: '1', name, value: v === undefined ? '' : String(v), 'aria-label': `${label} for ${who}` });
  const tr = h('tr', { 'data-default': domain === null ? 'yes' : 'no' },
    h('td', null, domain === null ? h('strong', null, 'All other domains') : h('input', { type: 'text', name: 'domain', value: domain, 'aria-label': 'Destination domain', placeholder: 'example.com' })),
    h('td', null, num('connections', l.connections, 'Connections')),
    h('td', null, num('initialConnections', l.initialConnections, 'Initial concurrency')),
    h('td', null, num('messagesPerConnection', l.messagesPerConnection, 'Messages per connection')),
    h('td', null, h('input', { type: 'text', name: 'rate', value: l.rate ?? '', placeholder: 'e.g. 10/s, 600/m', 'aria-label': `Rate for ${who}` })),
    h('td', null, domain === null ? null : h('button', { type: 'button', class: 'link', onclick: () => tr.remove() }, `Remove ${domain || 'row'}`)));
  return tr;
}

function readLimitsRow(tr: Element): Limits {
  const get = (n: string) => (tr.querySelector(`input[name=${n}]`) as HTMLInputElement).value.trim();
  const out: Limits = {};
  if (get('connections')) out.connections = Number(get('connections'));
  if (get('initialConnections')) out.initialConnections = Number(get('initialConnections'));
  if (get('messagesPerConnection')) out.messagesPerConnection = Number(get('messagesPerConnection'));
  out.rate = get('rate') || null;
  return out;
}

function limitsEditor(config: ConsoleConfig, reload: () => void): HTMLElement {
  const rows = h('tbody');
  const limits = config.delivery.limits;
  rows.append(limitsRow(null, limits.default));
  for (const [d, l] of Object.entries(limits.domains ?? {})) rows.append(limitsRow(d, l));
  const { row, status } = saveRow('Save limits');
  const form = h('form', { 'aria-label': 'Delivery limits' },
    h('table', { class: 'edit' },
      h('thead', null, h('tr', null, ['Destination', 'Connections', 'Starting connections', 'Messages per connection', 'Rate', ''].map((t) => h('th', { scope: 'col' }, t)))),
      rows),
    h('button', { type: 'button', onclick: () => rows.append(limitsRow('', {})) }, 'Add destination'),
    row);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const trs = [...rows.querySelectorAll('tr')];
    const domains: Record<string, Limits> = {};
    for (const tr of trs.slice(1)) {
      const d = (tr.querySelector('input[name=domain]') as HTMLInputElement).value.trim();
      if (d) domains[d] = readLimitsRow(tr);
    }
    void save({ delivery: { limits: { default: readLimitsRow(trs[0]!), domains } } }, status, 'Delivery limits saved and applied.', reload);
  });
  return sectionBox('Per-destination limits', 'Concurrent connections, messages per connection and sending rate, per destination domain. Empty rate means no rate limit. A destination starts at its starting connections and gains one for about every n mails delivered at n connections, up to its limit; failed connections take them away again (Postfix\'s concurrency feedback).', form);
}

// ---- paused delivery ----

function pausedEditor(config: ConsoleConfig, reload: () => void): HTMLElement {
  const paused = config.delivery.paused ?? [];
  const status = h('div', { class: 'form-error', role: 'alert' });
  const domain = h('input', { type: 'text', name: 'pause-domain', placeholder: 'example.com, or * for all' });
  const put = (next: string[], done: string) => void save({ delivery: { paused: next } }, status, done, reload);
  const list = paused.length
    ? h('ul', { class: 'paused-list', 'aria-label': 'Paused domains' }, paused.map((d) => h('li', null,
      h('code', null, d), ' ',
      h('button', { type: 'button', class: 'link', onclick: () => put(paused.filter((x) => x !== d), `Delivery to ${d} resumed.`) }, `Resume ${d}`))))
    : h('p', { class: 'muted' }, 'No delivery is paused.');
  const form = h('form', { 'aria-label': 'Pause delivery' },
    list,
    h('div', { class: 'inline-fields' }, field('Domain to pause', domain)),
    h('div', { class: 'save-row' }, h('button', { type: 'submit', class: 'primary' }, 'Pause delivery'), status));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = domain.value.trim().toLowerCase();
    if (d) put([...new Set([...paused, d])], `Delivery to ${d} paused.`);
  });
  return sectionBox('Paused delivery',
    'Mail to a paused domain is deferred at each attempt without a connection, and retried with the usual backoff; resuming lets its next retry go (or retry it now from the queue).',
    form);
}

// ---- routes (delivery.routes) ----

function routesEditor(config: ConsoleConfig, reload: () => void): HTMLElement {
  const routes = config.delivery.routes ?? {};
  const status = h('div', { class: 'form-error', role: 'alert' });
  const domain = h('input', { type: 'text', name: 'route-domain', placeholder: 'example.com' });
  const host = h('input', { type: 'text', name: 'route-host', placeholder: 'relay.example.net:25' });
  const put = (next: Record<string, string>, done: string) => void save({ delivery: { routes: next } }, status, done, reload);
  const entries = Object.entries(routes);
  const list = entries.length
    ? h('ul', { class: 'paused-list', 'aria-label': 'Routes' }, entries.map(([d, to]) => h('li', null,
      h('code', null, d), ' → ', h('code', null, to), ' ',
      h('button', {
        type: 'button', class: 'link',
        onclick: () => put(Object.fromEntries(entries.filter(([x]) => x !== d)), `Mail for ${d} goes to its MX again.`),
      }, `Remove route for ${d}`))))
    : h('p', { class: 'muted' }, 'No routes: every domain is delivered to its MX.');
  const form = h('form', { 'aria-label': 'Add a route' },
    list,
    h('div', { class: 'inline-fields' }, field('Recipient domain', domain), field('Deliver to (host:port)', host)),
    h('div', { class: 'save-row' }, h('button', { type: 'submit', class: 'primary' }, 'Add route'), status));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = domain.value.trim().toLowerCase();
    const to = host.value.trim();
    if (!d || !to) {
      status.textContent = 'Give the domain and the host to deliver to.';
      return;
    }
    put({ ...routes, [d]: to }, `Mail for ${d} now goes to ${to}.`);
  });
  return sectionBox('Routes',
    'Mail for a routed domain is delivered to the host given instead of the domain\'s MX, from its next attempt on (a relay, or another way around a broken destination).',
    form);
}

// ---- blocked at the door (relay.reject) ----

const REJECT_KINDS = [
  ['sender', 'Sender address', '*@spam.example'],
  ['senderDomain', 'Sender domain', '*.spam.example'],
  ['client', 'Client network', '198.51.100.0/24'],
  ['recipient', 'Recipient address', 'gone@example.org'],
  ['recipientDomain', 'Recipient domain', 'example.org'],
] as const;

function describeReject(e: RejectEntry): string {
  const parts = REJECT_KINDS.flatMap(([key, label]) => {
    const v = e[key];
    if (v === undefined) return [];
    return [`${label.toLowerCase()} ${Array.isArray(v) ? v.join(', ') : v === '' ? '<> (bounces)' : v}`];
  });
  return parts.join(' and ') + (e.reply ? ` — answered "${e.reply}"` : '');
}

function rejectEditor(config: ConsoleConfig, reload: () => void): HTMLElement {
  const entries = config.relay?.reject ?? [];
  const status = h('div', { class: 'form-error', role: 'alert' });
  const kind = h('select', { name: 'reject-kind' }, REJECT_KINDS.map(([key, label]) => h('option', { value: key }, label)));
  const value = h('input', { type: 'text', name: 'reject-value', placeholder: REJECT_KINDS[0][2] });
  const reply = h('input', { type: 'text', name: 'reject-reply', placeholder: '554 5.7.1 … Access denied' });
  kind.addEventListener('change', () => { value.placeholder = REJECT_KINDS.find(([k]) => k === kind.value)?.[2] ?? ''; });
  const put = (next: RejectEntry[], done: string) => void save({ relay: { reject: next } }, status, done, reload);
  const list = entries.length
    ? h('ol', { class: 'paused-list', 'aria-label': 'Blocked at the door' }, entries.map((e, i) => h('li', null,
      describeReject(e), ' ',
      h('button', { type: 'button', class: 'link', onclick: () => put(entries.filter((_, j) => j !== i), `Entry ${i + 1} unblocked.`) }, `Unblock ${i + 1}`))))
    : h('p', { class: 'muted' }, 'Nothing is blocked.');
  const form = h('form', { 'aria-label': 'Block at the door' },
    list,
    h('div', { class: 'inline-fields' }, field('Block by', kind), field('Value', value), field('Reply (optional)', reply)),
    h('div', { class: 'save-row' }, h('button', { type: 'submit', class: 'primary' }, 'Block'), status));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = value.value.trim();
    const key = kind.value as (typeof REJECT_KINDS)[number][0];
    const entry: RejectEntry = key === 'client' ? { client: [v] } : { [key]: v };
    if (reply.value.trim()) entry.reply = reply.value.trim();
    put([...entries, entry], `Blocked: ${describeReject(entry)}.`);
  });
  return sectionBox('Blocked at the door',
    'Clients, senders and recipients refused at once (relay.reject): a client or sender at MAIL FROM, a recipient at RCPT, every client included, trusted and authenticated ones too. Globs use * and ?.',
    form);
}

// ---- the door's DNS checks (smtp.dnsbl, smtp.helo, smtp.spf, relay.checkSenderDomain) ----

const SPF_RESULTS = [
  ['fail', 'fail (550 5.7.23)'],
  ['softfail', 'softfail (550 5.7.23)'],
  ['permerror', 'permerror: a broken SPF record (550 5.7.24)'],
  ['temperror', 'temperror: DNS trouble (451 4.7.24, the sender retries)'],
] as const;

function dnsblRow(z: DnsblZone | null): HTMLTableRowElement {
  const zone = z?.zone ?? '';
  const tr = h('tr', null,
    h('td', null, h('input', { type: 'text', name: 'zone', value: zone, placeholder: 'zen.example.org', 'aria-label': 'Blocklist zone' })),
    h('td', null, h('input', { type: 'text', name: 'answers', value: z?.answers?.join(', ') ?? '', placeholder: 'any answer lists', 'aria-label': `Listing answers of ${zone || 'the new zone'}` })),
    h('td', null, h('button', { type: 'button', class: 'link', onclick: () => tr.remove() }, `Remove ${zone || 'row'}`)));
  return tr;
}

function checkbox(name: string, checked: boolean, label: string, hint?: string): { box: HTMLInputElement; el: HTMLElement } {
  const box = h('input', { type: 'checkbox', name, checked });
  return { box, el: h('div', { class: 'field check' }, h('label', null, box, ' ', label), hint ? h('span', { class: 'hint muted' }, hint) : null) };
}

function doorChecksEditor(config: ConsoleConfig, reload: () => void): HTMLElement {
  const rows = h('tbody');
  for (const z of config.smtp.dnsbl) rows.append(dnsblRow(z));
  const helo = {
    rejectInvalid: checkbox('rejectInvalid', config.smtp.helo.rejectInvalid, 'Refuse a HELO name that is not a host name', 'reject_invalid_helo_hostname: 501 5.5.2'),
    rejectNonFqdn: checkbox('rejectNonFqdn', config.smtp.helo.rejectNonFqdn, 'Refuse a HELO name that is not fully qualified', 'reject_non_fqdn_helo_hostname: 504 5.5.2'),
    rejectUnknown: checkbox('rejectUnknown', config.smtp.helo.rejectUnknown, 'Defer a HELO name with no address and no MX', 'reject_unknown_helo_hostname: 450 4.7.1'),
  };
  const spfCheck = checkbox('spfCheck', config.smtp.spf.check, 'Check SPF at MAIL FROM', 'every mail checked gets a Received-SPF header');
  const spfReject = SPF_RESULTS.map(([result, label]) => ({ result, ...checkbox(`spf-${result}`, config.smtp.spf.reject.includes(result), `Refuse ${label}`) }));
  const senderDomain = checkbox('checkSenderDomain', config.relay.checkSenderDomain,
    'Refuse senders whose domain cannot receive mail', 'reject_unknown_sender_domain: 450 4.1.8; a null MX 550 5.7.27');
  const { row, status } = saveRow('Save checks');
  const form = h('form', { 'aria-label': 'Checks at the door' },
    h('fieldset', null, h('legend', null, 'DNS blocklists (smtp.dnsbl)'),
      h('table', { class: 'edit' },
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Zone'), h('th', { scope: 'col' }, 'Only these answers list (comma-separated)'), h('th', null))),
        rows),
      h('button', { type: 'button', onclick: () => rows.append(dnsblRow(null)) }, 'Add blocklist'),
      h('p', { class: 'muted' }, 'A listed client gets 554 5.7.1 at RCPT. A list that does not answer lists nobody.')),
    h('fieldset', null, h('legend', null, 'HELO name (smtp.helo)'), helo.rejectInvalid.el, helo.rejectNonFqdn.el, helo.rejectUnknown.el),
    h('fieldset', null, h('legend', null, 'SPF (smtp.spf)'), spfCheck.el, h('div', { class: 'indent' }, spfReject.map((r) => r.el))),
    h('fieldset', null, h('legend', null, 'Sender domain (relay.checkSenderDomain)'), senderDomain.el),
    row);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const dnsbl = [...rows.querySelectorAll('tr')].flatMap((tr): DnsblZone[] => {
      const zone = (tr.querySelector('input[name=zone]') as HTMLInputElement).value.trim();
      const answers = (tr.querySelector('input[name=answers]') as HTMLInputElement).value.split(/[\s,;]+/).filter(Boolean);
      return zone ? [{ zone, answers: answers.length ? answers : null }] : [];
    });
    const next = {
      dnsbl,
      helo: { rejectInvalid: helo.rejectInvalid.box.checked, rejectNonFqdn: helo.rejectNonFqdn.box.checked, rejectUnknown: helo.rejectUnknown.box.checked },
      spf: { check: spfCheck.box.checked, reject: spfReject.filter((r) => r.box.checked).map((r) => r.result) },
    };
    // Only the sections that changed: the overlay file (and a cluster's shared settings) get no more than was meant.
    const smtp: Record<string, unknown> = {};
    for (const key of ['dnsbl', 'helo', 'spf'] as const) if (JSON.stringify(next[key]) !== JSON.stringify(config.smtp[key])) smtp[key] = next[key];
    const patch: Record<string, unknown> = {};
    if (Object.keys(smtp).length) patch.smtp = smtp;
    if (senderDomain.box.checked !== config.relay.checkSenderDomain) patch.relay = { checkSenderDomain: senderDomain.box.checked };
    if (!Object.keys(patch).length) {
      status.textContent = 'Nothing changed.';
      return;
    }
    void save(patch, status, 'Checks at the door saved; they apply to sessions opened from now on.', reload);
  });
  return sectionBox('Checks at the door',
    'DNS checks of clients outside relay.networks that did not authenticate. Changes apply to SMTP sessions opened from now on; what they refuse shows on the Refusals page.',
    form);
}

export function renderConfig(main: HTMLElement): Cleanup {
  mount(main, h('div', { class: 'page-head' }, h('h1', null, 'Configuration')), loading('Loading the running configuration…'));
  const load = async () => {
    try {
      const config = await runningConfig(true);
      mount(main,
        h('div', { class: 'page-head' }, h('h1', null, 'Configuration'),
          h('p', { class: 'summary muted' }, 'Changes are validated, saved to ', config.file ? h('code', null, config.file) : 'the configuration file', ' and applied at once, without a restart.')),
        prioritiesEditor(config, () => void load()),
        rulesEditor(config, () => void load()),
        limitsEditor(config, () => void load()),
        pausedEditor(config, () => void load()),
        routesEditor(config, () => void load()),
        rejectEditor(config, () => void load()),
        doorChecksEditor(config, () => void load()));
    } catch (err) {
      mount(main, h('div', { class: 'page-head' }, h('h1', null, 'Configuration')), errorState('Could not load the configuration', err, () => void load()));
    }
  };
  void load();
}
