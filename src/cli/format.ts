/**
 * Human output of the CLI. `queue list` looks like Postfix's `postqueue -p` (id with `*` for a
 * mail being delivered and `!` for a held one, size, arrival time, sender, then each recipient
 * not yet delivered, with the last reply in parentheses), so operators read it at a glance.
 * It reads the API's answers as typed in src/api-types.ts (shared with the server and the console).
 */

import type { DestinationView, MailDetail, MailSummary, RefusalPage, ReplyDigestPage, SmtpReply, Stats } from '../api-types.js';

const STATE_MARK: Record<string, string> = { active: '*', held: '!' };

/**
 * What is printed to a terminal: control characters (ESC, BEL, a lone CR, C1 controls, …) and the
 * bidirectional overrides shown as `\uXXXX` instead of being interpreted. A subject, a header, a
 * body or a remote server's reply can hold them, and a terminal would act on them (move the
 * cursor, rewrite a line, set the title or the clipboard). Newlines and tabs stay. The escape is
 * also a JSON escape, so --json output stays valid JSON and parses to the same strings.
 */
export function terminalSafe(text: string): string {
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function arrival(ms: number): string {
  const d = new Date(ms);
  const day = d.toLocaleString('en-US', { weekday: 'short' });
  const mon = d.toLocaleString('en-US', { month: 'short' });
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${day} ${mon} ${String(d.getDate()).padStart(2)} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function replyText(r: SmtpReply): string {
  return `${r.code}${r.enhanced ? ' ' + r.enhanced : ''} ${r.message}`.replace(/\s+/g, ' ').trim();
}

const ID_W = 27;
const SIZE_W = 8;
const PRIO_W = 8;
const TIME_W = 20;
const INDENT = ' '.repeat(ID_W + 1 + SIZE_W + 1 + PRIO_W + 1 + TIME_W + 1);

export function queueTable(items: MailSummary[], more: boolean, total?: { count: number; exact: boolean }): string {
  if (items.length === 0) return more ? 'No mail found yet; more may match (use --all)\n' : 'Mail queue is empty\n';
  const lines = [
    `${'-Queue ID-'.padEnd(ID_W)} ${'--Size--'.padStart(SIZE_W)} ${'-Prio-'.padEnd(PRIO_W)} ${'----Arrival Time----'.padEnd(TIME_W)} -Sender/Recipient-------`,
  ];
  let bytes = 0;
  for (const m of items) {
    bytes += m.size;
    const mark = STATE_MARK[m.state] ?? (m.state === 'queued' ? ' ' : '#');
    lines.push(`${(m.id + mark).padEnd(ID_W)} ${String(m.size).padStart(SIZE_W)} ${(m.priorityName ?? String(m.priority)).padEnd(PRIO_W)} ${arrival(m.receivedAt).padEnd(TIME_W)} ${m.sender || 'MAILER-DAEMON'}`);
    if (m.state === 'held' && m.holdReason) lines.push(`${INDENT}(held: ${m.holdReason})`);
    if (!['queued', 'active', 'held'].includes(m.state)) lines.push(`${INDENT}(${m.state})`);
    for (const r of m.recipients) {
      if (r.status === 'delivered') continue;
      if (r.lastReply) lines.push(`${INDENT}(${r.remoteHost ? `host ${r.remoteHost} said: ` : ''}${replyText(r.lastReply)})`);
      lines.push(`${INDENT}${r.address}`);
    }
    const hidden = (m.recipientCount ?? m.recipients.length) - m.recipients.length;
    if (hidden > 0) lines.push(`${INDENT}(and ${hidden} more recipients)`);
    lines.push('');
  }
  const kb = Math.ceil(bytes / 1024);
  const n = items.length;
  lines.push(`-- ${kb} Kbytes in ${n} Request${n === 1 ? '' : 's'}.${more ? ` More match${total ? ` (${total.exact ? '' : 'about '}${total.count} in all)` : ''}: use --all or --limit.` : ''}`);
  return lines.join('\n') + '\n';
}

function when(ms: number | undefined): string {
  if (ms === undefined || ms === null) return '-';
  return `${new Date(ms).toISOString()} (${relative(ms)})`;
}

export function relative(ms: number, now = Date.now()): string {
  const s = Math.round((ms - now) / 1000);
  const a = Math.abs(s);
  const text = a < 60 ? `${a}s` : a < 3600 ? `${Math.round(a / 60)}m` : a < 86400 ? `${(a / 3600).toFixed(1)}h` : `${(a / 86400).toFixed(1)}d`;
  return s <= 0 ? `${text} ago` : `in ${text}`;
}

export function showMail(m: MailDetail): string {
  const out: string[] = [];
  const kv = (k: string, v: string | number | undefined) => out.push(`${(k + ':').padEnd(17)}${v ?? '-'}`);
  kv('Queue ID', m.id);
  kv('State', m.state + (m.holdReason ? ` (${m.holdReason})` : '') + (m.lease ? ` (being delivered by ${m.lease.owner})` : ''));
  kv('Priority', `${m.priorityName ?? '?'} (${m.priority})`);
  kv('Received', when(m.receivedAt));
  kv('Not before', when(m.notBefore));
  kv('Size', `${m.size} bytes`);
  kv('Attempts', m.attempts);
  kv('Sender', m.sender || '<> (null sender)');
  if (m.subject !== undefined) kv('Subject', m.subject);
  if (m.messageId !== undefined) kv('Message-ID', m.messageId);
  if (m.client) kv('Client', `${m.client.address}${m.client.helo ? ` (${m.client.helo})` : ''}${m.client.authUser ? ` auth=${m.client.authUser}` : ''}${m.client.tls ? ' TLS' : ''}`);
  if (m.classification) {
    for (const [what, c] of Object.entries(m.classification)) {
      if (c) kv(`Set ${what} by`, `${c.source}${c.rule ? ` rule "${c.rule}"` : ''}${c.detail ? ` (${c.detail})` : ''}`);
    }
  }
  out.push('Recipients:');
  for (const r of m.recipients) {
    const given = r.orcpt?.replace(/^rfc822;/i, '');
    out.push(`  ${r.address}${given && given.toLowerCase() !== r.address.toLowerCase() ? ` (given as ${given})` : ''}  ${r.status}${r.replyKind ? ` [${r.replyKind}]` : ''}${r.lastReply ? `  (${r.remoteHost ? r.remoteHost + ': ' : ''}${replyText(r.lastReply)})` : ''}`);
  }
  if (m.history?.length) {
    out.push('Attempts:');
    for (const a of m.history) {
      out.push(`  ${new Date(a.at).toISOString()}  ${a.outcome.padEnd(9)} ${a.host ?? '-'}  ${a.reply ? replyText(a.reply) : ''}  [${a.recipients.join(', ')}]`);
    }
  }
  const p = m.parsed;
  if (p) {
    if (p.error) out.push(`Message: ${p.error}`);
    out.push('Headers:');
    for (const h of p.headers) out.push(`  ${h.name}: ${h.value}`);
    if (p.attachments.length) {
      out.push('Attachments:');
      for (const a of p.attachments) out.push(`  ${a.filename ?? '(no name)'}  ${a.contentType}  ${a.size} bytes`);
    }
    if (p.text !== undefined) {
      out.push('Text:');
      out.push(...p.text.split(/\r?\n/).map((l) => `  ${l}`));
      if (p.textTruncated) out.push('  […]');
    }
  }
  return out.join('\n') + '\n';
}

/** "rate-limited 40, invalid-recipient 3": recipients by kind of reply, most first. */
function kindsText(replies: ReplyDigestPage): string {
  return Object.entries(replies.byKind ?? {}).sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(', ');
}

export function showStats(s: Stats, replies?: ReplyDigestPage): string {
  const out: string[] = [];
  if (s.node) out.push(`Node:        ${s.node} (rates, suspensions and replies are this node's)`);
  out.push('By state:    ' + Object.entries(s.byState).map(([k, v]) => `${k}=${v}`).join('  '));
  if (s.byPriorityName) out.push('By priority: ' + Object.entries(s.byPriorityName).map(([k, v]) => `${k}=${v}`).join('  '));
  out.push(`Oldest:      ${s.oldestAgeSeconds === null || s.oldestAgeSeconds === undefined ? '-' : relative(Date.now() - s.oldestAgeSeconds * 1000)}`);
  // A node younger than the window measured its rates over fewer seconds: say so.
  const young = s.ratesWindowSeconds !== undefined && s.ratesWindowSeconds < 60 ? `  (over the ${s.ratesWindowSeconds} s since start)` : '';
  if (s.rates) out.push('Rates/min:   ' + Object.entries(s.rates).map(([k, v]) => `${k.replace(/PerMinute$/, '')}=${v}`).join('  ') + young);
  const refused = Object.entries(s.refusedByReason ?? {});
  if (refused.length) out.push('Refused/min: ' + refused.sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}=${v}`).join('  '));
  const labels = s.ageByDestination.bucketLabels ?? s.ageByDestination.bucketsMinutes.map((b) => (b === null ? 'more' : String(b)));
  const rows = s.ageByDestination.rows;
  out.push('');
  // qshape: one row per destination, columns by age.
  const dw = Math.max(6, ...rows.map((r) => r.domain.length)) + 1;
  const cw = Math.max(7, ...labels.map((l) => l.length + 1));
  out.push(''.padEnd(dw) + 'T'.padStart(7) + labels.map((l) => l.padStart(cw)).join(''));
  const totals = labels.map((_, i) => rows.reduce((sum, r) => sum + (r.counts[i] ?? 0), 0));
  out.push('TOTAL'.padEnd(dw) + String(rows.reduce((a, r) => a + r.total, 0)).padStart(7) + totals.map((n) => String(n).padStart(cw)).join(''));
  for (const r of rows) out.push(r.domain.padEnd(dw) + String(r.total).padStart(7) + r.counts.map((n) => String(n).padStart(cw)).join(''));
  const now = s.deliveringNow ?? [];
  if (now.length) {
    // What this node is delivering: connections open of those allowed now (concurrency feedback) and the limit.
    out.push('', 'Delivering now (connections open/allowed/limit, mails waiting):');
    const dw = Math.max(...now.map((d) => d.domains.join(',').length));
    for (const d of now) out.push(`  ${d.domains.join(',').padEnd(dw)}  ${d.open}/${d.allowed}/${d.limit}  ${d.waiting} waiting  [${d.destination}]`);
  }
  const dead = s.suspendedDestinations ?? [];
  if (dead.length) {
    out.push('', 'Suspended destinations (no host reachable; mail deferred without connecting):');
    for (const d of dead) out.push(`  ${d.domains.join(',')} [${d.destination}] until ${arrival(d.until)}: ${replyText(d.reply)}`);
  }
  if (replies?.rows.length) {
    // pflogsumm's "message deferral detail" / "message bounce detail": recipients, destination, reply.
    out.push('', `Deferrals and bounces by reply (last hour, ${replies.total} recipient${replies.total === 1 ? '' : 's'}; ${kindsText(replies)}):`);
    const cw = Math.max(...replies.rows.map((r) => String(r.count).length));
    const dw = Math.max(...replies.rows.map((r) => r.domain.length));
    const kw = Math.max(...replies.rows.map((r) => (r.kind ?? '').length));
    for (const r of replies.rows) out.push(`  ${String(r.count).padStart(cw)} ${r.outcome.padEnd(8)} ${r.domain.padEnd(dw)}  ${(r.kind ?? '').padEnd(kw)}  ${replyText(r.reply)}`);
  }
  return out.join('\n') + '\n';
}

/**
 * `spoolhouse refusals`: one refusal a line, oldest first as in a log (like Postfix's "NOQUEUE:
 * reject:" lines): when, the client, its HELO name, the sender, what it said, the reply and the
 * reason. Everything but the time came from the client or is about it: the CLI prints it through
 * terminalSafe, as all its output.
 */
export function showRefusals(page: RefusalPage, following = false): string {
  if (page.items.length === 0) {
    if (following) return '';
    return page.total === 0 ? 'Nothing was refused since the server started\n' : 'No refusal kept matches\n';
  }
  const lines = [...page.items].reverse().map((r) => {
    const who = [`[${r.client}]`, r.helo !== undefined ? `helo=<${r.helo}>` : '', r.user !== undefined ? `user=${r.user}` : '', r.sender !== undefined ? `from=<${r.sender}>` : ''].filter(Boolean).join(' ');
    const reply = `${r.reply.code}${r.reply.enhanced ? ' ' + r.reply.enhanced : ''} ${r.reply.text}`.trim();
    return `${arrival(r.at)} ${r.reason}: ${who}${r.command !== undefined ? `: ${r.command}` : ''}: ${reply}`;
  });
  if (page.nextCursor !== undefined) lines.unshift(`(older ones: --before ${page.nextCursor})`);
  return lines.join('\n') + '\n';
}

const VIA: Record<DestinationView['via'], string> = {
  mx: 'its MX hosts', 'implicit-mx': 'its own address (no MX)', route: 'a route (delivery.routes)', smarthost: 'the smarthost', none: 'nowhere now',
};

/** `spoolhouse destination DOMAIN`: where its mail goes now, what waits for it, what its servers answered. */
export function showDestination(where: DestinationView, waiting: Record<string, { count: number; exact: boolean }>, replies: ReplyDigestPage, node: string): string {
  const out: string[] = [`Destination ${where.domain} (node ${node})`];
  if (where.failure) out.push(`Its mail would be ${where.failure.permanent ? 'bounced' : 'deferred'}: ${replyText(where.failure.reply)}`);
  else {
    const tls = where.mtaSts ? 'TLS required and verified (MTA-STS enforce)' : where.tlsPolicy ? `TLS "${where.tlsPolicy}" (delivery.tls.policy)` : 'TLS as for every domain';
    out.push(`Goes through ${VIA[where.via]}, ${tls}:`);
    where.hosts.forEach((x, i) => out.push(`  ${i + 1}. ${x.host}:${x.port}${x.address && x.address !== x.host ? ` (${x.address})` : ''}${x.preference !== undefined ? ` preference ${x.preference}` : ''}`));
    if (where.fallbackRelay?.length) out.push(`  then, if none of them can be used, the fallback relay: ${where.fallbackRelay.map((x) => `${x.host}:${x.port}`).join(', ')}`);
  }
  out.push('Waiting:     ' + Object.entries(waiting).map(([k, v]) => `${k}=${v.exact ? '' : '~'}${v.count}`).join('  '));
  const c = where.connections;
  out.push(c
    ? `Connections: ${c.open} open, ${c.allowed} allowed now of ${c.limit}, ${c.waiting} waiting${c.domains.length > 1 ? ` (shared with ${c.domains.filter((d) => d !== where.domain).join(', ')})` : ''}`
    : 'Connections: none (no mail for it on this node lately)');
  if (replies.rows.length) {
    out.push(`Replies in the last hour (${replies.total} recipient${replies.total === 1 ? '' : 's'}; ${kindsText(replies)}):`);
    const cw = Math.max(...replies.rows.map((r) => String(r.count).length));
    const kw = Math.max(...replies.rows.map((r) => (r.kind ?? '').length));
    for (const r of replies.rows) out.push(`  ${String(r.count).padStart(cw)} ${r.outcome.padEnd(8)} ${(r.kind ?? '').padEnd(kw)}  ${replyText(r.reply)}`);
  } else out.push('No recipient deferred or bounced in the last hour.');
  return out.join('\n') + '\n';
}
