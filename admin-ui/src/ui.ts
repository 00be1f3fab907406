/**
 * Shared pieces of the console: notices (an ARIA live region), the confirmation dialog
 * (a native <dialog>, so focus and Escape behave), error and empty states that say what to do,
 * and the running configuration's priority names.
 */
import { api, ApiError, type ConsoleConfig } from './api';
import { h, mount, type Child } from './dom';

let noticeRegion: HTMLElement | null = null;

export function noticeArea(): HTMLElement {
  noticeRegion = h('div', { class: 'notices', role: 'status', 'aria-live': 'polite' });
  return noticeRegion;
}

/** A short message that fades after a while (errors stay until dismissed). */
export function notify(message: string, kind: 'ok' | 'error' = 'ok'): void {
  if (!noticeRegion) return;
  const close = h('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss message', onclick: () => item.remove() }, '×');
  const item = h('div', { class: `notice notice-${kind}` }, h('span', null, message), close);
  noticeRegion.append(item);
  if (kind === 'ok') setTimeout(() => item.remove(), 6000);
}

export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}

/** An error box: what went wrong, what to do, and a button to try again. */
export function errorState(what: string, err: unknown, retry?: () => void): HTMLElement {
  const status = err instanceof ApiError ? err.status : 0;
  const advice =
    status === 0 ? 'Check that the Spoolhouse server is running and reachable, then try again.'
      : status === 403 ? 'Your token may only read. Ask for an operator token to make changes.'
        : status === 404 ? 'It may have been purged or never existed. Go back to the queue.'
          : status >= 500 ? 'The server had a problem; its log has the details. Try again in a moment.'
            : 'Check the request and try again.';
  return h('div', { class: 'error-state', role: 'alert' },
    h('strong', null, what),
    h('p', null, errorMessage(err)),
    h('p', { class: 'muted' }, advice),
    retry ? h('button', { type: 'button', onclick: retry }, 'Try again') : null);
}

export function emptyState(title: string, advice: Child): HTMLElement {
  return h('div', { class: 'empty-state' }, h('strong', null, title), h('p', null, advice));
}

export function loading(what = 'Loading…'): HTMLElement {
  return h('p', { class: 'loading', role: 'status' }, what);
}

/**
 * Asks before a change. Resolves true on confirm. `danger` styles the confirm button red.
 */
export function confirmDialog(opts: { title: string; body: Child; confirm: string; danger?: boolean }): Promise<boolean> {
  return new Promise((resolve) => {
    const titleId = 'confirm-title';
    const dialog = h('dialog', { class: 'confirm', 'aria-labelledby': titleId });
    const finish = (ok: boolean) => {
      dialog.close();
      dialog.remove();
      resolve(ok);
    };
    mount(dialog,
      h('h2', { id: titleId }, opts.title),
      h('div', { class: 'dialog-body' }, opts.body),
      h('div', { class: 'dialog-actions' },
        h('button', { type: 'button', onclick: () => finish(false) }, 'Cancel'),
        h('button', { type: 'button', class: opts.danger ? 'danger' : 'primary', onclick: () => finish(true) }, opts.confirm)));
    dialog.addEventListener('cancel', (e) => {
      e.preventDefault();
      finish(false);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// ---- priority names, from the running configuration ----

let configCache: Promise<ConsoleConfig> | null = null;

export function runningConfig(refresh = false): Promise<ConsoleConfig> {
  if (!configCache || refresh) {
    configCache = api<ConsoleConfig>('GET', '/api/config');
    configCache.catch(() => {
      configCache = null;
    });
  }
  return configCache;
}

export function forgetConfig(): void {
  configCache = null;
}

/** Priority classes, highest first: [name, level]. */
export function priorityClasses(config: ConsoleConfig | null): [string, number][] {
  if (!config) return [];
  return Object.entries(config.priorities.classes).sort((a, b) => b[1] - a[1]);
}

export function priorityLabel(level: number, config: ConsoleConfig | null, name?: string): string {
  const known = name ?? priorityClasses(config).find(([, l]) => l === level)?.[0];
  return known ? `${known} (${level})` : String(level);
}

/**
 * Runs `fn` once, `ms` after the first call of a burst; calls during the wait are folded in.
 * (Not a debounce: on a busy server events never pause, and a debounce would never fire.)
 */
export function coalesce(fn: () => void, ms: number): { (): void; cancel(): void } {
  let t: ReturnType<typeof setTimeout> | null = null;
  const wrapped = () => {
    if (t) return;
    t = setTimeout(() => {
      t = null;
      fn();
    }, ms);
  };
  wrapped.cancel = () => {
    if (t) clearTimeout(t);
    t = null;
  };
  return wrapped;
}
