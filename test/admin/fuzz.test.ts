/**
 * Bad input to the admin API gets a 4xx with a JSON message, never a 500, whatever it is: seeded
 * random requests against the real server over a populated spool, on every route, with ids real
 * and made up, filters and query parameters of every kind and value, bodies right, wrong, broken
 * or not JSON at all, and tokens of both roles, none, or wrong. Checked for each request: no 5xx
 * but 503 (a part this server does not run); every 4xx and 503 is `{ statusCode, error, message }`
 * with the same status; a viewer never changes
 * anything (403 before any check that could tell what exists). At the end the API still answers and
 * the spool's counts still agree with a full browse.
 * A failure names the seed and the request; FUZZ_SEED=N repeats it, FUZZ_REQUESTS=N makes it longer.
 */
import { describe, expect, it } from 'vitest';
import { FILTER_KEYS } from '../../src/admin/filters.js';
import { BULK_ACTIONS } from '../../src/admin/routes/messages.js';
import { seededRandom } from '../helpers/rng.js';
import { OPERATOR, VIEWER, populate, startHarness } from './harness.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261205);
const REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 400);

const ROUTES: [method: string, path: string][] = [
  ['GET', '/api/messages'], ['POST', '/api/messages/actions'], ['GET', '/api/messages/:id'], ['GET', '/api/messages/:id/raw'],
  ['DELETE', '/api/messages/:id'], ['POST', '/api/messages/:id/hold'], ['POST', '/api/messages/:id/release'],
  ['POST', '/api/messages/:id/retry'], ['POST', '/api/messages/:id/bounce'], ['POST', '/api/messages/:id/redirect'],
  ['PATCH', '/api/messages/:id'], ['GET', '/api/stats'], ['GET', '/api/stats/history'], ['GET', '/api/stats/replies'],
  ['GET', '/api/destinations/:domain'], ['GET', '/api/refusals'], ['GET', '/api/audit'], ['GET', '/api/config'],
  ['PUT', '/api/config'], ['POST', '/api/rules/test'], ['GET', '/health'], ['GET', '/metrics'],
  ['GET', '/api/openapi.json'], ['GET', '/api/nothing-here'], ['POST', '/api/stats'], ['PUT', '/api/messages/:id'],
];
const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const QUERY_NAMES = [...FILTER_KEYS, 'sort', 'order', 'limit', 'cursor', 'kind', 'outcome', 'window', 'client', 'text', 'reason', 'since', 'action', 'unknown', ''];
const VALUES = [
  '', 'queued', 'held', 'active', 'sent', 'nope', 'urgent', 'bulk', '30', '-1', '0', '1e309', 'NaN', '99999999999999999999', '2026-12-05',
  '2026-13-45T99:99', 'example.org', '*@example.org', '"', "'", '<script>', '%00', '\u0000', '\u202e', 'ü', '🙂', '..', '../../etc/passwd',
  'x'.repeat(5000), 'true', 'null', '[]', '{}', 'received', 'priority', 'asc', 'desc', 'eyJ4IjoxfQ', '550', '5.7.1', '4', 'deferred,held',
];
const BODIES: unknown[] = [
  undefined, {}, [], null, 0, 'text', { filter: {}, action: 'hold', dryRun: true }, { filter: { state: 'held' }, action: 'release' },
  { filter: { state: 'queued' }, action: 'priority', priority: 'nope' }, { filter: { nope: 1 }, action: 'remove' }, { filter: {}, action: 'explode' },
  { priority: 'urgent' }, { priority: 12 }, { priority: -5 }, { notBefore: 'tomorrow' }, { notBefore: 1e20 }, { notBefore: '2026-12-05T10:00:00Z' },
  { from: 'a@example.org', to: 'b@example.org' }, { from: 'nobody', to: 'x' }, { to: 'c@example.org' }, { reason: 'x'.repeat(600) },
  { smtp: { maxRecipients: 'many' } }, { rules: [{ name: 'r', match: { sender: '*' }, priority: 'nope' }] }, { admin: { token: 'short' } },
  { mail: { sender: 'a@b', recipients: ['c@d'] } }, { sender: 42 }, { priorities: { classes: { x: 500 } } }, { delivery: { routes: { 'bad domain': 'x' } } },
];

describe('the admin API under random requests', () => {
  it(`answers every bad request with a 4xx and a JSON message, never a 5xx (seed ${SEED})`, async () => {
    const h = await startHarness();
    try {
      const mails = [...(await populate(h)).values()];
      const rnd = seededRandom(SEED);
      const int = (n: number) => Math.floor(rnd() * n);
      const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
      const problems: string[] = [];
      const statuses = new Map<number, number>();
      for (let i = 0; i < REQUESTS; i++) {
        const [method, template] = pick(ROUTES);
        const id = rnd() < 0.5 ? pick(mails).id : pick(['NOPE', '01ARZ3NDEKTSV4RRFFQ69G5FAV', 'x'.repeat(300), '%2e%2e', '%00', 'ü', '123']);
        let path = template.replace(':id', encodeURIComponent(id).replace(/%25/g, '%')).replace(':domain', encodeURIComponent(pick(['example.org', 'slow.example', 'nope', '', 'ü.example', 'a'.repeat(300)])) || 'x');
        const query: string[] = [];
        for (let n = int(4); n > 0; n--) query.push(`${encodeURIComponent(pick(QUERY_NAMES))}=${encodeURIComponent(pick(VALUES))}`);
        if (rnd() < 0.1) query.push('state=queued&state=held'); // a repeated key
        if (query.length) path += `?${query.join('&')}`;
        const tokenRoll = rnd();
        const token = tokenRoll < 0.6 ? OPERATOR : tokenRoll < 0.85 ? VIEWER : tokenRoll < 0.95 ? null : 'wrong-token-0123456789';
        const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
        let body: string | undefined;
        if (method !== 'GET' && method !== 'DELETE') {
          const kind = rnd();
          if (kind < 0.7) {
            const b = pick(BODIES);
            if (b !== undefined) body = JSON.stringify(b);
            if (b && typeof b === 'object' && 'action' in b && rnd() < 0.5) body = JSON.stringify({ ...b, action: pick(BULK_ACTIONS) });
            if (body !== undefined) headers['content-type'] = 'application/json';
          } else if (kind < 0.85) {
            body = pick(['{', '{"a":', 'not json', '\u0000', '[1,2', '{"filter":{}}{"x":1}']);
            headers['content-type'] = 'application/json';
          } else {
            body = 'filter=x&action=hold';
            headers['content-type'] = pick(['text/plain', 'application/x-www-form-urlencoded', 'application/xml']);
          }
        }
        const where = `seed ${SEED}, request ${i}: ${method} ${path.slice(0, 200)} (${token === OPERATOR ? 'operator' : token === VIEWER ? 'viewer' : token ? 'wrong token' : 'no token'}) ${body?.slice(0, 100) ?? ''}`;
        const res = await fetch(h.url + path, { method, headers, ...(body !== undefined ? { body } : {}) });
        const text = await res.text();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        // 503 is a part that is not there (this harness runs no delivery for /destinations): allowed, with its message.
        if (res.status >= 500 && res.status !== 503) problems.push(`${where} -> ${res.status} ${text.slice(0, 300)}`);
        if (res.status >= 400 && res.status < 600) {
          let err: { statusCode?: unknown; error?: unknown; message?: unknown } | undefined;
          try {
            err = JSON.parse(text) as typeof err;
          } catch {
            err = undefined;
          }
          if (!err || err.statusCode !== res.status || typeof err.message !== 'string' || !err.message || typeof err.error !== 'string') {
            problems.push(`${where} -> ${res.status} without a JSON error: ${text.slice(0, 200)}`);
          }
        }
        if (token === VIEWER && MUTATING.has(method) && template !== '/api/rules/test' && res.status < 400) {
          problems.push(`${where} -> ${res.status}: a viewer changed something`);
        }
      }
      expect(problems).toEqual([]);
      // The random requests reached well past the door: successes, not-found, conflicts and bad input.
      for (const s of [200, 400, 401, 403, 404]) expect(statuses.get(s) ?? 0, `responses with ${s}`).toBeGreaterThan(0);

      const health = await h.json('GET', '/health');
      expect(health.status).toBe(200);
      const stats = await h.json<{ byState: Record<string, number> }>('GET', '/api/stats');
      const all = await h.queue.browse({}, { sort: 'received', order: 'asc', limit: 1000 });
      expect(stats.status).toBe(200);
      expect(Object.values(stats.body.byState).reduce((a, b) => a + b, 0)).toBe(all.items.length);
    } finally {
      await h.close();
    }
  });
});
