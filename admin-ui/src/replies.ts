/** The table of deferrals and bounces by reply (GET /api/stats/replies), on the Statistics page and a destination's page. */
import type { ReplyDigestPage, ReplyDigestRow } from './api';
import { h } from './dom';
import { replyText, stateBadge, timeEl } from './format';

/** One row per reply: outcome, the destination (unless the table is one destination's), the masked reply (the last as sent on hover), its kind, recipients, and the last mail. */
export function repliesTable(label: string, rows: ReplyDigestRow[], o: { withDestination: boolean }): HTMLTableElement {
  const heads = ['Outcome', ...(o.withDestination ? ['Destination'] : []), 'Reply', 'Kind', 'Recipients', 'Last'];
  return h('table', { 'aria-label': label },
    h('thead', null, h('tr', null, heads.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', null, rows.map((r) => h('tr', null,
      h('td', null, stateBadge(r.outcome)),
      o.withDestination
        ? h('td', null, h('a', { href: `#/destinations/${encodeURIComponent(r.domain)}`, title: `The destination ${r.domain}: its mail, replies and actions` }, r.domain))
        : null,
      h('td', { class: 'reply', title: `Last as sent: ${r.example}` }, replyText(r.reply)),
      h('td', null, h('span', { class: 'badge' }, r.kind)),
      h('td', { class: 'num' }, r.count.toLocaleString()),
      h('td', null, h('a', { href: `#/messages/${encodeURIComponent(r.lastMailId)}`, title: 'The last mail that got it' }, timeEl(r.lastAt)))))));
}

/** "rate-limited 40 · invalid-recipient 3": the recipients of a replies page by kind of reply, most first. */
export function byKindText(page: ReplyDigestPage): string {
  return Object.entries(page.byKind ?? {}).sort((a, b) => b[1] - a[1]).map(([kind, n]) => `${kind} ${n.toLocaleString()}`).join(' · ');
}
