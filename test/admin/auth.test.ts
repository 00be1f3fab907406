/**
 * Who may do what: every route refuses a missing or wrong token with 401 and no data, a viewer
 * reads but cannot change (403), /health and the console's files are public, a generated token
 * is written once with mode 0600 and its path (never the token) logged, and the console is
 * served with a strict Content-Security-Policy.
 */
import { mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPERATOR, VIEWER, startHarness, type Harness } from './harness.js';

let h: Harness;
let mailId: string;
let uiDir: string;

beforeAll(async () => {
  uiDir = mkdtempSync(join(tmpdir(), 'spoolhouse-ui-'));
  mkdirSync(join(uiDir, 'assets'));
  writeFileSync(join(uiDir, 'index.html'), '<!doctype html><title>console</title><script type="module" src="./assets/app.js"></script>');
  writeFileSync(join(uiDir, 'assets', 'app.js'), 'console.log("console")');
  h = await startHarness({ uiDir });
  mailId = (await h.enqueue({ subject: 'secret subject' })).id;
});
afterAll(async () => {
  await h?.close();
  rmSync(uiDir, { recursive: true, force: true });
});

const ROUTES: [string, string, unknown?][] = [
  ['GET', '/api/messages'],
  ['GET', '/api/messages/ID'],
  ['GET', '/api/messages/ID/raw'],
  ['DELETE', '/api/messages/ID'],
  ['POST', '/api/messages/ID/hold'],
  ['POST', '/api/messages/ID/release'],
  ['POST', '/api/messages/ID/retry'],
  ['POST', '/api/messages/ID/bounce'],
  ['POST', '/api/messages/ID/redirect', { from: 'a@b.example', to: 'c@d.example' }],
  ['PATCH', '/api/messages/ID', { priority: 'bulk' }],
  ['POST', '/api/messages/actions', { filter: {}, action: 'remove' }],
  ['GET', '/api/stats'],
  ['GET', '/api/events'],
  ['GET', '/api/config'],
  ['PUT', '/api/config', { rules: [] }],
  ['POST', '/api/rules/test', { sender: 'a@b.c', recipients: ['d@e.f'] }],
  ['GET', '/api/audit'],
  ['GET', '/metrics'],
  ['GET', '/api/no-such-route'],
];

describe('tokens', () => {
  it.each(ROUTES)('%s %s: 401 without a token and with a wrong one, and no data', async (method, path, body) => {
    for (const token of [null, 'wrong-token-0123456789abcdef', OPERATOR + 'x', '']) {
      const res = await h.api(method, path.replace('ID', mailId), { token, ...(body ? { body } : {}) });
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
      const text = await res.text();
      expect(JSON.parse(text)).toMatchObject({ statusCode: 401, error: 'Unauthorized' });
      expect(text).not.toContain('secret subject');
      expect(text).not.toContain(mailId);
    }
    expect((await h.queue.get(mailId))!.state).toBe('queued');
  });

  it('a token in the query string is not accepted', async () => {
    const res = await fetch(`${h.url}/api/messages?access_token=${OPERATOR}`);
    expect(res.status).toBe(401);
  });

  it('a viewer reads, may test rules, and gets 403 for every change', async () => {
    expect((await h.json('GET', '/api/messages', { token: VIEWER })).status).toBe(200);
    expect((await h.json('GET', `/api/messages/${mailId}`, { token: VIEWER })).status).toBe(200);
    expect((await h.json('GET', '/api/stats', { token: VIEWER })).status).toBe(200);
    expect((await h.json('GET', '/api/audit', { token: VIEWER })).status).toBe(200);
    expect((await h.json('POST', '/api/rules/test', { token: VIEWER, body: { sender: 'a@b.c', recipients: ['d@e.f'] } })).status).toBe(200);
    const changes = ROUTES.filter(([m, p]) => m !== 'GET' && p !== '/api/rules/test');
    for (const [method, path, body] of changes) {
      const r = await h.json(method, path.replace('ID', mailId), { token: VIEWER, ...(body ? { body } : {}) });
      expect(r.status, `${method} ${path}`).toBe(403);
      expect(r.body).toMatchObject({ statusCode: 403, error: 'Forbidden' });
    }
    expect((await h.queue.get(mailId))!.state).toBe('queued');
    expect(h.config.current.rules).toEqual([]);
  });

  it('the operator token works, and tokens never reach the log', async () => {
    expect((await h.json('POST', `/api/messages/${mailId}/hold`)).status).toBe(200);
    expect((await h.json('POST', `/api/messages/${mailId}/release`)).status).toBe(200);
    const log = h.logLines.join('\n');
    expect(log).not.toContain(OPERATOR);
    expect(log).not.toContain(VIEWER);
  });
});

describe('public routes', () => {
  it('GET /health needs no token and says the backend', async () => {
    const r = await h.json('GET', '/health', { token: null });
    expect(r).toEqual({ status: 200, body: { status: 'ok', backend: 'spool' } });
  });

  it('serves the console with a strict CSP, and index.html for client-side paths', async () => {
    for (const path of ['/', '/queue', '/messages/123']) {
      const res = await fetch(h.url + path);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/text\/html/);
      expect(await res.text()).toContain('<title>console</title>');
      const csp = res.headers.get('content-security-policy')!;
      expect(csp).toContain("script-src 'self'");
      expect(csp).not.toMatch(/script-src[^;]*unsafe-inline/);
      expect(csp).toContain("object-src 'none'");
    }
    const js = await fetch(h.url + '/assets/app.js');
    expect(js.status).toBe(200);
    expect(await js.text()).toContain('console.log');
    // API paths never fall back to the console.
    const api = await fetch(h.url + '/api/nothing-here', { headers: { authorization: `Bearer ${OPERATOR}` } });
    expect(api.status).toBe(404);
    expect(await api.json()).toMatchObject({ statusCode: 404 });
  });

  it('API responses carry the CSP and nosniff too', async () => {
    const res = await h.api('GET', '/api/messages');
    expect(res.headers.get('content-security-policy')).toContain("default-src 'self'");
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
  });

  it('serves the OpenAPI description and the interactive docs', async () => {
    const spec = await (await fetch(h.url + '/api/openapi.json')).json();
    expect(spec.openapi).toMatch(/^3\./);
    for (const p of ['/api/messages', '/api/messages/{id}', '/api/messages/{id}/raw', '/api/messages/{id}/hold', '/api/messages/actions', '/api/stats', '/api/events', '/api/config', '/api/rules/test', '/api/audit', '/metrics', '/health']) {
      expect(spec.paths[p], p).toBeDefined();
    }
    expect(spec.paths['/api/messages'].get.parameters.map((x: any) => x.name)).toEqual(expect.arrayContaining(['state', 'priority', 'domain', 'cursor', 'limit', 'sort']));
    expect(spec.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    const docs = await fetch(h.url + '/api/docs/');
    expect(docs.status).toBe(200);
    expect(await docs.text()).toMatch(/swagger/i);
  });
});

describe('generated token', () => {
  it('with no token configured, writes one to <dataDir>/admin.token (0600), logs the path only, and keeps it across restarts', async () => {
    const g = await startHarness({ admin: { listen: '127.0.0.1:0', token: null, tokens: [] } });
    try {
      const file = join(g.dir, 'admin.token');
      const token = readFileSync(file, 'utf8').trim();
      expect(token.length).toBeGreaterThanOrEqual(32);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const log = g.logLines.join('\n');
      expect(log).toContain(file);
      expect(log).not.toContain(token);
      expect((await g.json('GET', '/api/messages', { token })).status).toBe(200);
      expect((await g.json('GET', '/api/messages', { token: OPERATOR })).status).toBe(401);
      // A second server on the same data dir uses the same token.
      const { createAdminServer } = await import('../../src/admin/index.js');
      const again = await createAdminServer({ config: g.config, queue: g.queue, logger: g.admin.app.log as any, metrics: g.metrics, dataDir: g.dir });
      const url = await again.listen();
      const res = await fetch(url + '/api/stats', { headers: { authorization: `Bearer ${token}` } });
      expect(res.status).toBe(200);
      await again.close();
      expect(readFileSync(file, 'utf8').trim()).toBe(token);
    } finally {
      await g.close();
    }
  });
});
