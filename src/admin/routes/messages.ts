/**
 * /api/messages: browse, inspect, download, and every operator action on one mail or, in bulk,
 * on every mail matching a filter. Actions go through the Queue interface only, so they behave
 * the same on every backend; each is written to the audit log before the API answers.
 *
 * Removal is final: DELETE answers only once `queue.remove` resolved, and the queue guarantees
 * that from then on `checkLease` is false, so a worker in the middle of delivering it stops.
 *
 * Bulk actions walk the filter's matches one page at a time (keyset cursor) and act on each page
 * before listing the next, so memory is one page even for a million matches (see runBulk); they
 * are restricted to the states the action applies to, so `matched` is what the action would
 * change (the console's confirmation shows it) and "remove all mail to example.com" is one call.
 * The answer lists at most MAX_AUDIT_IDS changed ids (`changed` counts all).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { BrowsePage as BrowsePageView, BulkAction, BulkResult } from '../../api-types.js';
import type { BrowseFilter, MailState, QueuedMail } from '../../queue/types.js';
import { InvalidTransitionError, MailInFlightError, MailNotFoundError } from '../../queue/errors.js';
import { MAX_AUDIT_IDS } from '../audit.js';
import { audited, type AdminContext } from '../context.js';
import { BadRequestError } from '../errors.js';
import { FILTER_KEYS, parseFilter, parsePriority, parseTime } from '../filters.js';
import { detail, summarise } from '../present.js';
import { errorResponses, mailDetailSchema, mailIdParams, mailSummarySchema } from '../schemas.js';

/** Mails listed and acted on per step of a bulk action (memory is one page, whatever matches). */
export const BULK_PAGE = 500;
/** Actions in flight at once: enough for the spool's group commit to batch them into few fsyncs. */
const BULK_CONCURRENCY = 32;
const DRY_RUN_SAMPLE = 20;
/** Mail received up to this long after a bulk action started is still in its scope (clock skew between nodes). */
const CLOCK_SLACK_MS = 60_000;

export const BULK_ACTIONS = ['remove', 'hold', 'release', 'retry', 'priority', 'bounce'] as const satisfies readonly BulkAction[];
export type { BulkAction, BulkResult };

/** The states in which each action changes a mail. */
const APPLIES_TO: Record<BulkAction, MailState[]> = {
  remove: ['queued', 'active', 'held'],
  hold: ['queued', 'active'],
  release: ['held'],
  retry: ['queued'],
  priority: ['queued', 'active', 'held'],
  bounce: ['queued', 'active', 'held'],
};

const filterValue = { anyOf: [{ type: 'string' }, { type: 'number' }, { type: 'array', items: { anyOf: [{ type: 'string' }, { type: 'number' }] } }] };

const filterQueryProperties = Object.fromEntries(FILTER_KEYS.map((k) => [k, { type: 'string' }]));

const listQuery = {
  type: 'object',
  properties: {
    ...filterQueryProperties,
    state: { type: 'string', description: 'Comma list: queued, active, held, delivered, bounced, expired, removed' },
    priority: { type: 'string', description: 'Comma list of class names or levels' },
    sender: { type: 'string', description: 'Exact address; "<>" for the null sender' },
    since: { type: 'string', description: 'Received at or after: ISO 8601 or epoch ms' },
    until: { type: 'string', description: 'Received at or before: ISO 8601 or epoch ms' },
    minSize: { type: 'string', description: 'Bytes, or e.g. "25KB"' },
    maxSize: { type: 'string', description: 'Bytes, or e.g. "25KB"' },
    q: { type: 'string', description: 'Subject or Message-ID contains (case-insensitive)' },
    reply: { type: 'string', maxLength: 200, description: 'A recipient\'s last reply contains (case-insensitive), as "CODE ENHANCED text": "TSS04", "4.2.2", "over quota"' },
    sort: { type: 'string', enum: ['received', 'priority', 'nextAttempt'], default: 'received' },
    order: { type: 'string', enum: ['asc', 'desc'], default: 'desc' },
    cursor: { type: 'string', maxLength: 2000 },
    limit: { type: 'integer', minimum: 1, maximum: 1000, default: 50 },
  },
  additionalProperties: false,
} as const;

const listResponse = {
  type: 'object',
  properties: {
    items: { type: 'array', items: mailSummarySchema },
    nextCursor: { type: 'string' },
    total: { type: 'object', properties: { count: { type: 'integer' }, exact: { type: 'boolean' } } },
  },
} as const;

const actionResponse = { 200: mailSummarySchema, ...errorResponses } as const;

function normaliseId(id: string): string {
  return id.toUpperCase();
}

async function mustGet(ctx: AdminContext, id: string): Promise<QueuedMail> {
  const mail = await ctx.queue.get(id);
  if (!mail) throw new MailNotFoundError(id);
  return mail;
}

function isBadCursor(err: unknown): boolean {
  return !(err instanceof Error && 'httpStatus' in err);
}

/** Browse, turning a cursor the backend cannot read into a 400 rather than a 500. */
async function browse(ctx: AdminContext, filter: BrowseFilter, opts: Parameters<AdminContext['queue']['browse']>[1]) {
  try {
    return await ctx.queue.browse(filter, opts);
  } catch (err) {
    if (opts?.cursor !== undefined && isBadCursor(err)) throw new BadRequestError(`cursor: not a cursor this server gave out (${(err as Error).message})`);
    throw err;
  }
}

/** Runs `fn` over `items`, `width` at a time. */
async function eachLimited<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
}

export interface BulkOptions {
  dryRun: boolean;
  priority?: number;
  reason?: string;
  /** Mails listed and acted on per step; default ctx.bulkPageSize or BULK_PAGE. */
  pageSize?: number;
}

/**
 * One action on every mail matching a filter, page by page: list one page of matches (keyset
 * cursor, by received time), act on it, then list the next page from the cursor. Memory stays
 * one page however many mails match (a million-mail queue is fine), and the walk is safe while
 * acting: the cursor is the last (receivedAt, id) seen, not an offset, so changing or removing
 * mails already passed neither skips nor repeats the ones ahead, on every backend (both cursors
 * are keyset cursors). Only mail received up to the start of the action (plus clock slack) is
 * walked, so a steady stream of new mail to the same domain cannot keep the action running.
 */
export async function runBulk(ctx: AdminContext, rawFilter: Record<string, unknown>, action: BulkAction, opts: BulkOptions): Promise<BulkResult> {
  const priorities = ctx.config.current.priorities;
  const filter = parseFilter(rawFilter, priorities);
  const applicable = APPLIES_TO[action];
  const asked = filter.state === undefined ? applicable : (Array.isArray(filter.state) ? filter.state : [filter.state]);
  const states = asked.filter((s) => applicable.includes(s));
  const result: BulkResult = { action, dryRun: opts.dryRun, matched: 0, changed: 0, skipped: 0, failed: 0, errors: [], ids: [] };
  if (states.length === 0) return result;
  const scoped: BrowseFilter = { ...filter, state: states };
  const pageSize = Math.min(1000, Math.max(1, opts.pageSize ?? ctx.bulkPageSize ?? BULK_PAGE));
  if (opts.dryRun && action !== 'priority') {
    // A dry run needs only the count; when the backend knows it exactly, skip the walk.
    const first = await browse(ctx, scoped, { sort: 'received', order: 'asc', limit: DRY_RUN_SAMPLE });
    if (first.total.exact) return { ...result, matched: first.total.count, ids: first.items.map((m) => m.id) };
  }
  const horizon = Date.now() + CLOCK_SLACK_MS;
  const bounded: BrowseFilter = { ...scoped, until: Math.min(scoped.until ?? horizon, horizon) };
  const matches = (m: QueuedMail) => action !== 'priority' || m.priority !== opts.priority;
  let cursor: string | undefined;
  do {
    const page = await browse(ctx, bounded, { sort: 'received', order: 'asc', limit: pageSize, ...(cursor ? { cursor } : {}) });
    cursor = page.nextCursor;
    const ids = page.items.filter(matches).map((m) => m.id);
    result.matched += ids.length;
    if (opts.dryRun) {
      for (const id of ids) if (result.ids.length < DRY_RUN_SAMPLE) result.ids.push(id);
      continue;
    }
    await eachLimited(ids, BULK_CONCURRENCY, (id) => applyOne(ctx, id, action, opts, result));
  } while (cursor);
  return result;
}

/** Applies the action to one mail and counts the outcome in `result`. */
async function applyOne(ctx: AdminContext, id: string, action: BulkAction, opts: BulkOptions, result: BulkResult): Promise<void> {
  try {
    await applyAction(ctx, id, action, opts);
    result.changed++;
    // The answer and the audit entry list this many ids; `changed` counts them all.
    if (result.ids.length < MAX_AUDIT_IDS) result.ids.push(id);
  } catch (err) {
    // The mail moved on between the listing and the action (delivered, released by someone else…).
    if (err instanceof InvalidTransitionError || err instanceof MailNotFoundError) {
      result.skipped++;
    } else {
      result.failed++;
      if (result.errors.length < 20) result.errors.push({ id, message: (err as Error).message });
      // Being handed over right now (final "." sent): not a fault, the operator may try again.
      if (!(err instanceof MailInFlightError)) ctx.logger.error({ err, mailId: id, action }, 'admin: bulk action failed for one mail');
    }
  }
}

async function applyAction(ctx: AdminContext, id: string, action: BulkAction, opts: { priority?: number; reason?: string }): Promise<QueuedMail> {
  const q = ctx.queue;
  switch (action) {
    case 'remove': return q.remove(id, opts.reason ?? 'removed by operator');
    case 'hold': return q.hold(id, opts.reason ?? 'held by operator');
    case 'release': return q.release(id);
    case 'retry': return q.retryNow(id);
    case 'priority': return q.setPriority(id, opts.priority!);
    case 'bounce': return q.bounce(id, opts.reason ?? 'bounced by the operator');
  }
}

interface IdParams { id: string }

export async function messageRoutes(app: FastifyInstance, ctx: AdminContext): Promise<void> {
  const priorities = () => ctx.config.current.priorities;

  app.get<{ Querystring: Record<string, string | number | undefined> }>('/messages', {
    schema: {
      summary: 'Browse the queue',
      description: 'Filters combine (AND). The total is exact or an estimate, as `total.exact` says.',
      tags: ['messages'],
      querystring: listQuery,
      response: { 200: listResponse, ...errorResponses },
    },
  }, async (request): Promise<BrowsePageView> => {
    const { sort, order, cursor, limit, ...rawFilter } = request.query;
    const filter = parseFilter(rawFilter, priorities());
    const page = await browse(ctx, filter, {
      sort: sort as 'received', order: order as 'asc', limit: limit as number, ...(cursor ? { cursor: String(cursor) } : {}),
    });
    const p = priorities();
    return {
      items: page.items.map((m) => summarise(m, p)),
      ...(page.nextCursor ? { nextCursor: page.nextCursor } : {}),
      total: page.total,
    };
  });

  app.post<{ Body: { filter: Record<string, unknown>; action: BulkAction; priority?: string | number; dryRun?: boolean; reason?: string } }>('/messages/actions', {
    schema: {
      summary: 'One action on every mail matching a filter',
      description: 'Only mails in a state the action applies to count as matched (remove, bounce: queued/active/held; hold: queued/active; release: held; retry: queued; priority: live mail of another priority). With dryRun nothing changes and `ids` is a sample.',
      tags: ['messages'],
      body: {
        type: 'object',
        properties: {
          filter: { type: 'object', properties: Object.fromEntries(FILTER_KEYS.map((k) => [k, filterValue])), additionalProperties: false },
          action: { type: 'string', enum: [...BULK_ACTIONS] },
          priority: { anyOf: [{ type: 'string' }, { type: 'integer' }], description: 'For action "priority": class name or level' },
          reason: { type: 'string', maxLength: 500 },
          dryRun: { type: 'boolean', default: false },
        },
        required: ['filter', 'action'],
        additionalProperties: false,
      },
      response: {
        200: {
          type: 'object',
          properties: {
            action: { type: 'string' }, dryRun: { type: 'boolean' },
            matched: { type: 'integer' }, changed: { type: 'integer' }, skipped: { type: 'integer' }, failed: { type: 'integer' },
            errors: { type: 'array', items: { type: 'object', properties: { id: { type: 'string' }, message: { type: 'string' } } } },
            ids: { type: 'array', items: { type: 'string' } },
          },
        },
        ...errorResponses,
      },
    },
  }, async (request) => {
    const { filter, action, dryRun = false, reason } = request.body;
    let priority: number | undefined;
    if (action === 'priority') {
      if (request.body.priority === undefined) throw new BadRequestError('action "priority" needs "priority" (a class name or level)');
      priority = parsePriority(request.body.priority, priorities());
    } else if (request.body.priority !== undefined) {
      throw new BadRequestError(`"priority" is only for action "priority", not "${action}"`);
    }
    const opts = { dryRun, ...(priority !== undefined ? { priority } : {}), ...(reason ? { reason } : {}) };
    if (dryRun) return runBulk(ctx, filter, action, opts);
    return audited(ctx, request, { action: `bulk.${action}`, filter, ...(priority !== undefined ? { detail: { priority } } : {}) },
      () => runBulk(ctx, filter, action, opts),
      (r) => ({ ids: r.ids, idCount: r.changed, detail: { matched: r.matched, changed: r.changed, skipped: r.skipped, failed: r.failed, ...(priority !== undefined ? { priority } : {}) } }));
  });

  app.get<{ Params: IdParams }>('/messages/:id', {
    schema: {
      summary: 'One mail: envelope, recipients, attempts, classification and the parsed message',
      tags: ['messages'],
      params: mailIdParams,
      response: { 200: mailDetailSchema, ...errorResponses },
    },
  }, async (request) => {
    const mail = await mustGet(ctx, normaliseId(request.params.id));
    return detail(ctx.queue, mail, priorities());
  });

  app.get<{ Params: IdParams }>('/messages/:id/raw', {
    schema: {
      summary: 'The stored message as message/rfc822, for download',
      tags: ['messages'],
      params: mailIdParams,
      response: { 200: { description: 'The message bytes as stored', type: 'string', format: 'binary' }, ...errorResponses },
    },
  }, async (request, reply) => {
    const id = normaliseId(request.params.id);
    await mustGet(ctx, id);
    const body = await ctx.queue.readBody(id);
    return reply
      .type('message/rfc822')
      .header('Content-Disposition', `attachment; filename="${id}.eml"`)
      .header('X-Content-Type-Options', 'nosniff')
      .send(body);
  });

  const single = (
    verb: 'remove' | 'hold' | 'release' | 'retry',
    run: (id: string, request: FastifyRequest<{ Params: IdParams; Body: { reason?: string } | undefined }>) => Promise<QueuedMail>,
  ) => async (request: FastifyRequest<{ Params: IdParams; Body: { reason?: string } | undefined }>) => {
    const id = normaliseId(request.params.id);
    const mail = await audited(ctx, request, { action: verb, ids: [id] }, () => run(id, request));
    return summarise(mail, priorities());
  };

  const reasonBody = {
    anyOf: [
      { type: 'object', properties: { reason: { type: 'string', maxLength: 500 } }, additionalProperties: false },
      { type: 'null' },
    ],
  };

  app.delete<{ Params: IdParams; Body: { reason?: string } | undefined }>('/messages/:id', {
    schema: {
      summary: 'Remove a mail (final: it is never delivered after this answers)',
      tags: ['messages'], params: mailIdParams, response: actionResponse,
    },
  }, single('remove', (id, r) => ctx.queue.remove(id, r.body?.reason ?? 'removed by operator')));

  app.post<{ Params: IdParams; Body: { reason?: string } | undefined }>('/messages/:id/hold', {
    schema: { summary: 'Hold a mail (it is not delivered until released)', tags: ['messages'], params: mailIdParams, body: reasonBody, response: actionResponse },
  }, single('hold', (id, r) => ctx.queue.hold(id, r.body?.reason ?? 'held by operator')));

  app.post<{ Params: IdParams; Body: { reason?: string } | undefined }>('/messages/:id/release', {
    schema: { summary: 'Release a held mail', tags: ['messages'], params: mailIdParams, response: actionResponse },
  }, single('release', (id) => ctx.queue.release(id)));

  app.post<{ Params: IdParams; Body: { reason?: string } | undefined }>('/messages/:id/retry', {
    schema: { summary: 'Make a queued (deferred or delayed) mail due now', tags: ['messages'], params: mailIdParams, response: actionResponse },
  }, single('retry', (id) => ctx.queue.retryNow(id)));

  app.post<{ Params: IdParams; Body: { reason?: string; recipients?: string[] } | undefined }>('/messages/:id/bounce', {
    schema: {
      summary: 'Give a mail up with a DSN to its sender: due now (a held one too), its next attempt fails every recipient not yet done and delivers nothing',
      description: 'With `recipients`, only those are given up (each a recipient not yet done: 404 for an address the mail does not have, 409 for one already done); the others are tried as before, and a held mail stays held until released.',
      tags: ['messages'], params: mailIdParams,
      body: {
        anyOf: [
          {
            type: 'object',
            properties: {
              reason: { type: 'string', maxLength: 500 },
              recipients: { type: 'array', items: { type: 'string', minLength: 1, maxLength: 512 }, minItems: 1, maxItems: 1000 },
            },
            additionalProperties: false,
          },
          { type: 'null' },
        ],
      },
      response: actionResponse,
    },
  }, async (request) => {
    const id = normaliseId(request.params.id);
    const recipients = request.body?.recipients;
    const what = { action: 'bounce', ids: [id], ...(recipients ? { detail: { recipients } } : {}) };
    const mail = await audited(ctx, request, what, () => ctx.queue.bounce(id, request.body?.reason ?? 'bounced by the operator', recipients));
    return summarise(mail, priorities());
  });

  app.post<{ Params: IdParams; Body: { from: string; to: string } }>('/messages/:id/redirect', {
    schema: {
      summary: 'Correct a recipient not yet done (a misspelt address, a moved mailbox): it is tried afresh at the new address',
      description: "The recipient `from` is `to` from now on; its ORCPT keeps the sender's address, so a DSN still names it. A queued mail is due at once, a held one stays held. 404 for an address the mail does not have; 409 for one already done, for a `to` the mail already has, or while an attempt runs (hold it first).",
      tags: ['messages'], params: mailIdParams,
      body: {
        type: 'object',
        properties: {
          from: { type: 'string', minLength: 3, maxLength: 512 },
          to: { type: 'string', maxLength: 320, pattern: '^[^\\s<>@]{1,64}@[^\\s<>@]{1,253}$', description: 'local@domain' },
        },
        required: ['from', 'to'],
        additionalProperties: false,
      },
      response: actionResponse,
    },
  }, async (request) => {
    const id = normaliseId(request.params.id);
    const { from, to } = request.body;
    const mail = await audited(ctx, request, { action: 'redirect', ids: [id], detail: { from, to } }, () => ctx.queue.redirect(id, from, to));
    return summarise(mail, priorities());
  });

  app.patch<{ Params: IdParams; Body: { priority?: string | number; notBefore?: string | number } }>('/messages/:id', {
    schema: {
      summary: 'Change the priority and/or the not-before time of a mail',
      tags: ['messages'],
      params: mailIdParams,
      body: {
        type: 'object',
        properties: {
          priority: { anyOf: [{ type: 'string' }, { type: 'integer' }], description: 'Class name or level' },
          notBefore: { anyOf: [{ type: 'string' }, { type: 'number' }], description: 'ISO 8601 or epoch ms' },
        },
        additionalProperties: false,
        minProperties: 1,
      },
      response: actionResponse,
    },
  }, async (request) => {
    const id = normaliseId(request.params.id);
    const priority = request.body.priority !== undefined ? parsePriority(request.body.priority, priorities()) : undefined;
    const notBefore = request.body.notBefore !== undefined ? parseTime(request.body.notBefore, 'notBefore') : undefined;
    const detailOf = { ...(priority !== undefined ? { priority } : {}), ...(notBefore !== undefined ? { notBefore } : {}) };
    const mail = await audited(ctx, request, { action: 'update', ids: [id], detail: detailOf }, async () => {
      let m = await mustGet(ctx, id);
      if (priority !== undefined) m = await ctx.queue.setPriority(id, priority);
      if (notBefore !== undefined) m = await ctx.queue.setNotBefore(id, notBefore);
      return m;
    });
    return summarise(mail, priorities());
  });
}
