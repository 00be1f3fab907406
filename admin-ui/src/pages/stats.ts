/**
 * Statistics: counts by state, queue depth over time (the server's own history of the last day
 * from GET /api/stats/history, then this page's samples of GET /api/stats every few seconds),
 * the qshape age-by-destination heatmap, priorities, top destinations, the ingress/delivery
 * rates the server reports, the destinations this node has suspended (dead: unreachable), and
 * what remote servers answered the deferred and bounced recipients of the last hour.
 */
import { api, LIVE_STATES, MAIL_STATES, type ConsoleConfig, type DepthHistoryPage, type ReplyDigestPage, type Stats } from '../api';
import { barChart, heatmap, lineChart, type Series } from '../charts';
import { h, mount, type Child } from '../dom';
import { ageText, absoluteTime, replyText, timeEl } from '../format';
import { byKindText, repliesTable } from '../replies';
import { errorState, loading, priorityLabel, runningConfig } from '../ui';
import type { Cleanup } from '../main';

const INTERVALS_S = [1, 5, 15, 60];
const DEFAULT_INTERVAL_S = 5;
const MAX_SAMPLES = 9_000; // the server's day (8,640 at its 10 s) plus this tab's own

interface Sample { at: number; byState: Record<string, number>; rates: Record<string, number> }
const samples: Sample[] = [];

/** The numeric rates, flattened: { ingress: { perMinute: 3 } } → { "ingress perMinute": 3 }. */
export function flattenRates(rates: object | undefined, prefix = ''): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(rates ?? {})) {
    const key = prefix ? `${prefix} ${k}` : k;
    if (typeof v === 'number' && Number.isFinite(v)) out[key] = v;
    else if (v && typeof v === 'object' && !Array.isArray(v)) Object.assign(out, flattenRates(v as object, key));
  }
  return out;
}

/** "acceptedPerMinute" → "accepted" (the chart's unit says per minute). */
function rateLabel(key: string): string {
  return key.replace(/PerMinute$/, '').replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase();
}

/** What remote servers answered, most recipients first (pflogsumm's deferral and bounce detail). */
function replyDetail(page: ReplyDigestPage | null): HTMLElement {
  const box = (...children: Child[]) => h('section', { class: 'table-area replies', 'aria-label': 'Deferrals and bounces by reply' },
    h('h2', null, 'Deferrals and bounces by reply (last hour)'), ...children);
  if (!page || page.rows.length === 0) return box(h('p', { class: 'muted' }, 'No recipient was deferred or bounced in the last hour.'));
  return box(
    h('p', { class: 'muted' }, `${page.total.toLocaleString()} recipients on this node; replies that differ only in addresses and ids (masked as <ip>, <address>, #) are counted together.`
      + (page.notItemised ? ` ${page.notItemised.toLocaleString()} more were counted without their reply (too many different replies).` : '')),
    h('p', { class: 'reply-kinds' }, 'By kind: ', byKindText(page)),
    repliesTable('Deferrals and bounces by reply', page.rows, { withDestination: true }));
}

export function renderStats(main: HTMLElement, params: URLSearchParams): Cleanup {
  let config: ConsoleConfig | null = null;
  let last: Stats | null = null;
  let replies: ReplyDigestPage | null = null;
  let failed: unknown = null;
  const asked = Number(params.get('every'));
  const intervalS = INTERVALS_S.includes(asked) ? asked : DEFAULT_INTERVAL_S;
  // The head is built once, so the interval picker keeps focus while the body refreshes.
  const every = h('select', {
    id: 'sample-every',
    onchange: () => { location.hash = `#/stats?every=${every.value}`; },
  }, INTERVALS_S.map((n) => h('option', { value: String(n), selected: n === intervalS }, `${n} s`)));
  const lastAt = h('span', { class: 'muted' });
  const body = h('div', null, loading('Loading statistics…'));
  mount(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Statistics'),
      h('p', { class: 'summary' }, h('label', { for: 'sample-every' }, 'Sample every '), every, ' ', lastAt)),
    body);

  function render(): void {
    lastAt.textContent = last?.at ? `· last ${new Date(last.at).toLocaleTimeString()}${last.node ? ` from node ${last.node}` : ''}` : '';
    if (!last) {
      mount(body, errorState('Could not load statistics', failed, () => void sample()));
      return;
    }
    const st = last;
    const live = LIVE_STATES.reduce((n, k) => n + (st.byState[k] ?? 0), 0);
    const cards = h('ul', { class: 'cards', 'aria-label': 'Mail by state' },
      MAIL_STATES.map((state) => h('li', { class: `stat state-${state}` }, h('span', { class: 'stat-value' }, (st.byState[state] ?? 0).toLocaleString()), h('span', { class: 'stat-label' }, state))),
      h('li', { class: 'stat' }, h('span', { class: 'stat-value' }, st.oldestReceivedAt ? ageText(Date.now() - st.oldestReceivedAt) : '—'),
        h('span', { class: 'stat-label', title: st.oldestReceivedAt ? absoluteTime(st.oldestReceivedAt) : 'No mail is waiting' }, 'oldest in queue')));
    const depth = lineChart({
      title: 'Queue depth over time by state',
      unit: 'mails',
      empty: 'Collecting samples…',
      series: LIVE_STATES.map((state): Series => ({ name: state, colorClass: `c-${state}`, points: samples.map((x) => [x.at, x.byState[state] ?? 0]) })),
    });
    const rateKeys = [...new Set(samples.flatMap((x) => Object.keys(x.rates)))];
    const rates = rateKeys.length
      ? lineChart({
        title: 'Ingress and delivery rates (mails per minute, over the last minute)',
        unit: rateKeys.every((k) => k.endsWith('PerMinute')) ? 'per minute' : 'rate',
        empty: 'Collecting samples…',
        series: rateKeys.map((k, i): Series => ({ name: rateLabel(k), colorClass: `c-${i % 6}`, points: samples.filter((x) => k in x.rates).map((x) => [x.at, x.rates[k]!]) })),
      })
      : h('figure', { class: 'chart-box' }, h('figcaption', null, 'Ingress and delivery rates'), h('p', { class: 'muted' }, 'The server reports no rates yet. They appear once mail is accepted or delivered.'));
    const byPriority = barChart({
      title: 'Waiting mail by priority',
      empty: 'No mail is waiting.',
      rows: Object.entries(st.byPriority ?? {}).map(([lvl, n]) => ({ label: priorityLabel(Number(lvl), config), value: n, level: Number(lvl) }))
        .sort((a, b) => b.level - a.level).map(({ label, value }) => ({ label, value })),
    });
    const top = barChart({
      title: 'Top destinations (waiting mail)',
      empty: 'No mail is waiting for any destination.',
      rows: (st.topDestinations ?? []).map((d) => ({ label: d.domain, value: d.count, colorClass: 'c-queued' })),
    });
    const qshape = heatmap({
      title: 'Age by destination (qshape)',
      bucketsMinutes: st.ageByDestination?.bucketsMinutes ?? [],
      rows: st.ageByDestination?.rows ?? [],
      empty: 'No mail is waiting, so there is nothing to shape.',
    });
    const suspended = st.suspendedDestinations ?? [];
    const dead = suspended.length
      ? h('section', { class: 'table-area suspended', 'aria-label': 'Suspended destinations' },
        h('h2', null, 'Suspended destinations'),
        h('p', { class: 'muted' }, "No host of these could be reached: this node defers their mail without connecting until they resume. An operator's retry now of one of their mails probes at once."),
        h('table', { 'aria-label': 'Suspended destinations' },
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Domains'), h('th', { scope: 'col' }, 'Hosts'), h('th', { scope: 'col' }, 'Resumes'), h('th', { scope: 'col' }, 'Last reply'))),
          h('tbody', null, suspended.map((d) => h('tr', null,
            h('td', null, d.domains.map((dom, i) => [i ? ', ' : '', h('a', { href: `#/destinations/${encodeURIComponent(dom)}` }, dom)])), h('td', null, d.destination), h('td', null, timeEl(d.until)), h('td', { class: 'reply' }, replyText(d.reply)))))))
      : null;
    const delivering = st.deliveringNow ?? [];
    const now = delivering.length
      ? h('section', { class: 'table-area delivering', 'aria-label': 'Delivering now' },
        h('h2', null, `Delivering now (node ${st.node})`),
        h('p', { class: 'muted' }, 'Destinations this node has connections open to, or mail waiting for one. Allowed: the connections the concurrency feedback lets it open now, which rises with each mail delivered and falls with each failed connection, up to the limit.'),
        h('table', { 'aria-label': 'Delivering now' },
          h('thead', null, h('tr', null, ['Domains', 'Hosts', 'Open', 'Allowed', 'Limit', 'Waiting'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', null, delivering.map((d) => h('tr', null,
            h('td', null, d.domains.map((dom, i) => [i ? ', ' : '', h('a', { href: `#/destinations/${encodeURIComponent(dom)}` }, dom)])),
            h('td', null, d.destination),
            h('td', { class: 'num' }, String(d.open)),
            h('td', { class: 'num' }, String(d.allowed)),
            h('td', { class: 'num' }, String(d.limit)),
            h('td', { class: 'num' }, d.waiting.toLocaleString()))))))
      : null;
    mount(body,
      failed ? errorState('The last sample failed; showing the one before', failed) : null,
      cards,
      h('p', { class: 'muted' }, `${live.toLocaleString()} mails waiting (queued, active or held).`),
      now,
      dead,
      replyDetail(replies),
      h('div', { class: 'grid2' }, depth, rates),
      qshape,
      h('div', { class: 'grid2' }, byPriority, top));
  }

  async function sample(): Promise<void> {
    try {
      const [st, rd] = await Promise.all([api<Stats>('GET', '/api/stats'), api<ReplyDigestPage>('GET', '/api/stats/replies?limit=15')]);
      last = st;
      replies = rd;
      failed = null;
      samples.push({ at: st.at ?? Date.now(), byState: { ...st.byState }, rates: flattenRates(st.rates) });
      if (samples.length > MAX_SAMPLES) samples.splice(0, samples.length - MAX_SAMPLES);
    } catch (err) {
      failed = err;
    }
    render();
  }

  /** The server's history before this tab's first sample: the chart shows the last day at once. */
  async function backfill(): Promise<void> {
    try {
      const history = await api<DepthHistoryPage>('GET', '/api/stats/history');
      const before = samples[0]?.at ?? Infinity;
      const older = history.samples.filter((x) => x.at < before).map((x) => ({ at: x.at, byState: { ...x.byState }, rates: flattenRates(x.rates) }));
      samples.unshift(...older);
      if (samples.length > MAX_SAMPLES) samples.splice(0, samples.length - MAX_SAMPLES);
      if (last) render();
    } catch {
      // Without history the chart fills from this tab's samples, as before.
    }
  }

  runningConfig().then((c) => { config = c; if (last) render(); }).catch(() => {});
  void backfill().then(() => sample());
  const timer = setInterval(() => void sample(), intervalS * 1000);
  return () => clearInterval(timer);
}
