/**
 * The web console in a real Chromium against the real admin server and spool (see
 * console-server.ts): sign-in, filtering, a message's page, hold/release/remove, a bulk removal
 * by domain with its confirmation count, the statistics charts, editing a rule and seeing it
 * apply, live updates over SSE, and mail content (the XSS subject) shown as text. Screenshots of
 * the main pages go to test/screenshots/ (git-ignored) for a person to look at.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { openConsolePage, startConsoleServer, TOKEN, VIEWER_TOKEN, XSS_SUBJECT, type ConsoleServer } from './console-server.js';

const SHOTS = join(import.meta.dirname, '..', 'screenshots');

let server: ConsoleServer;
let browser: Browser;

const MAILS = [
  { subject: 'Quarterly report', to: ['bob@example.com'] },
  { subject: 'Hold me', to: ['carol@example.com'] },
  { subject: 'Remove me', to: ['dave@example.com'] },
  { subject: 'Bounce me', to: ['gina@example.com'] },
  { subject: 'Campaign 1', from: 'promo@corp.example', to: ['a@campaign.example'] },
  { subject: 'Campaign 2', from: 'promo@corp.example', to: ['b@campaign.example'] },
  { subject: 'Deferred once', to: ['erin@slow.example', 'frank@slow.example'], priority: 30 },
  { subject: 'Newsletter 1', from: 'news@corp.example', to: ['a@bulk.example'], priority: 0 },
  { subject: 'Newsletter 2', from: 'news@corp.example', to: ['b@bulk.example'], priority: 0 },
  { subject: 'Newsletter 3', from: 'news@corp.example', to: ['c@bulk.example', 'keep@example.com'], priority: 0 },
  {
    subject: XSS_SUBJECT,
    from: 'mallory@evil.example',
    to: ['victim@xss.example'],
    text: '<script>alert(2)</script><b>not bold</b>\r\n',
    extraHeaders: ['X-Evil: <svg onload=alert(3)>'],
    attachment: { filename: '<img src=y onerror=alert(4)>.txt', content: 'attached' },
  },
];

/** Mails to page.example, more than one page of the queue browser (50 a page). */
const PAGED = 53;

function idOf(subject: string): string {
  const id = server.ids.get(subject);
  if (!id) throw new Error(`no mail "${subject}"`);
  return id;
}

async function stateOf(subject: string): Promise<string | undefined> {
  return (await server.queue.get(idOf(subject)))?.state;
}

/** A fresh context per test (see openConsolePage). */
function openPage(): Promise<{ ctx: BrowserContext; page: Page; dialogs: string[] }> {
  return openConsolePage(browser);
}

async function signIn(page: Page, hash = '#/queue', token = TOKEN): Promise<void> {
  await page.goto(`${server.url}/${hash}`);
  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('navigation', { name: 'Main' }).waitFor();
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

beforeAll(async () => {
  const ws = inject('browserWs');
  if (!ws) throw new Error('no browser: test/browser/global-setup.ts did not start Chromium (is it in vitest.config.ts globalSetup?)');
  mkdirSync(SHOTS, { recursive: true });
  server = await startConsoleServer([
    ...MAILS,
    // Older than the rest (1.5 to 3 hours), so they sort after them and shade the heatmap's older columns.
    ...Array.from({ length: PAGED }, (_, i) => ({ subject: `Paged ${i + 1}`, to: [`p${i}@page.example`], priority: 0, receivedAt: Date.now() - 5_400_000 - i * 100_000 })),
  ]);
  // One real delivery attempt that deferred, so the message page has a reply and a timeline.
  const [reserved] = await server.queue.reserveDue({ owner: 'browser-test', limit: 1, leaseMs: 60_000, now: Date.now() + 3_700_000, lowPriorityShare: 0 });
  if (!reserved) throw new Error('could not reserve a mail for the deferred attempt');
  const reply = { code: 451, enhanced: '4.7.1', message: 'Greylisted, try again later' };
  await server.queue.recordAttempt(reserved.id, reserved.lease!.token, {
    outcomes: reserved.recipients.map((r) => ({ address: r.address, outcome: 'deferred' as const, reply, remoteHost: 'mx1.slow.example' })),
    history: [{ at: Date.now(), host: 'mx1.slow.example', recipients: reserved.recipients.map((r) => r.address), outcome: 'deferred', reply, durationMs: 840 }],
    retryAt: Date.now() + 1_800_000,
  });
  browser = await chromium.connect(ws);
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

describe('web console', () => {
  it('refuses a wrong token and signs in with the right one', async () => {
    const { ctx, page } = await openPage();
    await page.goto(`${server.url}/`);
    await page.getByLabel('Admin token').fill('not-the-token-at-all-000000');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expectText(page.getByRole('alert'), 'That token was refused');
    expect(await page.getByRole('navigation', { name: 'Main' }).count()).toBe(0);
    expect(await page.evaluate(() => sessionStorage.getItem('spoolhouse.token'))).toBeNull();
    await shot(page, 'login');

    await page.getByLabel('Admin token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Queue' }).waitFor();
    await page.getByRole('link', { name: 'Quarterly report' }).waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem('spoolhouse.token'))).toBe(TOKEN);
    await ctx.close();
  });

  it('goes back to the login screen with a message when the token stops working', async () => {
    const { ctx, page } = await openPage();
    await signIn(page);
    await page.evaluate(() => sessionStorage.setItem('spoolhouse.token', 'revoked-token-000000000000'));
    await page.reload();
    await page.getByLabel('Admin token').waitFor();
    await expectText(page.getByRole('alert'), 'refused your token');
    await ctx.close();
  });

  it('lets a viewer token read but tells it that changes need an operator token', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, `#/messages/${idOf('Quarterly report')}`, VIEWER_TOKEN);
    await page.getByRole('heading', { name: 'Quarterly report' }).waitFor();
    await page.getByRole('button', { name: 'Hold', exact: true }).click();
    await expectText(page.locator('.notice-error'), 'may only read');
    expect(await stateOf('Quarterly report')).toBe('queued');
    await ctx.close();
  });

  it('filters the queue by recipient domain and sorts by priority', async () => {
    const { ctx, page } = await openPage();
    await signIn(page);
    await page.getByRole('link', { name: 'Quarterly report' }).waitFor();
    await shot(page, 'queue');
    await page.getByLabel('Recipient domain').fill('bulk.example');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    await expectText(page.locator('.summary'), '3 mails match the filters');
    const rows = page.getByRole('table', { name: 'Queued mail' }).locator('tbody tr');
    expect(await rows.count()).toBe(3);
    expect((await rows.allTextContents()).every((t) => t.includes('bulk.example'))).toBe(true);
    expect(page.url()).toContain('domain=bulk.example');

    // By what the last reply said: the greylisted one.
    await page.getByLabel('Recipient domain').fill('');
    await page.getByLabel('Last reply contains').fill('greylisted');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    await expectText(page.locator('.summary'), '1 mail matches the filters');
    expect(page.url()).toContain('reply=greylisted');
    await page.getByRole('link', { name: 'Deferred once' }).waitFor();

    await page.getByRole('button', { name: 'Clear filters' }).click();
    await page.getByRole('link', { name: 'Quarterly report' }).waitFor();
    await page.getByRole('button', { name: 'Sort by priority' }).click();
    await page.locator('th[aria-sort="descending"]', { hasText: 'Priority' }).waitFor();
    // Highest priority first: the urgent (30) deferred mail leads.
    await expectText(page.getByRole('table', { name: 'Queued mail' }).locator('tbody tr').first(), 'Deferred once');
    await ctx.close();
  });

  it('shows a message with its recipients, last reply and attempt timeline', async () => {
    const { ctx, page } = await openPage();
    await signIn(page);
    await page.getByRole('link', { name: 'Deferred once' }).click();
    await page.getByRole('heading', { name: 'Deferred once' }).waitFor();
    const recipients = page.getByRole('table', { name: 'Recipients' });
    await expectText(recipients, 'erin@slow.example');
    await expectText(recipients, '451 4.7.1 Greylisted, try again later');
    await expectText(recipients, 'deferred');
    // The kind of trouble its reply tells of.
    expect(await recipients.locator('tr', { hasText: 'erin@slow.example' }).locator('td.reply .badge').textContent()).toBe('greylisted');
    await expectText(page.getByRole('list', { name: 'Attempt timeline' }), 'mx1.slow.example');
    await expectText(page.getByRole('table', { name: 'Headers' }), 'Message-ID');
    await expectText(page.getByLabel('Text preview'), 'This is "Deferred once".');
    await shot(page, 'message');

    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download raw (.eml)' }).click()]);
    expect(download.suggestedFilename()).toBe(`${idOf('Deferred once')}.eml`);
    // The browser runs behind a websocket (launchServer), so read the download as a stream.
    const chunks: Buffer[] = [];
    for await (const chunk of await download.createReadStream()) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    expect(raw).toMatch(/^Received: from client\.test/);
    expect(raw).toContain('Subject: Deferred once\r\n');
    await ctx.close();
  });

  it('holds and releases a mail from its page', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, `#/messages/${idOf('Hold me')}`);
    await page.getByRole('heading', { name: 'Hold me' }).waitFor();
    await page.getByRole('button', { name: 'Hold', exact: true }).click();
    await page.getByRole('button', { name: 'Release' }).waitFor();
    await expectText(page.locator('.page-head .badge'), 'held');
    expect(await stateOf('Hold me')).toBe('held');

    await page.getByRole('button', { name: 'Release' }).click();
    await page.getByRole('button', { name: 'Hold', exact: true }).waitFor();
    await expectText(page.locator('.page-head .badge'), 'queued');
    expect(await stateOf('Hold me')).toBe('queued');
    await ctx.close();
  });

  it('removes one mail after a confirmation', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, `#/messages/${idOf('Remove me')}`);
    await page.getByRole('heading', { name: 'Remove me' }).waitFor();
    await page.getByRole('button', { name: 'Remove', exact: true }).click();
    const dialog = page.getByRole('dialog', { name: 'Remove 1 mail?' });
    await dialog.waitFor();
    await dialog.getByRole('button', { name: 'Remove 1 mail' }).click();
    await expectText(page.locator('.page-head .badge'), 'removed');
    expect(await stateOf('Remove me')).toBe('removed');
    await ctx.close();
  });

  it('bounces one mail with a reason for its sender, after a confirmation', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, `#/messages/${idOf('Bounce me')}`);
    await page.getByRole('heading', { name: 'Bounce me' }).waitFor();
    await page.getByRole('button', { name: 'Bounce', exact: true }).click();
    const dialog = page.getByRole('dialog', { name: 'Bounce 1 mail?' });
    await dialog.waitFor();
    await expectText(dialog, 'gets a delivery status notification');
    await dialog.getByLabel('Reason, told to the sender').fill('<b>sent to the wrong list</b>');
    await dialog.getByRole('button', { name: 'Bounce 1 mail' }).click();
    // Shown as text, never as markup.
    await expectText(page.locator('.hold-reason'), 'To be bounced: <b>sent to the wrong list</b>');
    expect((await server.queue.get(idOf('Bounce me')))?.bounceRequest?.reason).toBe('<b>sent to the wrong list</b>');
    await ctx.close();
  });

  it('bounces one recipient of a mail, the others left to go on', async () => {
    const m = await server.enqueue({ subject: 'One misspelt recipient', to: ['friend@gmial.example', 'fine@example.com'] });
    const { ctx, page } = await openPage();
    await signIn(page, `#/messages/${m.id}`);
    const table = page.getByRole('table', { name: 'Recipients' });
    await table.getByRole('button', { name: 'Bounce friend@gmial.example' }).click();
    const dialog = page.getByRole('dialog', { name: 'Bounce friend@gmial.example?' });
    await expectText(dialog, 'The other recipients are tried as before.');
    await dialog.getByLabel('Reason, told to the sender').fill('misspelt domain');
    await dialog.getByRole('button', { name: 'Bounce friend@gmial.example' }).click();
    await expectText(page.locator('.hold-reason'), 'To be bounced (only friend@gmial.example): misspelt domain');
    await expectText(page.getByRole('table', { name: 'Recipients' }).locator('tr', { hasText: 'friend@gmial.example' }), 'to be bounced');
    const after = await server.queue.get(m.id);
    expect(after?.bounceRequest).toMatchObject({ reason: 'misspelt domain', recipients: ['friend@gmial.example'] });
    expect(after?.state).toBe('queued');
    // The other recipient is untouched and can still be given up on its own.
    expect(after?.recipients.map((r) => r.status)).toEqual(['pending', 'pending']);
    expect(await page.getByRole('table', { name: 'Recipients' }).getByRole('button', { name: 'Bounce fine@example.com' }).count()).toBe(1);
    await ctx.close();
  });

  it('changes a misspelt recipient of a mail; the address the sender gave is still shown; a bad address is refused', async () => {
    const m = await server.enqueue({ subject: 'Misspelt, to be changed', to: ['pal@gmial.example', 'ok@example.com'] });
    const { ctx, page } = await openPage();
    await signIn(page, `#/messages/${m.id}`);
    const table = page.getByRole('table', { name: 'Recipients' });
    await table.getByRole('button', { name: 'Change pal@gmial.example' }).click();
    let dialog = page.getByRole('dialog', { name: 'Change pal@gmial.example?' });
    await expectText(dialog, 'Delivery status notifications still name the address the sender gave.');
    await dialog.getByLabel('New address').fill('not an address');
    await dialog.getByRole('button', { name: 'Change the address' }).click();
    await page.locator('.notice-error').filter({ hasText: /^Failed: .*\bto\b/ }).first().waitFor();
    expect((await server.queue.get(m.id))?.recipients[0]?.address).toBe('pal@gmial.example');

    await page.getByRole('table', { name: 'Recipients' }).getByRole('button', { name: 'Change pal@gmial.example' }).click();
    dialog = page.getByRole('dialog', { name: 'Change pal@gmial.example?' });
    await dialog.getByLabel('New address').fill('pal@gmail.example');
    await dialog.getByRole('button', { name: 'Change the address' }).click();
    const row = page.getByRole('table', { name: 'Recipients' }).locator('tr', { hasText: 'pal@gmail.example' });
    await expectText(row, 'given as pal@gmial.example');
    const after = await server.queue.get(m.id);
    expect(after?.recipients.map((r) => [r.address, r.status, r.orcpt])).toEqual([['pal@gmail.example', 'pending', 'rfc822;pal@gmial.example'], ['ok@example.com', 'pending', undefined]]);
    await ctx.close();
  });

  it('bounces all mail to a domain in bulk, with one reason for every sender', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/queue?domain=campaign.example');
    await expectText(page.locator('.summary'), '2 mails match the filters');
    await page.getByLabel('All mails matching the filter').check();
    await page.getByRole('toolbar', { name: 'Bulk actions' }).getByRole('button', { name: 'Bounce' }).click();
    const dialog = page.getByRole('dialog', { name: 'Bounce 2 mails?' });
    await dialog.waitFor();
    await expectText(dialog, 'each sender gets a delivery status notification');
    await dialog.getByLabel('Reason, told to the senders').fill('campaign withdrawn');
    await dialog.getByRole('button', { name: 'Bounce 2 mails' }).click();
    await expectText(page.getByRole('status').filter({ hasText: 'set to bounce' }), '2 mails set to bounce');
    for (const s of ['Campaign 1', 'Campaign 2']) expect((await server.queue.get(idOf(s)))?.bounceRequest?.reason).toBe('campaign withdrawn');
    await ctx.close();
  });

  it('removes all mail to a domain in bulk, confirming the count first', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/queue?domain=bulk.example');
    await expectText(page.locator('.summary'), '3 mails match the filters');
    await page.getByLabel('All mails matching the filter').check();
    await page.getByRole('toolbar', { name: 'Bulk actions' }).getByRole('button', { name: 'Remove' }).click();
    const dialog = page.getByRole('dialog', { name: 'Remove 3 mails?' });
    await dialog.waitFor();
    await expectText(dialog, 'all 3 mails matching the current filter');
    await shot(page, 'bulk-confirm');
    await dialog.getByRole('button', { name: 'Remove 3 mails' }).click();
    await expectText(page.getByRole('status').filter({ hasText: 'removed' }), '3 mails removed');
    for (const s of ['Newsletter 1', 'Newsletter 2', 'Newsletter 3']) expect(await stateOf(s)).toBe('removed');
    expect(await stateOf('Quarterly report')).toBe('queued');
    await ctx.close();
  });

  it('bulk-holds selected mails', async () => {
    const { ctx, page } = await openPage();
    await signIn(page);
    await page.getByRole('checkbox', { name: 'Select Quarterly report' }).check();
    await page.getByRole('checkbox', { name: 'Select Deferred once' }).check();
    await expectText(page.getByRole('toolbar', { name: 'Bulk actions' }), '2 mails selected');
    await page.getByRole('toolbar', { name: 'Bulk actions' }).getByRole('button', { name: 'Hold' }).click();
    await page.getByRole('dialog', { name: 'Hold 2 mails?' }).getByRole('button', { name: 'Hold 2 mails' }).click();
    await expectText(page.getByRole('status').filter({ hasText: 'held' }), '2 mails held');
    expect(await stateOf('Quarterly report')).toBe('held');
    expect(await stateOf('Deferred once')).toBe('held');
    await server.queue.release(idOf('Quarterly report'));
    await server.queue.release(idOf('Deferred once'));
    await ctx.close();
  });

  it('pages through a long result with the cursor', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/queue?domain=page.example');
    await expectText(page.locator('.summary'), `${PAGED} mails match the filters`);
    const rows = page.getByRole('table', { name: 'Queued mail' }).locator('tbody tr');
    expect(await rows.count()).toBe(50);
    expect(await page.getByRole('button', { name: '← Previous page' }).isDisabled()).toBe(true);
    const subjects = () => rows.getByRole('link').allTextContents();
    const firstPage = await subjects();
    await page.getByRole('button', { name: 'Next page →' }).click();
    await expectText(page.getByRole('navigation', { name: 'Pages' }), 'Page 2');
    expect(await rows.count()).toBe(PAGED - 50);
    const secondPage = await subjects();
    // Every mail exactly once across the two pages.
    expect(new Set([...firstPage, ...secondPage]).size).toBe(PAGED);
    expect(await page.getByRole('button', { name: 'Next page →' }).isDisabled()).toBe(true);
    await page.getByRole('button', { name: '← Previous page' }).click();
    await expectText(page.getByRole('navigation', { name: 'Pages' }), 'Page 1');
    expect(await rows.count()).toBe(50);
    expect(await subjects()).toEqual(firstPage);
    await ctx.close();
  });

  it('shows a new mail live, without a reload', async () => {
    const { ctx, page } = await openPage();
    await signIn(page);
    await page.getByRole('link', { name: 'Quarterly report' }).waitFor();
    await page.locator('.live.on').waitFor();
    const mail = await server.enqueue({ subject: 'Arrived while watching', to: ['late@example.com'] });
    server.ids.set(mail.subject!, mail.id);
    await page.getByRole('link', { name: 'Arrived while watching' }).waitFor();
    await ctx.close();
  });

  it('renders the statistics charts', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/stats?every=1');
    await page.getByRole('heading', { name: 'Statistics' }).waitFor();
    expect(await page.getByLabel('Sample every').inputValue()).toBe('1');
    const depth = page.getByRole('img', { name: /Queue depth over time by state/ });
    await depth.waitFor();
    const waiting = (await server.queue.stats()).byState.queued;
    expect(await depth.getAttribute('aria-label')).toContain(`queued ${waiting}`);
    // A line appears once the page has sampled /api/stats twice (every second here).
    await depth.locator('path.c-queued').waitFor({ state: 'attached' }); // a flat line has no height: not "visible"
    const qshape = page.getByRole('table', { name: 'Age by destination (qshape)' });
    await expectText(qshape, 'slow.example');
    await expectText(qshape, 'example.com');
    await page.getByRole('img', { name: /Ingress and delivery rates/ }).waitFor();
    await page.getByRole('img', { name: /Top destinations/ }).waitFor();
    await page.getByRole('img', { name: /Waiting mail by priority/ }).waitFor();
    await expectText(page.getByRole('list', { name: 'Mail by state' }), 'removed');
    await shot(page, 'stats');
    await ctx.close();
  });

  it('edits a rule, shows the validation message, and the saved rule takes effect', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/config');
    await page.getByRole('heading', { name: 'Configuration' }).waitFor();
    await page.getByRole('button', { name: 'Add rule' }).click();
    const rule = page.getByRole('group', { name: /^Rule 1:/ });
    await rule.getByLabel('Rule name').fill('newsletters-later');
    await rule.getByLabel('Recipient domain').fill('news.example');
    await rule.getByLabel('Priority').selectOption('bulk');
    await rule.getByLabel('Delay').fill('soon');
    await page.getByRole('button', { name: 'Save rules' }).click();
    // The API's validation message names the key and the problem.
    await expectText(page.getByRole('form', { name: 'Rules' }).getByRole('alert'), 'delay');
    expect(server.config.current.rules).toHaveLength(0);

    await rule.getByLabel('Delay').fill('10m');
    await page.getByRole('button', { name: 'Save rules' }).click();
    await page.getByRole('status').filter({ hasText: 'Rules saved' }).first().waitFor();
    expect(server.config.current.rules.map((r) => r.name)).toEqual(['newsletters-later']);
    expect(server.config.current.rules[0]!.delay).toBe(600_000);

    await page.getByLabel('Test recipients').fill('reader@news.example');
    await page.getByRole('button', { name: 'Test against the running rules' }).click();
    const result = page.locator('.test-result');
    await expectText(result, 'Matched rule "newsletters-later"');
    await expectText(result, 'Priority: bulk (0)');
    await expectText(result, 'Delay: 10m');
    await shot(page, 'config');
    await ctx.close();
  });

  it('a rule that rejects: the tester shows the reply, and one that also holds is refused', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/config');
    await page.getByRole('heading', { name: 'Configuration' }).waitFor();
    await page.getByRole('button', { name: 'Add rule' }).click();
    // The new rule is the last one (its legend follows its name as it is typed).
    const rule = page.getByRole('group', { name: /^Rule \d+:/ }).last();
    await rule.getByLabel('Rule name').fill('invoice-scam');
    await rule.getByLabel('Header name').fill('Subject');
    await rule.getByLabel('Header value').fill('*invoice overdue*');
    await rule.getByLabel('Or reject with').fill('550 5.7.1 Message content rejected');
    await page.getByLabel('Test headers').fill('Subject: URGENT invoice overdue');
    await page.getByRole('button', { name: 'Test against the rules above (unsaved)' }).click();
    await expectText(page.locator('.test-result'), 'Rejected with: 550 5.7.1 Message content rejected');
    // The same rule on the body instead (renamed, so that the new answer shows): the tester sends the sample body.
    await rule.getByLabel('Rule name').fill('phish-url');
    await rule.getByLabel('Header name').fill('');
    await rule.getByLabel('Header value').fill('');
    await rule.getByLabel('Body contains').fill('*phish.example/login*');
    await page.getByLabel('Test headers').fill('Subject: Password expiry');
    await page.getByLabel('Test body').fill('Renew it at https://phish.example/login today.');
    await page.getByRole('button', { name: 'Test against the rules above (unsaved)' }).click();
    await expectText(page.locator('.test-result'), 'Matched rule "phish-url"');
    const before = server.config.current.rules;
    await rule.getByLabel('Hold for an operator').check();
    await page.getByRole('button', { name: 'Save rules' }).click();
    await expectText(page.getByRole('form', { name: 'Rules' }).getByRole('alert'), 'a rule that rejects sets nothing else');
    expect(server.config.current.rules).toEqual(before);
    await ctx.close();
  });

  it('edits per-destination limits with validation', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/config');
    const form = page.getByRole('form', { name: 'Delivery limits' });
    await form.getByRole('button', { name: 'Add destination' }).click();
    await form.getByLabel('Destination domain').fill('slow.example');
    await form.getByLabel('Connections for').last().fill('2');
    await form.getByLabel('Initial concurrency for').last().fill('1');
    await form.getByLabel('Rate for').last().fill('fast');
    await form.getByRole('button', { name: 'Save limits' }).click();
    await expectText(form.getByRole('alert'), 'rate');
    expect(server.config.current.delivery.limits.domains['slow.example']).toBeUndefined();

    await form.getByLabel('Rate for').last().fill('30/m');
    await form.getByRole('button', { name: 'Save limits' }).click();
    await page.getByRole('status').filter({ hasText: 'Delivery limits saved' }).first().waitFor();
    expect(server.config.current.delivery.limits.domains['slow.example']).toMatchObject({ connections: 2, initialConnections: 1, rate: '30/m' });
    // The page reloads the running configuration: the new row is there.
    await page.getByRole('form', { name: 'Delivery limits' }).getByLabel('Connections for slow.example').waitFor();
    await ctx.close();
  });

  it('pauses and resumes delivery to a domain', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/config');
    const form = page.getByRole('form', { name: 'Pause delivery' });
    await expectText(form, 'No delivery is paused.');
    await form.getByLabel('Domain to pause').fill('bad domain!');
    await form.getByRole('button', { name: 'Pause delivery' }).click();
    await expectText(form.getByRole('alert'), 'delivery.paused');
    expect(server.config.current.delivery.paused).toEqual([]);

    await form.getByLabel('Domain to pause').fill('Gmail.com');
    await form.getByRole('button', { name: 'Pause delivery' }).click();
    await page.getByRole('status').filter({ hasText: 'Delivery to gmail.com paused' }).first().waitFor();
    expect(server.config.current.delivery.paused).toEqual(['gmail.com']);
    const list = page.getByRole('list', { name: 'Paused domains' });
    await expectText(list, 'gmail.com');
    await list.getByRole('button', { name: 'Resume gmail.com' }).click();
    await page.getByRole('status').filter({ hasText: 'Delivery to gmail.com resumed' }).first().waitFor();
    expect(server.config.current.delivery.paused).toEqual([]);
    await expectText(page.getByRole('form', { name: 'Pause delivery' }), 'No delivery is paused.');
    await ctx.close();
  });

  it('routes a domain to another host, and removes the route', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/config');
    const form = page.getByRole('form', { name: 'Add a route' });
    await expectText(form, 'No routes');
    await form.getByLabel('Recipient domain').fill('Slow.example');
    await form.getByLabel('Deliver to (host:port)').fill('bad host!');
    await form.getByRole('button', { name: 'Add route' }).click();
    await expectText(form.getByRole('alert'), 'delivery.routes');
    expect(server.config.current.delivery.routes).toEqual({});
    await form.getByLabel('Deliver to (host:port)').fill('relay.example.net:2525');
    await form.getByRole('button', { name: 'Add route' }).click();
    await page.getByRole('status').filter({ hasText: 'Mail for slow.example now goes to relay.example.net:2525' }).first().waitFor();
    expect(server.config.current.delivery.routes).toEqual({ 'slow.example': 'relay.example.net:2525' });
    const list = page.getByRole('list', { name: 'Routes' });
    await expectText(list, 'relay.example.net:2525');
    await list.getByRole('button', { name: 'Remove route for slow.example' }).click();
    await page.getByRole('status').filter({ hasText: 'goes to its MX again' }).first().waitFor();
    expect(server.config.current.delivery.routes).toEqual({});
    await ctx.close();
  });

  it('blocks a sender and a client network at the door, and unblocks them', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/config');
    const form = page.getByRole('form', { name: 'Block at the door' });
    await expectText(form, 'Nothing is blocked.');
    await form.getByLabel('Block by').selectOption('client');
    await form.getByLabel('Value').fill('10.0.0.0/33');
    await form.getByRole('button', { name: 'Block', exact: true }).click();
    await expectText(form.getByRole('alert'), 'relay.reject.0.client');
    expect(server.config.current.relay.reject).toEqual([]);

    await form.getByLabel('Value').fill('198.51.100.0/24');
    await form.getByRole('button', { name: 'Block', exact: true }).click();
    await page.getByRole('status').filter({ hasText: 'Blocked: client network 198.51.100.0/24' }).first().waitFor();
    const again = page.getByRole('form', { name: 'Block at the door' });
    await again.getByLabel('Block by').selectOption('sender');
    await again.getByLabel('Value').fill('*@spam.example');
    await again.getByLabel('Reply (optional)').fill('550 5.7.1 Not from you');
    await again.getByRole('button', { name: 'Block', exact: true }).click();
    await page.getByRole('status').filter({ hasText: 'Blocked: sender address *@spam.example' }).first().waitFor();
    expect(server.config.current.relay.reject).toEqual([{ client: ['198.51.100.0/24'] }, { sender: '*@spam.example', reply: '550 5.7.1 Not from you' }]);
    const list = page.getByRole('list', { name: 'Blocked at the door' });
    await expectText(list, 'answered "550 5.7.1 Not from you"');
    await list.getByRole('button', { name: 'Unblock 1' }).click();
    await page.getByRole('status').filter({ hasText: 'Entry 1 unblocked' }).first().waitFor();
    expect(server.config.current.relay.reject).toEqual([{ sender: '*@spam.example', reply: '550 5.7.1 Not from you' }]);
    await page.getByRole('list', { name: 'Blocked at the door' }).getByRole('button', { name: 'Unblock 1' }).click();
    await expectText(page.getByRole('form', { name: 'Block at the door' }), 'Nothing is blocked.');
    expect(server.config.current.relay.reject).toEqual([]);
    await ctx.close();
  });

  it('shows the XSS subject, header, body and file name as literal text and runs no script', async () => {
    const { ctx, page, dialogs } = await openPage();
    await signIn(page);
    const link = page.getByRole('link', { name: XSS_SUBJECT });
    await link.waitFor();
    expect(await link.textContent()).toBe(XSS_SUBJECT);
    expect(await page.locator('main img, main svg[onload]').count()).toBe(0);
    await link.click();
    await page.getByRole('heading', { name: XSS_SUBJECT }).waitFor();
    expect(await page.locator('h1.subject').textContent()).toBe(XSS_SUBJECT);
    await expectText(page.getByRole('table', { name: 'Headers' }), '<svg onload=alert(3)>');
    await expectText(page.getByLabel('Text preview'), '<script>alert(2)</script><b>not bold</b>');
    await expectText(page.locator('.attachments'), '<img src=y onerror=alert(4)>.txt');
    expect(await page.locator('main img, main script, main b, main svg[onload]').count()).toBe(0);
    await page.waitForTimeout(300); // an onerror would have fired by now
    expect(dialogs).toEqual([]);
    await shot(page, 'message-xss');
    await ctx.close();
  });

  it('lists operator actions in the audit log', async () => {
    const { ctx, page } = await openPage();
    await signIn(page, '#/audit');
    const table = page.getByRole('table', { name: 'Audit log' });
    await expectText(table, 'remove');
    await expectText(table, 'hold');
    await expectText(table, 'release');
    await expectText(table, 'bulk.remove');
    await expectText(table, 'config.update');
    await shot(page, 'audit');
    await ctx.close();
  });
});

/** Waits until the locator's text contains `text` (the page updates asynchronously). */
async function expectText(locator: ReturnType<Page['locator']>, text: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    last = (await locator.allTextContents().catch(() => [])).join(' | ');
    if (last.includes(text)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`expected text "${text}" within ${timeoutMs} ms; saw: ${last.slice(0, 500) || '(nothing)'}`);
}
