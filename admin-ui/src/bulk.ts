/**
 * Bulk actions on every mail a filter matches (POST /api/messages/actions), as the queue page and
 * a destination's page run them: the server counts the matches first (dryRun), the operator
 * confirms that number (with a reason for a bounce), then the action runs and its outcome is told.
 */
import { api, type BulkAction, type BulkResult } from './api';
import { h } from './dom';
import { confirmDialog, errorMessage, notify } from './ui';

export const ACTION_WORDS: Record<BulkAction, { verb: string; done: string }> = {
  remove: { verb: 'Remove', done: 'removed' },
  hold: { verb: 'Hold', done: 'held' },
  release: { verb: 'Release', done: 'released' },
  retry: { verb: 'Retry now', done: 'scheduled for retry' },
  priority: { verb: 'Set priority of', done: 'reprioritised' },
  bounce: { verb: 'Bounce', done: 'set to bounce' },
};

export function mails(n: number): string {
  return `${n.toLocaleString()} ${n === 1 ? 'mail' : 'mails'}`;
}

/** What a confirmation says of an action that cannot be undone, with the bounce's reason field. */
export function bulkWarning(action: BulkAction, reasonInput: HTMLInputElement): HTMLElement | null {
  if (action === 'remove') return h('p', { class: 'warn' }, 'Removed mail is never delivered. This cannot be undone.');
  if (action !== 'bounce') return null;
  return h('div', null,
    h('label', { class: 'field' }, 'Reason, told to the senders ', reasonInput),
    h('p', { class: 'warn' }, 'Bounced mail is given up: each sender gets a delivery status notification with this reason, and nothing more is delivered. This cannot be undone.'));
}

/**
 * Counts, confirms and runs `action` on every mail `filter` matches. `which` ends the sentence
 * "Hold all N mails …" ("matching the current filter", "to example.org"); `note` follows it (the
 * new priority). True when the action ran.
 */
export async function bulkByFilter(filter: Record<string, string | number>, action: BulkAction, o: { which: string; note?: string; priority?: number }): Promise<boolean> {
  const words = ACTION_WORDS[action];
  const reasonInput = h('input', { type: 'text', name: 'bounce-reason', placeholder: 'bounced by the operator', maxlength: '500' });
  const body = { filter, action, ...(o.priority !== undefined ? { priority: o.priority } : {}) };
  let preview: BulkResult;
  try {
    preview = await api<BulkResult>('POST', '/api/messages/actions', { body: { ...body, dryRun: true } });
  } catch (err) {
    notify(`Could not count the mails: ${errorMessage(err)}`, 'error');
    return false;
  }
  if (preview.matched === 0) {
    notify(`No mail ${o.which}; nothing to do.`);
    return false;
  }
  const ok = await confirmDialog({
    title: `${words.verb} ${mails(preview.matched)}?`,
    body: [h('p', null, `${words.verb} all ${mails(preview.matched)} ${o.which}${o.note ?? ''}.`), bulkWarning(action, reasonInput)],
    confirm: `${words.verb} ${mails(preview.matched)}`,
    danger: action === 'remove' || action === 'bounce',
  });
  if (!ok) return false;
  try {
    const why = action === 'bounce' ? reasonInput.value.trim() || undefined : undefined;
    const result = await api<BulkResult>('POST', '/api/messages/actions', { body: { ...body, dryRun: false, ...(why ? { reason: why } : {}) } });
    const failed = result.failed ?? 0;
    const skipped = result.skipped ?? 0;
    const extra = [`${result.matched.toLocaleString()} matched`, skipped ? `${skipped} had moved on` : '', failed ? `${failed} failed: ${result.errors?.[0]?.message ?? 'see the audit log'}` : ''].filter(Boolean).join(', ');
    notify(`${mails(result.changed)} ${words.done} (${extra}).`, failed ? 'error' : 'ok');
  } catch (err) {
    notify(`${words.verb} failed: ${errorMessage(err)}`, 'error');
  }
  return true;
}
