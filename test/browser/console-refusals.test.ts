/**
 * The door in the console (real Chromium; the real admin server, spool and SMTP ingress, with
 * loopback outside relay.networks so that it can be refused): the Refusals page lists what the
 * ingress refused, with a hostile command shown as text, filters by reason, and blocks a client,
 * which the ingress then refuses; the Configuration page's "Checks at the door" switches on a
 * HELO check that the ingress then applies, and shows the server's validation message.
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { SmtpClient } from '../helpers/smtp-client.js';
import { openConsolePage, startConsoleServer, TOKEN, type ConsoleServer } from './console-server.js';

const SHOTS = join(import.meta.dirname, '..', 'screenshots');
const HOSTILE = '<img src=x onerror=alert(8)>';

let server: ConsoleServer;
let browser: Browser;

/** A greeted session from 127.0.0.1 (an outside client here). */
async function session(helo = 'client.example'): Promise<SmtpClient> {
  const c = await SmtpClient.connect({ port: server.smtpPort! });
  expect((await c.read()).code).toBe(220);
  expect((await c.ehlo(helo)).code).toBe(250);
  return c;
}

async function signIn(page: Page, hash: string): Promise<void> {
  await page.goto(`${server.url}/${hash}`);
  await page.getByLabel('Admin token').fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('navigation', { name: 'Main' }).waitFor();
}

async function expectText(where: Locator, text: string): Promise<void> {
  await where.filter({ hasText: text }).first().waitFor();
}

beforeAll(async () => {
  const ws = inject('browserWs');
  if (!ws) throw new Error('no browser: test/browser/global-setup.ts did not start Chromium');
  server = await startConsoleServer([], { ingress: { relay: { networks: [], domains: ['local.example'] } } });
  const c = await session();
  expect((await c.command('MAIL FROM:<someone@outside.example>')).code).toBe(250);
  expect((await c.command('RCPT TO:<x@elsewhere.example>')).code).toBe(554);
  expect((await c.command(`XYZZY ${HOSTILE}`)).code).toBe(500);
  await c.quit();
  browser = await chromium.connect(ws);
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

describe('console: the door', () => {
  it('lists the refusals with hostile text as text, filters by reason, and blocks a client', async () => {
    const { ctx, page, dialogs } = await openConsolePage(browser);
    await signIn(page, '#/refusals');
    const table = page.getByRole('table', { name: 'Refusals' });
    await table.waitFor();
    const rows = table.locator('tbody tr');
    expect(await rows.count()).toBe(2);
    const [junk, relay] = [await rows.nth(0).locator('td').allTextContents(), await rows.nth(1).locator('td').allTextContents()];
    expect(junk[4]).toBe(`XYZZY ${HOSTILE}`);
    expect(relay.slice(1, 7)).toEqual(['127.0.0.1', 'client.example', 'someone@outside.example', 'RCPT TO:<x@elsewhere.example>', expect.stringMatching(/^554 5\.7\.1 /), 'relay']);
    expect(await page.locator('table.refusals img').count()).toBe(0);
    // The server started moments ago: its rates cover the seconds since, and the page says so.
    await expectText(page.locator('.reason-rates'), 'refused a minute over the');
    expect(await page.locator('.reason-rates').textContent()).toMatch(/refused a minute over the ([1-5]?\d s since this node started|last minute): relay/);
    await expectText(page.locator('.page-head .summary'), `node ${hostname()} keeps the last 1,000`);
    await page.screenshot({ path: join(SHOTS, 'refusals.png'), fullPage: true });

    // The reason's link in the rate summary filters the table, and the filter lands in the URL.
    await page.locator('.reason-rates').getByRole('link', { name: 'relay' }).click();
    await page.waitForURL(/#\/refusals\?reason=relay$/);
    await expectText(page.getByRole('status'), 'match the filters');
    const filtered = page.getByRole('table', { name: 'Refusals' }).locator('tbody tr');
    expect(await filtered.count()).toBe(1);
    expect(await page.getByLabel('Reason').inputValue()).toBe('relay');

    await filtered.first().getByRole('button', { name: 'Block 127.0.0.1' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Block 127.0.0.1' }).click();
    await page.getByRole('status').filter({ hasText: '127.0.0.1 is blocked at the door.' }).first().waitFor();
    expect(server.config.current.relay.reject).toEqual([{ client: ['127.0.0.1'] }]);
    // The ingress refuses the client from now on.
    const c = await session();
    const refused = await c.command('MAIL FROM:<someone@outside.example>');
    expect([refused.code, refused.enhanced]).toEqual([554, '5.7.1']);
    await c.quit();
    expect(dialogs).toEqual([]);
    server.config.update({ relay: { reject: [] } });
    await ctx.close();
  });

  it('switches the door\'s DNS checks on from the Configuration page, validated by the server', async () => {
    const { ctx, page } = await openConsolePage(browser);
    await signIn(page, '#/config');
    const form = page.getByRole('form', { name: 'Checks at the door' });
    await form.getByRole('button', { name: 'Save checks' }).click();
    await expectText(form.getByRole('alert'), 'Nothing changed.');

    await form.getByRole('button', { name: 'Add blocklist' }).click();
    await form.getByLabel('Blocklist zone').fill('not a zone!');
    await form.getByRole('button', { name: 'Save checks' }).click();
    await expectText(form.getByRole('alert'), 'smtp.dnsbl.0.zone');
    expect(server.config.current.smtp.dnsbl).toEqual([]);

    await form.getByLabel('Blocklist zone').fill('bl.example.org');
    await form.getByLabel('Listing answers of the new zone').fill('127.0.0.2, 127.0.0.3');
    await form.getByLabel('Refuse a HELO name that is not fully qualified').check();
    await form.getByLabel('Check SPF at MAIL FROM').check();
    await form.getByLabel('Refuse softfail').check();
    await form.getByRole('button', { name: 'Save checks' }).click();
    await page.getByRole('status').filter({ hasText: 'Checks at the door saved' }).first().waitFor();
    const smtp = server.config.current.smtp;
    expect(smtp.dnsbl).toEqual([{ zone: 'bl.example.org', answers: ['127.0.0.2', '127.0.0.3'] }]);
    expect(smtp.helo).toEqual({ rejectInvalid: false, rejectNonFqdn: true, rejectUnknown: false });
    expect(smtp.spf).toEqual({ check: true, reject: ['fail', 'softfail'] });
    expect(server.config.current.relay.checkSenderDomain).toBe(false);
    // The page shows what was saved.
    const saved = page.getByRole('form', { name: 'Checks at the door' });
    await saved.screenshot({ path: join(SHOTS, 'door-checks.png') });
    expect(await saved.getByLabel('Blocklist zone').inputValue()).toBe('bl.example.org');
    expect(await saved.getByLabel('Refuse a HELO name that is not fully qualified').isChecked()).toBe(true);

    // Switch the SPF and blocklist checks off again (they would ask DNS); the HELO check stays, and applies.
    await saved.getByLabel('Check SPF at MAIL FROM').uncheck();
    await saved.getByRole('button', { name: 'Remove bl.example.org' }).click();
    await saved.getByRole('button', { name: 'Save checks' }).click();
    await page.getByRole('status').filter({ hasText: 'Checks at the door saved' }).first().waitFor();
    expect(server.config.current.smtp.dnsbl).toEqual([]);
    expect(server.config.current.smtp.spf.check).toBe(false);
    const c = await session('localhost');
    expect((await c.command('MAIL FROM:<someone@outside.example>')).code).toBe(250);
    const refused = await c.command('RCPT TO:<user@local.example>');
    expect([refused.code, refused.enhanced, refused.text]).toEqual([504, '5.5.2', '<localhost>: Helo command rejected: need fully-qualified hostname']);
    await c.quit();
    await ctx.close();
  });
});
