/**
 * One mail: envelope, recipients with their status and last reply, the attempt timeline,
 * headers, text preview, attachments, raw download and the operator actions. Every value that
 * came from the mail goes through text nodes (see dom.ts): headers and body are never markup.
 */
import { api, request, type ConsoleConfig, type MailDetail } from '../api';
import { h, mount, type Child } from '../dom';
import { onQueueEvent } from '../events';
import { absoluteTime, humanSize, parseLocalDateTime, replyText, senderText, sizeEl, stateBadge, timeEl, toLocalDateTimeInput } from '../format';
import { confirmDialog, coalesce, errorMessage, errorState, loading, notify, priorityClasses, priorityLabel, runningConfig } from '../ui';
import type { Cleanup } from '../main';

function dl(rows: [string, Child][]): HTMLElement {
  return h('dl', { class: 'facts' }, rows.filter(([, v]) => v !== undefined && v !== null && v !== '').map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

function section(title: string, ...children: Child[]): HTMLElement {
  const id = `sec-${title.toLowerCase().replace(/[^a-z]+/g, '-')}`;
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), children);
}

function classificationText(c: { source: string; rule?: string; detail?: string } | undefined): string | undefined {
  if (!c) return undefined;
  if (c.source === 'rule') return `rule "${c.rule ?? '?'}"${c.detail ? ` (${c.detail})` : ''}`;
  const names: Record<string, string> = { default: 'default class', 'mt-priority': 'MT-PRIORITY from the client', futurerelease: 'FUTURERELEASE from the client', operator: 'an operator' };
  return (names[c.source] ?? c.source) + (c.detail ? ` (${c.detail})` : '');
}

async function downloadRaw(id: string): Promise<void> {
  // A plain link cannot carry the Authorization header, so fetch the bytes and save a blob.
  const res = await request('GET', `/api/messages/${encodeURIComponent(id)}/raw`);
  const blob = await res.blob();
  const url = URL.createObjectURL(new Blob([blob], { type: 'message/rfc822' }));
  const a = h('a', { href: url, download: `${id}.eml`, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function renderMessage(main: HTMLElement, _params: URLSearchParams, rest: string[]): Cleanup {
  const id = rest[0] ?? '';
  let mail: MailDetail | null = null;
  let config: ConsoleConfig | null = null;
  mount(main, loading('Loading the mail…'));

  async function act(label: string, fn: () => Promise<unknown>): Promise<void> {
    try {
      await fn();
      notify(label);
    } catch (err) {
      notify(`Failed: ${errorMessage(err)}`, 'error');
    }
    await load();
  }

  function actions(m: MailDetail): HTMLElement {
    const path = `/api/messages/${encodeURIComponent(m.id)}`;
    const live = m.state === 'queued' || m.state === 'active' || m.state === 'held';
    const prioritySelect = h('select', { id: 'msg-priority', 'aria-label': 'Priority' },
      priorityClasses(config).map(([name, level]) => h('option', { value: String(level), selected: level === m.priority }, `${name} (${level})`)));
    if (!priorityClasses(config).some(([, l]) => l === m.priority)) prioritySelect.append(h('option', { value: String(m.priority), selected: true }, String(m.priority)));
    const notBefore = h('input', { type: 'datetime-local', id: 'msg-notbefore', 'aria-label': 'Deliver not before', value: toLocalDateTimeInput(m.notBefore) });
    return h('div', { class: 'actions', role: 'toolbar', 'aria-label': 'Actions on this mail' },
      m.state === 'held'
        ? h('button', { type: 'button', class: 'primary', onclick: () => act('Released: it will be delivered when due.', () => api('POST', `${path}/release`)) }, 'Release')
        : h('button', { type: 'button', disabled: !live, onclick: () => act('Held: it will not be delivered until released.', () => api('POST', `${path}/hold`)) }, 'Hold'),
      h('button', { type: 'button', disabled: m.state !== 'queued', title: m.state === 'queued' ? 'Make it due now' : 'Only queued mail can be retried', onclick: () => act('Scheduled for delivery now.', () => api('POST', `${path}/retry`)) }, 'Retry now'),
      h('span', { class: 'group' }, prioritySelect,
        h('button', { type: 'button', disabled: !live, onclick: () => act(`Priority set to ${priorityLabel(Number(prioritySelect.value), config)}.`, () => api('PATCH', path, { body: { priority: Number(prioritySelect.value) } })) }, 'Set priority')),
      h('span', { class: 'group' }, notBefore,
        h('button', {
          type: 'button', disabled: !live,
          onclick: () => {
            const ms = parseLocalDateTime(notBefore.value);
            if (ms === undefined) return notify('Enter a date and time first.', 'error');
            return act(`Not before ${absoluteTime(ms)}.`, () => api('PATCH', path, { body: { notBefore: ms } }));
          },
        }, 'Set not-before')),
      h('button', { type: 'button', onclick: () => downloadRaw(m.id).catch((err) => notify(`Download failed: ${errorMessage(err)}`, 'error')) }, 'Download raw (.eml)'),
      h('button', {
        type: 'button', class: 'danger', disabled: !live,
        onclick: async () => {
          const ok = await confirmDialog({
            title: 'Remove 1 mail?',
            body: [h('p', null, 'Remove "', m.subject ?? '(no subject)', '" to ', m.recipients.map((r) => r.address).join(', '), '.'), h('p', { class: 'warn' }, 'Removed mail is never delivered. This cannot be undone.')],
            confirm: 'Remove 1 mail',
            danger: true,
          });
          if (ok) await act('Removed: it will never be delivered.', () => api('DELETE', path));
        },
      }, 'Remove'),
      h('button', {
        type: 'button', class: 'danger', disabled: !live,
        onclick: async () => {
          const reason = h('input', { type: 'text', name: 'bounce-reason', placeholder: 'bounced by the operator', maxlength: '500' });
          const ok = await confirmDialog({
            title: 'Bounce 1 mail?',
            body: [
              h('p', null, 'Give up "', m.subject ?? '(no subject)', '" to ', m.recipients.filter((r) => r.status === 'pending' || r.status === 'deferred').map((r) => r.address).join(', '), '; ', m.sender ? `${m.sender} gets a delivery status notification.` : 'it is a bounce itself, so nobody is notified.'),
              h('label', { class: 'field' }, 'Reason, told to the sender ', reason),
              h('p', { class: 'warn' }, 'Nothing more of it is delivered. This cannot be undone.'),
            ],
            confirm: 'Bounce 1 mail',
            danger: true,
          });
          const why = reason.value.trim();
          if (ok) await act('Set to bounce: its sender will be told.', () => api('POST', `${path}/bounce`, why ? { body: { reason: why } } : {}));
        },
      }, 'Bounce'));
  }

  /**
   * Gives up one recipient (a misspelt address, a dead domain) while the others go on: for a live
   * mail with more than one recipient left. Marked instead when already asked for.
   */
  function recipientBounce(m: MailDetail, address: string, status: string): HTMLElement | null {
    const live = m.state === 'queued' || m.state === 'active' || m.state === 'held';
    const left = m.recipients.filter((r) => r.status === 'pending' || r.status === 'deferred');
    if (!live || left.length < 2 || (status !== 'pending' && status !== 'deferred')) return null;
    if (m.bounceRequest?.recipients?.includes(address.toLowerCase())) return h('span', { class: 'muted' }, 'to be bounced');
    return h('button', {
      type: 'button', class: 'link danger',
      onclick: async () => {
        const reason = h('input', { type: 'text', name: 'bounce-reason', placeholder: 'bounced by the operator', maxlength: '500' });
        const ok = await confirmDialog({
          title: `Bounce ${address}?`,
          body: [
            h('p', null, 'Give up delivery to ', h('code', null, address), ' only; ', m.sender ? `${m.sender} gets a delivery status notification for it.` : 'the mail is a bounce itself, so nobody is notified.',
              ' The other recipients are tried as before', m.state === 'held' ? ', once the mail is released.' : '.'),
            h('label', { class: 'field' }, 'Reason, told to the sender ', reason),
          ],
          confirm: `Bounce ${address}`,
          danger: true,
        });
        const why = reason.value.trim();
        if (ok) await act(`${address} set to bounce.`, () => api('POST', `/api/messages/${encodeURIComponent(m.id)}/bounce`, { body: { recipients: [address], ...(why ? { reason: why } : {}) } }));
      },
    }, `Bounce ${address}`);
  }

  /**
   * Corrects one recipient not yet done (a misspelt address, a moved mailbox): it is tried afresh
   * at the new address. Not while an attempt runs: the attempt is sending to the old address.
   */
  function recipientRedirect(m: MailDetail, address: string, status: string): HTMLElement | null {
    if ((m.state !== 'queued' && m.state !== 'held') || (status !== 'pending' && status !== 'deferred')) return null;
    return h('button', {
      type: 'button', class: 'link',
      onclick: async () => {
        const to = h('input', { type: 'email', name: 'redirect-to', value: address, required: true, maxlength: '320', autocomplete: 'off' });
        const ok = await confirmDialog({
          title: `Change ${address}?`,
          body: [
            h('p', null, 'Deliver to another address instead of ', h('code', null, address), ', tried afresh',
              m.state === 'held' ? ' once the mail is released.' : ' at once.',
              ' Delivery status notifications still name the address the sender gave.'),
            h('label', { class: 'field' }, 'New address ', to),
          ],
          confirm: 'Change the address',
        });
        const next = to.value.trim();
        if (ok && next && next !== address) {
          await act(`${address} is now ${next}.`, () => api('POST', `/api/messages/${encodeURIComponent(m.id)}/redirect`, { body: { from: address, to: next } }));
        }
      },
    }, `Change ${address}`);
  }

  /** "ann@gmail.example", and the address the sender gave when an operator changed it (its ORCPT). */
  function recipientCell(r: MailDetail['recipients'][number]): HTMLElement {
    const given = r.orcpt?.replace(/^rfc822;/i, '');
    return h('td', { class: 'addr' }, r.address, given && given.toLowerCase() !== r.address.toLowerCase() ? h('div', { class: 'muted' }, `given as ${given}`) : null);
  }

  function render(m: MailDetail): void {
    const p = m.parsed;
    const subject = p?.subject ?? m.subject;
    mount(main,
      h('p', { class: 'crumbs' }, h('a', { href: '#/queue' }, '← Back to the queue')),
      h('div', { class: 'page-head' },
        h('h1', { class: 'subject' }, subject ? subject : h('em', null, '(no subject)')),
        stateBadge(m.state)),
      m.holdReason && m.state === 'held' ? h('p', { class: 'hold-reason' }, 'Held: ', m.holdReason) : null,
      m.bounceRequest && (m.state === 'queued' || m.state === 'active' || m.state === 'held')
        ? h('p', { class: 'hold-reason' }, 'To be bounced', m.bounceRequest.recipients ? ` (only ${m.bounceRequest.recipients.join(', ')})` : '', ': ', m.bounceRequest.reason)
        : null,
      actions(m),
      h('div', { class: 'grid2' },
        section('Envelope', dl([
          ['Mail ID', h('code', null, m.id)],
          ['Sender', senderText(m.sender)],
          ['Recipients', m.recipients.map((r) => r.address).join(', ')],
          ['State', stateBadge(m.state)],
          ['Received', h('span', null, timeEl(m.receivedAt), ` · ${absoluteTime(m.receivedAt)}`)],
          ['Size', sizeEl(m.size)],
          ['Priority', priorityLabel(m.priority, config, (m as { priorityName?: string }).priorityName)],
          ['Priority set by', classificationText(m.classification?.priority)],
          ['Delay set by', classificationText(m.classification?.delay)],
          ['Hold set by', classificationText(m.classification?.hold)],
          ['Not before', h('span', null, timeEl(m.notBefore), ` · ${absoluteTime(m.notBefore)}`)],
          ['Attempts', String(m.attempts)],
          ['Being delivered by', m.lease ? `${m.lease.owner} (lease until ${absoluteTime(m.lease.until)})` : undefined],
          ['Message-ID', m.messageId],
          ['DSN', m.dsn && (m.dsn.ret || m.dsn.envid) ? [m.dsn.ret ? `RET=${m.dsn.ret}` : '', m.dsn.envid ? ` ENVID=${m.dsn.envid}` : ''].join('') : undefined],
          ['MT-PRIORITY', m.mtPriority !== undefined ? String(m.mtPriority) : undefined],
          ['Body', `${m.bodyType}${m.smtputf8 ? ', SMTPUTF8' : ''}`],
          ['Delay warning sent', m.delayWarnedAt ? timeEl(m.delayWarnedAt) : undefined],
        ])),
        section('Client', dl([
          ['Address', m.client?.address],
          ['HELO', m.client?.helo],
          ['Host name', m.client?.hostname],
          ['Authenticated as', m.client?.authUser],
          ['TLS', m.client?.tls === undefined ? undefined : m.client.tls ? 'yes' : 'no'],
          ['Listener', m.client?.listener],
        ]))),
      section('Recipients',
        h('table', { class: 'recipients', 'aria-label': 'Recipients' },
          h('thead', null, h('tr', null, ['Address', 'Status', 'Last reply', 'Remote host', 'Last attempt', ''].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', null, m.recipients.map((r) => h('tr', null,
            recipientCell(r),
            h('td', null, stateBadge(r.status)),
            h('td', { class: 'reply' }, replyText(r.lastReply), r.replyKind ? [' ', h('span', { class: 'badge' }, r.replyKind)] : null),
            h('td', null, r.remoteHost ?? '—'),
            h('td', null, timeEl(r.lastAttemptAt)),
            h('td', { class: 'recipient-actions' }, recipientRedirect(m, r.address, r.status), ' ', recipientBounce(m, r.address, r.status))))))),
      section('Attempts',
        m.history.length === 0
          ? h('p', { class: 'muted' }, m.state === 'queued' ? 'No delivery attempt yet. It is tried when due; use "Retry now" to try at once.' : 'No delivery attempt was made.')
          : h('ol', { class: 'timeline', 'aria-label': 'Attempt timeline' }, [...m.history].reverse().map((a) => h('li', { class: `attempt outcome-${a.outcome}` },
            h('div', { class: 'attempt-head' }, stateBadge(a.outcome), ' ', timeEl(a.at), h('span', { class: 'muted' }, ` · ${absoluteTime(a.at)}`),
              a.durationMs !== undefined ? h('span', { class: 'muted' }, ` · ${(a.durationMs / 1000).toFixed(1)} s`) : null),
            h('div', null, a.host ? ['via ', h('code', null, a.host), ' '] : null, 'for ', a.recipients.join(', ')),
            a.reply ? h('div', { class: 'reply' }, replyText(a.reply)) : null)))),
      p?.error ? h('p', { class: 'error-state', role: 'alert' }, 'The stored message could not be read: ', p.error, '. The envelope above is still valid; download the raw message to look at it.') : null,
      section('Headers',
        p?.headers?.length
          ? h('table', { class: 'headers', 'aria-label': 'Headers' }, h('tbody', null, p.headers.map((x) => h('tr', null, h('th', { scope: 'row' }, x.name), h('td', null, x.value)))))
          : h('p', { class: 'muted' }, 'The headers could not be read (the body may be gone); the envelope above is still valid.')),
      section('Text preview',
        p?.text ? h('pre', { class: 'preview', 'aria-label': 'Text preview' }, p.text) : h('p', { class: 'muted' }, 'No text part. Download the raw message to see the whole body.'),
        p?.textTruncated ? h('p', { class: 'muted' }, 'Only the beginning is shown. Download the raw message for all of it.') : null,
        p?.hasHtml ? h('p', { class: 'muted' }, 'The message also has an HTML part; it is never rendered here, only shown as text above.') : null),
      p?.attachments?.length
        ? section('Attachments', h('ul', { class: 'attachments' }, p.attachments.map((a) => h('li', null, a.filename ?? h('em', null, '(unnamed)'), h('span', { class: 'muted' }, ` · ${a.contentType} · ${humanSize(a.size)}`)))))
        : null);
  }

  async function load(): Promise<void> {
    try {
      const [m, c] = await Promise.all([api<MailDetail>('GET', `/api/messages/${encodeURIComponent(id)}`), runningConfig().catch(() => null)]);
      mail = m;
      config = c;
      render(m);
    } catch (err) {
      mount(main, h('p', { class: 'crumbs' }, h('a', { href: '#/queue' }, '← Back to the queue')), errorState(`Could not load mail ${id}`, err, () => void load()));
    }
  }

  const refresh = coalesce(() => void load(), 400);
  const unsubscribe = onQueueEvent((ev) => {
    if (ev.id === id) refresh();
  });
  void load();
  void mail;
  return () => {
    unsubscribe();
    refresh.cancel();
  };
}
