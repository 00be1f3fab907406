#!/usr/bin/env node
/**
 * `spoolhouse` — the operator's command line (Postfix's postqueue/postsuper for Spoolhouse),
 * talking only to the admin API (never to the spool: it works the same on every backend and
 * while the server runs).
 *
 *   spoolhouse queue list [--filter key=value …] [--all] [--json]
 *   spoolhouse queue show ID [--json | --raw]
 *   spoolhouse queue remove|hold|release|retry|bounce ID… | --filter key=value … [--dry-run]
 *   spoolhouse queue priority ID… LEVEL | --filter key=value … LEVEL [--dry-run]
 *   spoolhouse queue redirect ID FROM TO   (correct a recipient not yet done)
 *   spoolhouse queue stats [--json]
 *   spoolhouse pause [DOMAIN…]          (no domain: list the paused ones; "*" pauses all delivery)
 *   spoolhouse route [DOMAIN HOST[:PORT]] / unroute DOMAIN…   (delivery.routes; no argument: the list)
 *   spoolhouse resume DOMAIN… | --all
 *   spoolhouse block [--client CIDR] [--sender GLOB] [--sender-domain GLOB] [--recipient GLOB]
 *                    [--recipient-domain GLOB] [--reply "554 5.7.1 text"]   (none: list relay.reject)
 *   spoolhouse unblock N… | --all      (N as "block" lists them, from 1)
 *
 * Filter keys: state, priority, sender, recipient, domain, since, until, minSize, maxSize, q, reply.
 * Exit codes: 0 ok, 1 error (server or network), 2 usage (bad arguments or input the API
 * refused as bad), 3 not found, 4 authentication or permission.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, Option } from 'commander';
import { ApiClient, CliError, EXIT } from './client.js';
import { resolveConnection, type ConnectionFlags } from './connection.js';
import type { BrowsePage, BulkResult, DestinationView, MailDetail, MailSummary, RefusalPage, ReplyDigestPage, Stats } from '../api-types.js';
import { queueTable, showDestination, showMail, showRefusals, showStats, terminalSafe } from './format.js';

const FILTER_KEYS = ['state', 'priority', 'sender', 'recipient', 'domain', 'since', 'until', 'minSize', 'maxSize', 'q', 'reply'];

interface GlobalOpts extends ConnectionFlags {
  json?: boolean;
  timeout?: string;
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** ["domain=example.com", "state=queued,held"] → { domain: "example.com", state: "queued,held" }. */
export function parseFilterArgs(args: string[] = []): Record<string, string> {
  const filter: Record<string, string> = {};
  for (const arg of args) {
    const eq = arg.indexOf('=');
    if (eq <= 0) throw new CliError(`--filter "${arg}": expected key=value (keys: ${FILTER_KEYS.join(', ')})`, EXIT.usage);
    const key = arg.slice(0, eq).trim();
    const canonical = FILTER_KEYS.find((k) => k.toLowerCase() === key.toLowerCase().replace(/[-_]/g, ''));
    if (!canonical) throw new CliError(`--filter "${arg}": unknown key "${key}" (keys: ${FILTER_KEYS.join(', ')})`, EXIT.usage);
    filter[canonical] = arg.slice(eq + 1);
  }
  return filter;
}

/** Everything but `show --raw` goes out through here: control characters from mail are escaped. */
function out(text: string): void {
  process.stdout.write(terminalSafe(text));
}

function printJson(value: unknown): void {
  out(JSON.stringify(value, null, 2) + '\n');
}

function client(cmd: Command): { api: ApiClient; opts: GlobalOpts } {
  const opts = cmd.optsWithGlobals<GlobalOpts>();
  const { url, token } = resolveConnection(opts);
  const timeout = opts.timeout ? Number(opts.timeout) * 1000 : undefined;
  return { api: new ApiClient(url, token, timeout), opts };
}

const idPath = (id: string) => `api/messages/${encodeURIComponent(id)}`;

type Action = 'remove' | 'hold' | 'release' | 'retry' | 'priority' | 'bounce';
const DONE: Record<Action, string> = { remove: 'removed', hold: 'held', release: 'released', retry: 'scheduled for retry', priority: 'reprioritised', bounce: 'to be bounced' };

async function oneByOne(api: ApiClient, ids: string[], action: Action, json: boolean, body?: Record<string, unknown>): Promise<number> {
  let exitCode: number = EXIT.ok;
  const results: { id: string; ok: boolean; state?: string; error?: string }[] = [];
  for (const id of ids) {
    try {
      const mail = await (action === 'remove' ? api.json<MailSummary>('DELETE', idPath(id))
        : action === 'priority' ? api.json<MailSummary>('PATCH', idPath(id), body)
          : api.json<MailSummary>('POST', `${idPath(id)}/${action}`, body));
      results.push({ id, ok: true, state: mail.state });
      if (!json) out(`${id}: ${DONE[action]} (now ${mail.state}${action === 'priority' ? `, priority ${mail.priorityName ?? mail.priority}` : ''})\n`);
    } catch (err) {
      if (!(err instanceof CliError)) throw err;
      // Auth failures end the run at once: every other id would fail the same way.
      if (err.exitCode === EXIT.auth) throw err;
      results.push({ id, ok: false, error: err.message });
      if (!json) process.stderr.write(`spoolhouse: ${id}: ${err.message}\n`);
      if (exitCode === EXIT.ok) exitCode = err.exitCode;
    }
  }
  if (json) printJson(results);
  else if (ids.length > 1) out(`spoolhouse: ${results.filter((r) => r.ok).length} of ${ids.length} mails ${DONE[action]}\n`);
  return exitCode;
}

async function bulk(api: ApiClient, filter: Record<string, string>, action: Action, dryRun: boolean, json: boolean, extra: Record<string, unknown> = {}): Promise<number> {
  const r = await api.json<BulkResult>('POST', 'api/messages/actions', { filter, action, dryRun, ...extra });
  if (json) printJson(r);
  else if (dryRun) out(`Would ${action === 'retry' ? 'retry' : action} ${r.matched} mail${r.matched === 1 ? '' : 's'} (dry run; nothing changed)${r.ids.length ? `:\n${r.ids.map((id) => `  ${id}`).join('\n')}${r.matched > r.ids.length ? '\n  …' : ''}` : ''}\n`);
  else {
    out(`${r.changed} of ${r.matched} matching mail${r.matched === 1 ? '' : 's'} ${DONE[action]}${r.skipped ? `, ${r.skipped} skipped (changed meanwhile)` : ''}${r.failed ? `, ${r.failed} failed` : ''}\n`);
    for (const e of r.errors) process.stderr.write(`spoolhouse: ${e.id}: ${e.message}\n`);
  }
  return r.failed > 0 ? EXIT.error : EXIT.ok;
}

function actionCommand(queue: Command, action: Exclude<Action, 'priority'>, description: string): void {
  const command = queue.command(action)
    .description(description)
    .argument('[ids...]', 'mail ids')
    .option('-f, --filter <key=value>', 'act on every mail matching (repeatable)', collect)
    .option('-n, --dry-run', 'only say how many mails would change')
    .option('--reason <text>', action === 'bounce' ? 'why (in the DSN sent to the sender, and the audit log)' : action === 'remove' || action === 'hold' ? 'why (kept with the mail and in the audit log)' : 'ignored');
  if (action === 'bounce') command.option('--recipient <address>', 'give up only this recipient of the one mail given; the others go on (repeatable)', collect);
  command.action(async (ids: string[], o: { filter?: string[]; dryRun?: boolean; reason?: string; recipient?: string[] }, cmd: Command) => {
    const filter = o.filter ? parseFilterArgs(o.filter) : undefined;
    if (filter && ids.length) throw new CliError('give mail ids or --filter, not both', EXIT.usage);
    if (!filter && ids.length === 0) throw new CliError(`${action}: give mail ids, or --filter key=value for every matching mail`, EXIT.usage);
    if (!filter && o.dryRun) throw new CliError('--dry-run is for --filter', EXIT.usage);
    if (o.recipient && (filter || ids.length !== 1)) throw new CliError('--recipient is for one mail id', EXIT.usage);
    const { api, opts } = client(cmd);
    const reason = o.reason && (action === 'remove' || action === 'hold' || action === 'bounce') ? { reason: o.reason } : undefined;
    const body = o.recipient ? { ...reason, recipients: o.recipient } : reason;
    process.exitCode = filter
      ? await bulk(api, filter, action, !!o.dryRun, !!opts.json, reason ?? {})
      : await oneByOne(api, ids, action, !!opts.json, action === 'hold' || action === 'bounce' ? body : undefined);
  });
}

/** How often `refusals --follow` asks for new ones. */
const FOLLOW_POLL_MS = 1_000;

export function buildProgram(): Command {
  const program = new Command('spoolhouse')
    .description('Operate a Spoolhouse mail queue through its admin API.\nExit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 authentication/permission.')
    .option('--url <url>', 'admin API base URL (env SPOOLHOUSE_URL; default from the config admin.listen)')
    .option('--token <token>', 'API token (env SPOOLHOUSE_TOKEN; default admin.token or <spool.dir>/admin.token)')
    .option('-c, --config <file>', 'server config file to read the URL and token from (env SPOOLHOUSE_CONFIG)')
    .option('--json', 'machine-readable JSON output')
    .addOption(new Option('--timeout <seconds>', 'give up on the API after this long').default('120'))
    .showHelpAfterError()
    .exitOverride();

  const queue = program.command('queue').description('browse and steer the mail queue').exitOverride();

  queue.command('list')
    .alias('ls')
    .description('list mails, like postqueue -p (* = being delivered, ! = held)')
    .option('-f, --filter <key=value>', `filter (repeatable; keys: ${FILTER_KEYS.join(', ')})`, collect)
    .option('--state <states>', 'shorthand for --filter state=…')
    .option('--domain <domain>', 'shorthand for --filter domain=…')
    .addOption(new Option('--sort <field>', 'sort by').choices(['received', 'priority', 'nextAttempt']).default('received'))
    .addOption(new Option('--order <order>', 'sort order').choices(['asc', 'desc']).default('asc'))
    .option('--limit <n>', 'mails per page (1-1000)', '100')
    .option('--all', 'every matching mail (follows the cursor through all pages)')
    .action(async (o: { filter?: string[]; state?: string; domain?: string; sort: string; order: string; limit: string; all?: boolean }, cmd: Command) => {
      const filter = parseFilterArgs(o.filter);
      if (o.state) filter.state = o.state;
      if (o.domain) filter.domain = o.domain;
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new CliError('--limit must be 1..1000', EXIT.usage);
      const { api, opts } = client(cmd);
      const items: MailSummary[] = [];
      let cursor: string | undefined;
      let total: { count: number; exact: boolean } | undefined;
      do {
        const q = new URLSearchParams({ ...filter, sort: o.sort, order: o.order, limit: String(limit), ...(cursor ? { cursor } : {}) });
        const page = await api.json<BrowsePage>('GET', `api/messages?${q}`);
        items.push(...page.items);
        cursor = page.nextCursor;
        total ??= page.total;
        // A filter the backend cannot narrow with an index may give empty pages with a cursor
        // (it examined a bounded number of mails): keep going until something is found.
      } while (cursor && (o.all || items.length === 0));
      if (opts.json) printJson({ items, ...(cursor ? { nextCursor: cursor } : {}), total });
      else out(queueTable(items, !!cursor, total));
    });

  queue.command('show')
    .description('one mail: envelope, recipients with their last reply, attempts, headers, text')
    .argument('<id>', 'mail id')
    .option('--raw', 'print the stored message (RFC 5322) instead')
    .action(async (id: string, o: { raw?: boolean }, cmd: Command) => {
      const { api, opts } = client(cmd);
      if (o.raw) {
        const res = await api.request('GET', `${idPath(id)}/raw`);
        process.stdout.write(Buffer.from(await res.arrayBuffer()));
        return;
      }
      const mail = await api.json<MailDetail>('GET', idPath(id));
      if (opts.json) printJson(mail);
      else out(showMail(mail));
    });

  actionCommand(queue, 'remove', 'remove mails for good (never delivered afterwards)');
  actionCommand(queue, 'hold', 'hold mails (not delivered until released)');
  actionCommand(queue, 'release', 'release held mails');
  actionCommand(queue, 'retry', 'make queued (deferred or delayed) mails due now');
  actionCommand(queue, 'bounce', 'give mails up with a DSN to their senders (due now, held ones too; nothing more is delivered)');

  queue.command('redirect')
    .description("correct a recipient not yet done (exim's -Mar with -Mmd): FROM is TO from now on, tried afresh; DSNs still name FROM")
    .argument('<id>', 'mail id')
    .argument('<from>', 'the recipient to correct')
    .argument('<to>', 'its new address')
    .action(async (id: string, from: string, to: string, _o: unknown, cmd: Command) => {
      const { api, opts } = client(cmd);
      const mail = await api.json<MailSummary>('POST', `${idPath(id)}/redirect`, { from, to });
      if (opts.json) printJson(mail);
      else out(`${id}: ${terminalSafe(from)} is now ${terminalSafe(to)} (mail ${mail.state}${mail.state === 'queued' ? ', due now' : ''})\n`);
    });

  queue.command('priority')
    .description('set the priority class of mails: priority ID… LEVEL, or priority --filter key=value LEVEL')
    .argument('<args...>', 'mail ids, then the class name or level')
    .option('-f, --filter <key=value>', 'every mail matching (repeatable)', collect)
    .option('-n, --dry-run', 'only say how many mails would change')
    .action(async (args: string[], o: { filter?: string[]; dryRun?: boolean }, cmd: Command) => {
      const level = args[args.length - 1]!;
      const ids = args.slice(0, -1);
      const filter = o.filter ? parseFilterArgs(o.filter) : undefined;
      if (filter && ids.length) throw new CliError('give mail ids or --filter, not both', EXIT.usage);
      if (!filter && ids.length === 0) throw new CliError('priority: give ID… LEVEL, or --filter key=value LEVEL', EXIT.usage);
      if (!filter && o.dryRun) throw new CliError('--dry-run is for --filter', EXIT.usage);
      const priority = /^\d+$/.test(level) ? Number(level) : level;
      const { api, opts } = client(cmd);
      process.exitCode = filter
        ? await bulk(api, filter, 'priority', !!o.dryRun, !!opts.json, { priority })
        : await oneByOne(api, ids, 'priority', !!opts.json, { priority });
    });

  queue.command('stats')
    .description('counts by state and priority, oldest mail, rates, the age-by-destination table (qshape), and the deferrals and bounces of the last hour by reply')
    .option('--top <n>', 'destinations shown', '10')
    .action(async (o: { top: string }, cmd: Command) => {
      const { api, opts } = client(cmd);
      const [stats, replies] = await Promise.all([
        api.json<Stats>('GET', `api/stats?topN=${encodeURIComponent(o.top)}`),
        api.json<ReplyDigestPage>('GET', `api/stats/replies?limit=${encodeURIComponent(o.top)}`),
      ]);
      if (opts.json) printJson({ ...stats, replies });
      else out(showStats(stats, replies));
    });

  program.command('destination')
    .description("where a recipient domain's mail goes now (hosts in order, route or smarthost, TLS, MTA-STS), what of it waits, and its last hour's deferrals and bounces by reply")
    .argument('<domain>', 'recipient domain')
    .action(async (domain: string, _o: unknown, cmd: Command) => {
      const { api, opts } = client(cmd);
      const d = encodeURIComponent(domain.toLowerCase());
      const count = async (state: string) => (await api.json<BrowsePage>('GET', `api/messages?domain=${d}&state=${state}&limit=1`)).total;
      const [where, replies, stats, queued, active, held] = await Promise.all([
        api.json<DestinationView>('GET', `api/destinations/${d}`),
        api.json<ReplyDigestPage>('GET', `api/stats/replies?domain=${d}&limit=20`),
        api.json<Stats>('GET', 'api/stats?topN=1'),
        count('queued'), count('active'), count('held'),
      ]);
      const waiting = { queued, active, held };
      if (opts.json) printJson({ ...where, waiting, replies, node: stats.node });
      else out(showDestination(where, waiting, replies, stats.node));
    });

  program.command('refusals')
    .description("the server's recent refusals at the door, oldest first, like Postfix's \"NOQUEUE: reject\" log lines (kept in memory per node: smtp.refusalsKept)")
    .option('--client <address>', 'only this client address, or network (e.g. 198.51.100.0/24)')
    .option('--reason <reason>', 'only this reason (relay, dnsbl, helo, spf, rate, auth, size, …)')
    .option('--grep <text>', 'only those with this text in the HELO name, user, sender, command or reply')
    .option('--limit <n>', 'how many (the newest; 1-1000)', '50')
    .option('--before <cursor>', 'older ones (the cursor printed above a page)')
    .option('-f, --follow', 'then print new refusals as they come, like tail -f, until interrupted')
    .action(async (o: { client?: string; reason?: string; grep?: string; limit: string; before?: string; follow?: boolean }, cmd: Command) => {
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new CliError('--limit must be 1..1000', EXIT.usage);
      if (o.before !== undefined && !/^\d+$/.test(o.before)) throw new CliError('--before takes the cursor printed above a page', EXIT.usage);
      if (o.before !== undefined && o.follow) throw new CliError('--follow shows what comes; --before what was: not both', EXIT.usage);
      const { api, opts } = client(cmd);
      const filters = {
        ...(o.client ? { client: o.client } : {}), ...(o.reason ? { reason: o.reason } : {}), ...(o.grep ? { text: o.grep } : {}),
      };
      const page = await api.json<RefusalPage>('GET', `api/refusals?${new URLSearchParams({ limit: String(limit), ...filters, ...(o.before ? { before: o.before } : {}) })}`);
      if (opts.json) printJson(page);
      else out(showRefusals(page, !!o.follow));
      if (!o.follow) return;
      // The newest seen so far; those that did not match the filters are skipped again cheaply.
      let seen = page.total;
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, FOLLOW_POLL_MS));
        const next = await api.json<RefusalPage>('GET', `api/refusals?${new URLSearchParams({ limit: '1000', ...filters, after: String(seen) })}`);
        seen = Math.max(seen, next.total);
        if (next.items.length === 0) continue;
        if (next.nextCursor !== undefined && !opts.json) out('(more than 1000 new refusals since the last look; only the newest 1000 follow)\n');
        if (opts.json) for (const r of [...next.items].reverse()) process.stdout.write(`${JSON.stringify(r)}\n`);
        else out(showRefusals({ ...next, nextCursor: undefined } as RefusalPage, true));
      }
    });

  program.command('pause')
    .description('pause delivery to recipient domains ("*": all) until resumed (delivery.paused); without a domain, list the paused ones')
    .argument('[domains...]', 'recipient domains, or "*"')
    .action(async (domains: string[], _o: unknown, cmd: Command) => {
      const { api, opts } = client(cmd);
      const paused = await changeDelivery(api, 'paused', domains.length > 0 ? (current) => [...new Set([...current, ...domains.map((d) => d.toLowerCase())])] : undefined);
      if (opts.json) printJson({ paused });
      else out(paused.length ? `Delivery paused for: ${paused.join(', ')}\n` : 'No delivery is paused.\n');
    });

  program.command('resume')
    .description('resume delivery to recipient domains paused with "pause" (their mail goes at its next retry, or now with "queue retry --filter domain=…")')
    .argument('[domains...]', 'recipient domains, or "*"')
    .option('--all', 'resume every paused domain')
    .action(async (domains: string[], o: { all?: boolean }, cmd: Command) => {
      if (!o.all && domains.length === 0) throw new CliError('resume: give domains, or --all', EXIT.usage);
      const { api, opts } = client(cmd);
      const gone = new Set(domains.map((d) => d.toLowerCase()));
      const paused = await changeDelivery(api, 'paused', (current) => (o.all ? [] : current.filter((d) => !gone.has(d))));
      if (opts.json) printJson({ paused });
      else out(paused.length ? `Delivery still paused for: ${paused.join(', ')}\n` : 'No delivery is paused.\n');
    });

  program.command('route')
    .description('deliver mail for a recipient domain to HOST[:PORT] instead of its MX, from the next attempt on (delivery.routes); without arguments, list the routes')
    .argument('[domain]', 'recipient domain')
    .argument('[host]', 'host or address, with :port (default delivery.port)')
    .action(async (domain: string | undefined, host: string | undefined, _o: unknown, cmd: Command) => {
      if (domain !== undefined && host === undefined) throw new CliError('route: give DOMAIN HOST[:PORT], or nothing to list the routes', EXIT.usage);
      const { api, opts } = client(cmd);
      const routes = await changeDelivery(api, 'routes', domain === undefined ? undefined : (current) => ({ ...current, [domain.toLowerCase()]: host! }));
      if (opts.json) printJson({ routes });
      else out(showRoutes(routes));
    });

  program.command('unroute')
    .description('deliver mail for recipient domains by their MX again (removes them from delivery.routes)')
    .argument('<domains...>', 'recipient domains')
    .action(async (domains: string[], _o: unknown, cmd: Command) => {
      const { api, opts } = client(cmd);
      const gone = new Set(domains.map((d) => d.toLowerCase()));
      const routes = await changeDelivery(api, 'routes', (current) => {
        const unknown = [...gone].filter((d) => !(d in current));
        if (unknown.length) throw new CliError(`no route for ${unknown.join(', ')}`, EXIT.notFound);
        return Object.fromEntries(Object.entries(current).filter(([d]) => !gone.has(d)));
      });
      if (opts.json) printJson({ routes });
      else out(showRoutes(routes));
    });

  program.command('block')
    .description('refuse a client network, sender or recipient at the door from now on (relay.reject; all options given must fit); without options, list the entries')
    .option('--client <cidr>', 'client address or network, e.g. 198.51.100.0/24')
    .option('--sender <glob>', 'sender address, e.g. "*@spam.example" ("" is the null sender)')
    .option('--sender-domain <glob>', 'sender domain, e.g. "*.spam.example"')
    .option('--recipient <glob>', 'recipient address (refused at RCPT; the other recipients go on)')
    .option('--recipient-domain <glob>', 'recipient domain')
    .option('--reply <text>', 'the reply, e.g. "550 5.7.1 Not from you" (default 554 5.7.1 ... Access denied)')
    .action(async (o: { client?: string; sender?: string; senderDomain?: string; recipient?: string; recipientDomain?: string; reply?: string }, cmd: Command) => {
      const { api, opts } = client(cmd);
      const entry: RejectEntry = {
        ...(o.client !== undefined ? { client: [o.client] } : {}),
        ...(o.sender !== undefined ? { sender: o.sender } : {}),
        ...(o.senderDomain !== undefined ? { senderDomain: o.senderDomain } : {}),
        ...(o.recipient !== undefined ? { recipient: o.recipient } : {}),
        ...(o.recipientDomain !== undefined ? { recipientDomain: o.recipientDomain } : {}),
      };
      const adding = Object.keys(entry).length > 0;
      if (!adding && o.reply !== undefined) throw new CliError('block: --reply needs something to match (--client, --sender, ...)', EXIT.usage);
      if (o.reply !== undefined) entry.reply = o.reply;
      const reject = await changeRejects(api, (current) => [...current, entry], adding);
      if (opts.json) printJson({ reject });
      else out(showRejects(reject));
    });

  program.command('unblock')
    .description('drop entries of relay.reject by their number in "block"\'s list')
    .argument('[numbers...]', 'entry numbers, from 1')
    .option('--all', 'drop every entry')
    .action(async (numbers: string[], o: { all?: boolean }, cmd: Command) => {
      if (!o.all && numbers.length === 0) throw new CliError('unblock: give entry numbers (see "spoolhouse block"), or --all', EXIT.usage);
      const picked = numbers.map(Number);
      if (picked.some((n) => !Number.isInteger(n) || n < 1)) throw new CliError('unblock: entry numbers are whole numbers from 1', EXIT.usage);
      const { api, opts } = client(cmd);
      const reject = await changeRejects(api, (current) => {
        const missing = picked.filter((n) => n > current.length);
        if (missing.length) throw new CliError(`unblock: no entry ${missing.join(', ')} (there are ${current.length})`, EXIT.notFound);
        return o.all ? [] : current.filter((_, i) => !picked.includes(i + 1));
      }, true);
      if (opts.json) printJson({ reject });
      else out(showRejects(reject));
    });

  return program;
}

interface RejectEntry { client?: string[]; sender?: string; senderDomain?: string; recipient?: string; recipientDomain?: string; reply?: string }

/** Reads relay.reject through the API and, when `write`, saves `change(current)` (PUT /api/config). */
async function changeRejects(api: ApiClient, change: (current: RejectEntry[]) => RejectEntry[], write: boolean): Promise<RejectEntry[]> {
  const current = (await api.json<{ relay: { reject: RejectEntry[] } }>('GET', 'api/config')).relay.reject;
  if (!write) return current;
  return (await api.json<{ relay: { reject: RejectEntry[] } }>('PUT', 'api/config', { relay: { reject: change(current) } })).relay.reject;
}

function showRejects(entries: RejectEntry[]): string {
  if (!entries.length) return 'Nothing is blocked (relay.reject is empty).\n';
  return entries.map((e, i) => {
    const parts = [
      e.client ? `client ${e.client.join(',')}` : '', e.sender !== undefined ? `sender ${e.sender || '<>'}` : '', e.senderDomain ? `sender-domain ${e.senderDomain}` : '',
      e.recipient ? `recipient ${e.recipient}` : '', e.recipientDomain ? `recipient-domain ${e.recipientDomain}` : '', e.reply ? `reply "${e.reply}"` : '',
    ].filter(Boolean);
    return `${String(i + 1).padStart(3)}  ${parts.join('  ')}\n`;
  }).join('');
}

/** Reads delivery.paused through the API and, when `write`, saves `change(current)` (PUT /api/config). */
interface DeliveryView {
  delivery: { paused: string[]; routes: Record<string, string> };
}

/** Reads one key of the running delivery config and, given a change, puts its new value back (PUT /api/config). */
async function changeDelivery<K extends keyof DeliveryView['delivery']>(
  api: ApiClient, key: K, change?: (current: DeliveryView['delivery'][K]) => DeliveryView['delivery'][K],
): Promise<DeliveryView['delivery'][K]> {
  const current = (await api.json<DeliveryView>('GET', 'api/config')).delivery[key];
  if (!change) return current;
  return (await api.json<DeliveryView>('PUT', 'api/config', { delivery: { [key]: change(current) } })).delivery[key];
}

function showRoutes(routes: Record<string, string>): string {
  const entries = Object.entries(routes);
  if (!entries.length) return 'No routes: every domain is delivered to its MX (or delivery.smarthost).\n';
  const width = Math.max(...entries.map(([d]) => d.length));
  return entries.map(([d, h]) => `${d.padEnd(width)}  ${h}\n`).join('');
}

export async function run(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not errors; everything else commander refuses is a usage error.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return EXIT.ok;
      return EXIT.usage;
    }
    if (err instanceof CliError) {
      process.stderr.write(`spoolhouse: ${err.message}\n`);
      return err.exitCode;
    }
    process.stderr.write(`spoolhouse: ${(err as Error).stack ?? String(err)}\n`);
    return EXIT.error;
  }
}

// Run when executed (also through the npm bin symlink), not when imported by a test.
const invokedAs = process.argv[1] ? realpathSync(process.argv[1]) : '';
if (invokedAs === fileURLToPath(import.meta.url)) {
  run(process.argv).then((code) => {
    process.exitCode = code;
  });
}
