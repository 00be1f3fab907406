/**
 * One destination (recipient domain) at a glance, and steered from one place: where its mail goes
 * now (GET /api/destinations/: hosts in order, TLS, MTA-STS, or why nowhere), its waiting mail by
 * state, whether this node has suspended it (dead) and why, what its servers answered in the last
 * hour (GET /api/stats/replies?domain=), its limits, route and pause; and the actions an operator
 * takes on a troubled destination: pause or resume delivery, retry all its mail now, hold or
 * release all of it, give all of it up with a DSN. Bulk actions ask the server for the count first
 * (dryRun) and confirm. Everything a remote wrote is shown as text.
 */
import { api, type BulkAction, type BrowsePage, type ConsoleConfig, type DestinationView, type ReplyDigestPage, type Stats } from '../api';
import { bulkByFilter } from '../bulk';
import { h, mount } from '../dom';
import { replyText, timeEl } from '../format';
import { repliesTable } from '../replies';
import { errorMessage, errorState, forgetConfig, loading, notify, runningConfig } from '../ui';
import type { Cleanup } from '../main';

const COUNTED = ['queued', 'active', 'held'] as const;

interface Facts {
  counts: Record<(typeof COUNTED)[number], { count: number; exact: boolean }>;
  stats: Stats;
  replies: ReplyDigestPage;
  config: ConsoleConfig;
  /** Where its mail goes now, or why that could not be asked. */
  where: DestinationView | { error: string };
}

const VIA: Record<DestinationView['via'], string> = {
  mx: 'its MX hosts', 'implicit-mx': 'its own address (it has no MX)', route: 'a route (delivery.routes)', smarthost: 'the smarthost', none: 'nowhere now',
};

function whereSection(where: Facts['where']): HTMLElement {
  const box = (...children: (Node | string | null)[]) => h('section', { class: 'card', 'aria-label': 'Where its mail goes now' }, h('h2', null, 'Where its mail goes now'), ...children);
  if ('error' in where) return box(h('p', { class: 'muted' }, `Could not be asked: ${where.error}`));
  if (where.failure) {
    return box(h('p', { class: 'warn' }, where.failure.permanent ? 'Its mail would bounce: ' : 'Its mail would be deferred: ', h('span', { class: 'reply' }, replyText(where.failure.reply))));
  }
  const tls = where.mtaSts ? 'TLS required, certificate verified for the MX name (its MTA-STS policy, enforce)'
    : where.tlsPolicy ? `TLS: "${where.tlsPolicy}" (delivery.tls.policy)` : 'TLS as configured for every domain (delivery.tls)';
  return box(
    h('p', null, `Through ${VIA[where.via]}, tried in this order; ${tls}.`),
    h('ol', { class: 'hosts', 'aria-label': 'Hosts in order' }, where.hosts.map((x) => h('li', null,
      h('code', null, `${x.host}:${x.port}`), x.address && x.address !== x.host ? ` (${x.address})` : '', x.preference !== undefined ? ` preference ${x.preference}` : ''))),
    where.fallbackRelay?.length
      ? h('p', null, 'Then, if none of them can be used, the fallback relay (delivery.fallbackRelay): ', where.fallbackRelay.map((x, i) => [i ? ', ' : '', h('code', null, `${x.host}:${x.port}`)]), '.')
      : null);
}

async function countOf(domain: string, state: string): Promise<{ count: number; exact: boolean }> {
  const page = await api<BrowsePage>('GET', `/api/messages?domain=${encodeURIComponent(domain)}&state=${state}&limit=1`);
  return page.total;
}

export function renderDestination(main: HTMLElement, _params: URLSearchParams, rest: string[]): Cleanup {
  const domain = (rest[0] ?? '').toLowerCase();
  const head = h('div', { class: 'page-head' }, h('h1', null, 'Destination ', h('code', null, domain)),
    h('p', { class: 'summary' }, h('a', { href: `#/queue?domain=${encodeURIComponent(domain)}` }, 'Show its mail in the queue')));
  mount(main, head, loading('Loading the destination…'));

  async function bulk(action: BulkAction, state?: string): Promise<void> {
    await bulkByFilter({ domain, ...(state ? { state } : {}) }, action, { which: `to ${domain}${state ? ` (${state})` : ''}` });
    void load();
  }

  async function setPaused(paused: boolean, current: string[]): Promise<void> {
    try {
      const next = paused ? [...new Set([...current, domain])] : current.filter((d) => d !== domain);
      await api('PUT', '/api/config', { body: { delivery: { paused: next } } });
      forgetConfig();
      notify(paused ? `Delivery to ${domain} paused.` : `Delivery to ${domain} resumed.`);
    } catch (err) {
      notify(`Failed: ${errorMessage(err)}`, 'error');
    }
    void load();
  }

  /** This node's connections to it now, and where the concurrency feedback has them. */
  function connectionsFact(c: DestinationView['connections'], name: string): HTMLElement {
    if (!c) return h('li', null, 'No connections on this node: it had no mail for this destination lately.');
    const others = c.domains.filter((d) => d !== name);
    return h('li', null,
      `Connections on this node: ${c.open} open, ${c.allowed} allowed now of its limit of ${c.limit}`,
      c.allowed < c.limit ? ' (the concurrency feedback: one more for about every ' + c.allowed + ' mails delivered, one fewer for about as many failed connections)' : '',
      `; ${c.waiting} waiting for one.`,
      others.length ? [' Shared with ', others.join(', '), ' (the same hosts).'] : '');
  }

  function render(f: Facts): void {
    const { config, stats, replies } = f;
    const paused = config.delivery.paused ?? [];
    const pausedHere = paused.includes(domain);
    const pausedAll = paused.includes('*');
    const suspended = (stats.suspendedDestinations ?? []).filter((d) => d.domains.includes(domain));
    // Its own limits over the default ones, key by key (as the scheduler reads them).
    const limits = { ...config.delivery.limits.default, ...config.delivery.limits.domains?.[domain] };
    const route = config.delivery.routes?.[domain];
    const waiting = COUNTED.reduce((n, s) => n + f.counts[s].count, 0);
    const count = (s: (typeof COUNTED)[number]) => `${f.counts[s].exact ? '' : 'about '}${f.counts[s].count.toLocaleString()}`;
    mount(main, head,
      whereSection(f.where),
      h('ul', { class: 'cards', 'aria-label': 'Waiting mail by state' },
        COUNTED.map((s) => h('li', { class: `stat state-${s}` }, h('span', { class: 'stat-value' }, count(s)), h('span', { class: 'stat-label' }, s)))),
      h('section', { class: 'card', 'aria-label': 'Delivery' },
        h('h2', null, 'Delivery'),
        h('ul', { class: 'facts' },
          h('li', null, pausedHere || pausedAll
            ? h('strong', null, `Paused by the operator${pausedAll && !pausedHere ? ' (all domains are paused)' : ''}: its mail is deferred without a connection.`)
            : 'Not paused.'),
          suspended.length
            ? suspended.map((d) => h('li', { class: 'warn' }, 'Suspended by this node (it tries again ', timeEl(d.until), '): no host of ', h('code', null, d.destination), ' could be reached; last reply ', h('span', { class: 'reply' }, replyText(d.reply)), '.'))
            : h('li', null, 'Not suspended on this node.'),
          h('li', null, route ? ['Routed to ', h('code', null, route), ' (delivery.routes) instead of its MX.'] : 'Delivered to its MX.'),
          connectionsFact('error' in f.where ? undefined : f.where.connections, domain),
          h('li', null, `Limits: ${limits.connections ?? 'default'} connections${limits.initialConnections ? ` (starting at ${Math.min(limits.initialConnections, limits.connections ?? Infinity)})` : ''}, ${limits.messagesPerConnection ?? 'default'} mails a connection, ${limits.rate ? `at most ${limits.rate}` : 'no rate limit'}${config.delivery.limits.domains?.[domain] ? ' (its own)' : ' (the default)'}.`)),
        h('div', { class: 'actions', role: 'toolbar', 'aria-label': 'Actions on this destination' },
          pausedHere
            ? h('button', { type: 'button', class: 'primary', onclick: () => void setPaused(false, paused) }, 'Resume delivery')
            : h('button', { type: 'button', onclick: () => void setPaused(true, paused) }, 'Pause delivery'),
          h('button', { type: 'button', disabled: f.counts.queued.count === 0, onclick: () => void bulk('retry', 'queued') }, 'Retry all now'),
          h('button', { type: 'button', disabled: waiting - f.counts.held.count === 0, onclick: () => void bulk('hold') }, 'Hold all'),
          h('button', { type: 'button', disabled: f.counts.held.count === 0, onclick: () => void bulk('release', 'held') }, 'Release all'),
          h('button', { type: 'button', class: 'danger', disabled: waiting === 0, onclick: () => void bulk('bounce') }, 'Bounce all'))),
      h('section', { class: 'table-area replies', 'aria-label': 'Replies' },
        h('h2', null, `What its servers answered (last hour, node ${stats.node})`),
        replies.rows.length === 0
          ? h('p', { class: 'muted' }, 'No recipient was deferred or bounced in the last hour.')
          : repliesTable(`Replies from ${domain}`, replies.rows, { withDestination: false })));
  }

  async function load(): Promise<void> {
    try {
      const [queued, active, held, stats, replies, config, where] = await Promise.all([
        countOf(domain, 'queued'), countOf(domain, 'active'), countOf(domain, 'held'),
        api<Stats>('GET', '/api/stats?topN=1'),
        api<ReplyDigestPage>('GET', `/api/stats/replies?domain=${encodeURIComponent(domain)}&limit=20`),
        runningConfig(true),
        api<DestinationView>('GET', `/api/destinations/${encodeURIComponent(domain)}`).catch((err: unknown) => ({ error: errorMessage(err) })),
      ]);
      render({ counts: { queued, active, held }, stats, replies, config, where });
    } catch (err) {
      mount(main, head, errorState('Could not load the destination', err, () => void load()));
    }
  }
  void load();
}
