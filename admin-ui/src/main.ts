/**
 * The console's shell: login screen, navigation and a hash router (#/queue, #/messages/ID,
 * #/stats, #/destinations/DOMAIN, #/refusals, #/config, #/audit), so the admin server needs no fallback route and the back button
 * works. Each page renders into <main> and returns a cleanup for its timers and subscriptions.
 */
import './styles.css';
import { api, ApiError, clearToken, getToken, setToken, setUnauthorizedHandler } from './api';
import { h, mount } from './dom';
import { onLiveStatus, startEvents, stopEvents } from './events';
import { forgetConfig, noticeArea } from './ui';
import { renderQueue } from './pages/queue';
import { renderMessage } from './pages/message';
import { renderStats } from './pages/stats';
import { renderConfig } from './pages/config';
import { renderAudit } from './pages/audit';
import { renderRefusals } from './pages/refusals';
import { renderDestination } from './pages/destination';

export type Cleanup = (() => void) | void;
export type Page = (main: HTMLElement, params: URLSearchParams, rest: string[]) => Cleanup;

const app = document.getElementById('app')!;
let cleanup: Cleanup;
let loginMessage: string | null = null;
let unsubscribeLive: (() => void) | null = null;

const NAV: { path: string; label: string }[] = [
  { path: 'queue', label: 'Queue' },
  { path: 'stats', label: 'Statistics' },
  { path: 'refusals', label: 'Refusals' },
  { path: 'config', label: 'Configuration' },
  { path: 'audit', label: 'Audit log' },
];

function parseHash(): { path: string[]; params: URLSearchParams } {
  const raw = location.hash.replace(/^#\/?/, '');
  const [pathPart = '', queryPart = ''] = raw.split('?');
  const path = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  return { path: path.length ? path : ['queue'], params: new URLSearchParams(queryPart) };
}

function pageFor(name: string): Page | undefined {
  return ({ queue: renderQueue, messages: renderMessage, stats: renderStats, config: renderConfig, audit: renderAudit, refusals: renderRefusals, destinations: renderDestination } as Record<string, Page>)[name];
}

function renderLogin(): void {
  stopEvents();
  const input = h('input', { id: 'token', type: 'password', name: 'token', autocomplete: 'current-password', required: true, spellcheck: 'false' });
  const error = h('p', { class: 'form-error', role: 'alert' }, loginMessage ?? '');
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'login-card', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Spoolhouse console'),
    h('p', { class: 'muted' }, 'Sign in with the admin token: admin.token in the configuration, or the admin.token file in the spool directory when none is configured.'),
    h('div', { class: 'field' }, h('label', { for: 'token' }, 'Admin token'), input),
    error,
    button);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    button.disabled = true;
    error.textContent = '';
    try {
      // Any authenticated read proves the token; the config is needed on every page anyway.
      await api('GET', '/api/config', { token, quiet401: true });
      setToken(token);
      loginMessage = null;
      if (!location.hash || location.hash === '#/login') location.hash = '#/queue'; // hashchange renders
      else renderApp();
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 401
        ? 'That token was refused. Check it and try again.'
        : err instanceof Error ? err.message : String(err);
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  mount(app, h('div', { class: 'login' }, form));
  input.focus();
}

function shell(active: string): HTMLElement {
  const liveDot = h('span', { class: 'live', role: 'status', title: 'Live updates from the server' }, 'connecting…');
  unsubscribeLive?.();
  unsubscribeLive = onLiveStatus((live) => {
    liveDot.textContent = live ? 'live' : 'offline';
    liveDot.className = live ? 'live on' : 'live off';
    liveDot.title = live ? 'Receiving live updates from the server' : 'Live updates are disconnected; the console retries. Pages still refresh when you act.';
  });
  const main = h('main', { id: 'main', tabindex: '-1' });
  const header = h('header', { class: 'topbar' },
    h('a', { class: 'brand', href: '#/queue' }, 'Spoolhouse'),
    h('nav', { 'aria-label': 'Main' },
      h('ul', null, NAV.map((n) => h('li', null,
        h('a', { href: `#/${n.path}`, ...(n.path === active ? { 'aria-current': 'page' } : {}) }, n.label))))),
    liveDot,
    h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'));
  mount(app, h('a', { class: 'skip', href: '#main', onclick: (e: Event) => { e.preventDefault(); main.focus(); } }, 'Skip to content'), header, noticeArea(), main);
  return main;
}

function signOut(): void {
  clearToken();
  forgetConfig();
  loginMessage = 'You signed out.';
  stopEvents();
  location.hash = '#/login';
  renderLogin();
}

function renderApp(): void {
  if (typeof cleanup === 'function') cleanup();
  cleanup = undefined;
  if (!getToken()) {
    renderLogin();
    return;
  }
  const { path, params } = parseHash();
  if (path[0] === 'login') {
    location.replace('#/queue');
    return;
  }
  const active = path[0] === 'messages' ? 'queue' : path[0] === 'destinations' ? 'stats' : path[0]!;
  const main = shell(active);
  startEvents();
  const page = pageFor(path[0]!);
  if (!page) {
    mount(main, h('div', { class: 'empty-state' }, h('strong', null, 'No such page'), h('p', null, h('a', { href: '#/queue' }, 'Go to the queue'))));
    return;
  }
  cleanup = page(main, params, path.slice(1));
}

setUnauthorizedHandler((message) => {
  if (typeof cleanup === 'function') cleanup();
  cleanup = undefined;
  forgetConfig();
  loginMessage = message;
  renderLogin();
});

window.addEventListener('hashchange', renderApp);
renderApp();
