/**
 * Searching subject text in a big queue from the console (real Chromium, real admin server over a
 * real spool). Subject text has no index: the API answers it a slice of the queue per request, so
 * the first answers can be empty pages with a cursor. The console must keep searching and find
 * the one old mail that matches, never say "No mail matches" while part of the queue is unread.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import { startConsoleServer, TOKEN, type ConsoleServer } from './console-server.js';

/** Enough newer mail that the API's per-request budget (about 4,000 mails for a text filter) is crossed. */
const FILLER = 6_000;

let server: ConsoleServer;
let browser: Browser;

beforeAll(async () => {
  const ws = inject('browserWs');
  if (!ws) throw new Error('no browser: test/browser/global-setup.ts did not start Chromium');
  // The needle is the oldest mail: the console's default order (newest first) reaches it last.
  server = await startConsoleServer([{ subject: 'Needle in the queue 4242', to: ['n@needle.example'], ageMinutes: 600 }]);
  const now = Date.now();
  for (let i = 0; i < FILLER; i += 200) {
    await Promise.all(Array.from({ length: Math.min(200, FILLER - i) }, (_, j) =>
      server.enqueue({ subject: `Filler ${i + j}`, to: [`f${i + j}@filler.example`], receivedAt: now - (i + j) * 1000 })));
  }
  browser = await chromium.connect(ws);
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

describe('console search in a big queue', () => {
  it('keeps looking through the queue until the subject text is found', async () => {
    // The API alone: the first page of this search is empty but has a cursor (so the test proves the console's part).
    const first = await fetch(`${server.url}/api/messages?q=${encodeURIComponent('Needle in the queue')}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    const body = await first.json() as { items: unknown[]; nextCursor?: string };
    expect(body.items).toHaveLength(0);
    expect(body.nextCursor).toBeTruthy();

    const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 }, locale: 'en-GB', timezoneId: 'UTC' });
    const page = await ctx.newPage();
    page.setDefaultTimeout(20_000);
    await page.goto(`${server.url}/#/queue?q=${encodeURIComponent('Needle in the queue')}`);
    await page.getByLabel('Admin token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    const rows = page.getByRole('table', { name: 'Queued mail' }).locator('tbody tr');
    await rows.first().waitFor();
    expect(await rows.getByRole('link').allTextContents()).toEqual(['Needle in the queue 4242']);
    expect(await page.getByText('No mail matches these filters').count()).toBe(0);
    await ctx.close();
  });
});
