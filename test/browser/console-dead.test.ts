/**
 * A dead destination in the console (real Chromium; the real admin server, spool, scheduler and
 * delivery; a receiving SMTP server on loopback that refuses every session with a 421 greeting
 * whose text is hostile markup): the Statistics page lists the suspended destination with its
 * reply, and the deferral in its reply detail, shown as text.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import { startReceiver, type Receiver } from '../helpers/receiver.js';
import { waitFor } from '../scheduler/harness.js';
import { openConsolePage, startConsoleServer, TOKEN, type ConsoleServer } from './console-server.js';

const HOSTILE = '<img src=x onerror=alert(7)>';

let server: ConsoleServer;
let rx: Receiver;
/** Takes its mail and never answers the final ".": a connection stays open. */
let slow: Receiver;
let browser: Browser;

beforeAll(async () => {
  const ws = inject('browserWs');
  if (!ws) throw new Error('no browser: test/browser/global-setup.ts did not start Chromium');
  rx = await startReceiver({ script: { greeting: `421 4.3.2 ${HOSTILE} down` } });
  slow = await startReceiver({ script: { dataEnd: 'stall' } });
  server = await startConsoleServer([
    { subject: 'To a dead host', to: ['x@dead.example'], dueInMs: 0 },
    { subject: 'To a slow host', to: ['y@slow.example'], dueInMs: 0 },
  ], { deliveryRoutes: { 'dead.example': rx.address, 'slow.example': slow.address } });
  await waitFor('the destination suspended', () => server.scheduler!.suspendedDestinations().length === 1);
  await waitFor('the slow one being delivered', () => slow.transactions.some((t) => t.complete));
  browser = await chromium.connect(ws);
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
  await rx?.close();
  await slow?.close();
});

describe('console: dead destinations', () => {
  it('lists the suspended destination on the Statistics page, its reply as text', async () => {
    const { ctx, page, dialogs } = await openConsolePage(browser);
    await page.goto(`${server.url}/#/stats`);
    await page.getByLabel('Admin token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    const table = page.getByRole('table', { name: 'Suspended destinations' });
    await table.waitFor();
    const row = table.locator('tbody tr');
    expect(await row.count()).toBe(1);
    const cells = await row.locator('td').allTextContents();
    expect(cells[0]).toBe('dead.example');
    expect(cells[1]).toContain(rx.address.split(':')[0]);
    expect(cells[3]).toBe(`421 4.3.2 ${HOSTILE} down`);
    // The deferral it caused, in the reply detail: the destination links to its waiting mail.
    const detail = page.getByRole('table', { name: 'Deferrals and bounces by reply' });
    const cellsOf = await detail.locator('tbody tr').first().locator('td').allTextContents();
    expect(cellsOf.slice(0, 5)).toEqual(['deferred', 'dead.example', `421 4.3.2 ${HOSTILE} down`, 'connection', '1']);
    expect(await page.locator('section.replies .reply-kinds').textContent()).toBe('By kind: connection 1');
    expect(await detail.getByRole('link', { name: 'dead.example' }).getAttribute('href')).toBe('#/destinations/dead.example');
    // What it is delivering now: the slow destination, one connection open of the five allowed at first.
    const delivering = page.getByRole('table', { name: 'Delivering now' });
    expect(await delivering.locator('tbody tr').count()).toBe(1);
    expect(await delivering.locator('tbody tr td').allTextContents()).toEqual(['slow.example', slow.address, '1', '5', '20', '0']);
    expect(await delivering.getByRole('link', { name: 'slow.example' }).getAttribute('href')).toBe('#/destinations/slow.example');
    // Shown as characters: no element was made of it, no script ran.
    expect(await page.locator('section.suspended img').count()).toBe(0);
    expect(await page.locator('section.replies img').count()).toBe(0);
    expect(dialogs).toEqual([]);
    await ctx.close();
  });

  it('shows the destination on its own page, and pauses it and holds and releases its mail from there', async () => {
    const { ctx, page, dialogs } = await openConsolePage(browser);
    await page.goto(`${server.url}/#/stats`);
    await page.getByLabel('Admin token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('table', { name: 'Suspended destinations' }).getByRole('link', { name: 'dead.example' }).click();
    await page.waitForURL(/#\/destinations\/dead\.example$/);
    const cards = page.getByRole('list', { name: 'Waiting mail by state' });
    await cards.waitFor();
    expect(await cards.locator('li.state-queued .stat-value').textContent()).toBe('1');
    const delivery = page.getByRole('region', { name: 'Delivery' });
    await delivery.filter({ hasText: 'Suspended by this node (it tries again' }).waitFor();
    expect(await delivery.textContent()).toContain(`last reply 421 4.3.2 ${HOSTILE} down`);
    // Suspended, it is probed over one connection at a time when it resumes.
    expect(await delivery.textContent()).toContain('Connections on this node: 0 open, 1 allowed now of its limit of 20');
    expect(await page.getByRole('table', { name: 'Replies from dead.example' }).locator('tbody td').nth(1).textContent()).toBe(`421 4.3.2 ${HOSTILE} down`);
    expect(await page.locator('main img').count()).toBe(0);
    const where = page.getByRole('region', { name: 'Where its mail goes now' });
    await where.filter({ hasText: 'Through a route (delivery.routes)' }).waitFor();
    expect(await where.getByRole('list', { name: 'Hosts in order' }).textContent()).toBe(rx.address);

    await page.getByRole('button', { name: 'Pause delivery' }).click();
    await page.getByRole('button', { name: 'Resume delivery' }).waitFor();
    expect(server.config.current.delivery.paused).toEqual(['dead.example']);

    const id = server.ids.get('To a dead host')!;
    await page.getByRole('button', { name: 'Hold all' }).click();
    const hold = page.getByRole('dialog', { name: 'Hold 1 mail?' });
    await hold.filter({ hasText: 'Hold all 1 mail to dead.example.' }).waitFor();
    await hold.getByRole('button', { name: 'Hold 1 mail' }).click();
    await page.getByRole('status').filter({ hasText: '1 mail held (1 matched).' }).first().waitFor();
    expect((await server.queue.get(id))?.state).toBe('held');
    await page.getByRole('button', { name: 'Release all' }).click();
    const release = page.getByRole('dialog', { name: 'Release 1 mail?' });
    await release.filter({ hasText: 'Release all 1 mail to dead.example (held).' }).waitFor();
    await release.getByRole('button', { name: 'Release 1 mail' }).click();
    await page.getByRole('status').filter({ hasText: '1 mail released (1 matched).' }).first().waitFor();
    expect((await server.queue.get(id))?.state).not.toBe('held');

    await page.getByRole('button', { name: 'Resume delivery' }).click();
    await page.getByRole('button', { name: 'Pause delivery' }).waitFor();
    expect(server.config.current.delivery.paused).toEqual([]);
    expect(dialogs).toEqual([]);
    await page.screenshot({ path: join(import.meta.dirname, '..', 'screenshots', 'destination.png'), fullPage: true });
    await ctx.close();
  });
});
