/**
 * GET /api/stats: the queue at a glance. Counts come from `queue.stats()` (indexes, not a scan);
 * rates from the Prometheus counters over a sliding window (see rates.ts).
 */
import type { FastifyInstance } from 'fastify';
import type { DepthHistoryPage, DestinationView, ReplyDigestPage, Stats } from '../../api-types.js';
import type { AdminContext } from '../context.js';
import { priorityNameOf } from '../filters.js';
import { BadRequestError, HttpError } from '../errors.js';
import { errorResponses } from '../schemas.js';
import { REPLY_KINDS, type ReplyKind } from '../../scheduler/reply-kind.js';

const counts = { type: 'object', additionalProperties: { type: 'integer' } } as const;

/** "0-5m", "5-10m", …, "1440m+" for qshape's columns. */
export function bucketLabels(bucketsMinutes: number[]): string[] {
  return bucketsMinutes.map((limit, i) => {
    const from = i === 0 ? 0 : bucketsMinutes[i - 1]!;
    return Number.isFinite(limit) ? `${from}-${limit}m` : `${from}m+`;
  });
}

export async function statsRoutes(app: FastifyInstance, ctx: AdminContext): Promise<void> {
  app.get<{ Querystring: { topN: number } }>('/stats', {
    schema: {
      summary: 'Queue statistics: counts by state and priority, oldest mail, destinations, qshape, rates',
      tags: ['stats'],
      querystring: {
        type: 'object',
        properties: { topN: { type: 'integer', minimum: 1, maximum: 1000, default: 10, description: 'Destinations listed' } },
        additionalProperties: false,
      },
      response: {
        200: {
          type: 'object',
          properties: {
            at: { type: 'number' },
            node: { type: 'string', description: "The node that answered (kafka.nodeId or its host name): the rates, suspended destinations, refusals and replies are this node's" },
            byState: counts,
            byPriority: { ...counts, description: 'Live mail by priority level' },
            byPriorityName: { ...counts, description: 'Live mail by priority class name' },
            oldestReceivedAt: { type: ['number', 'null'] },
            oldestAgeSeconds: { type: ['number', 'null'] },
            topDestinations: { type: 'array', items: { type: 'object', properties: { domain: { type: 'string' }, count: { type: 'integer' } } } },
            ageByDestination: {
              type: 'object',
              description: 'Like Postfix qshape: live mail by destination and age bucket; the last bucket is open-ended (null)',
              properties: {
                bucketsMinutes: { type: 'array', items: { type: ['number', 'null'] } },
                bucketLabels: { type: 'array', items: { type: 'string' } },
                rows: {
                  type: 'array',
                  items: { type: 'object', properties: { domain: { type: 'string' }, total: { type: 'integer' }, counts: { type: 'array', items: { type: 'integer' } } } },
                },
              },
            },
            rates: {
              type: 'object',
              description: 'Per minute over the window',
              properties: {
                acceptedPerMinute: { type: 'number' }, deliveredPerMinute: { type: 'number' },
                deferredPerMinute: { type: 'number' }, bouncedPerMinute: { type: 'number' },
                refusedPerMinute: { type: 'number', description: 'SMTP commands and transactions refused at the door' },
              },
            },
            refusedByReason: { type: 'object', additionalProperties: { type: 'number' }, description: 'The refusals per minute by reason (spoolhouse_rejected_total), reasons seen in the window only' },
            ratesWindowSeconds: { type: 'number', description: 'The seconds the rates were measured over: the window (60), or less on a node younger than that, whose rates are extrapolated to a minute' },
            deliveringNow: {
              type: 'array',
              description: "What this node is delivering now: each destination with connections open or mail waiting for one (at most 20, most first), with the connections the concurrency feedback allows it now",
              items: {
                type: 'object',
                properties: {
                  destination: { type: 'string' }, domains: { type: 'array', items: { type: 'string' } },
                  open: { type: 'integer' }, allowed: { type: 'integer' }, limit: { type: 'integer' }, waiting: { type: 'integer' },
                },
              },
            },
            suspendedDestinations: {
              type: 'array',
              description: "Destinations this node's delivery suspended because no host could be reached: their mail is deferred without connecting until `until`",
              items: {
                type: 'object',
                properties: {
                  destination: { type: 'string' },
                  domains: { type: 'array', items: { type: 'string' } },
                  until: { type: 'number' },
                  reply: { type: 'object', properties: { code: { type: 'integer' }, enhanced: { type: 'string' }, message: { type: 'string' } } },
                },
              },
            },
          },
        },
        ...errorResponses,
      },
    },
  }, async (request): Promise<Stats> => {
    const [stats, { rates, refusedByReason, seconds }] = await Promise.all([ctx.queue.stats({ topN: request.query.topN }), ctx.rates.window()]);
    const priorities = ctx.config.current.priorities;
    const byPriorityName: Record<string, number> = {};
    for (const [level, n] of Object.entries(stats.byPriority)) {
      const name = priorityNameOf(Number(level), priorities) ?? `level-${level}`;
      byPriorityName[name] = (byPriorityName[name] ?? 0) + n;
    }
    const buckets = stats.ageByDestination.bucketsMinutes;
    return {
      at: stats.at,
      node: ctx.nodeName,
      byState: stats.byState,
      byPriority: stats.byPriority,
      byPriorityName,
      oldestReceivedAt: stats.oldestReceivedAt ?? null,
      oldestAgeSeconds: stats.oldestReceivedAt !== undefined ? Math.max(0, Math.round((stats.at - stats.oldestReceivedAt) / 1000)) : null,
      topDestinations: stats.topDestinations,
      ageByDestination: {
        bucketsMinutes: buckets.map((b) => (Number.isFinite(b) ? b : null)),
        bucketLabels: bucketLabels(buckets),
        rows: stats.ageByDestination.rows,
      },
      rates,
      refusedByReason,
      ratesWindowSeconds: seconds,
      suspendedDestinations: ctx.suspendedDestinations(),
      deliveringNow: ctx.deliveringNow?.() ?? [],
    };
  });

  app.get<{ Querystring: { window: string; outcome?: 'deferred' | 'failed' | 'expired'; domain?: string; kind?: ReplyKind; limit: number } }>('/stats/replies', {
    schema: {
      summary: "This node's deferrals and bounces by destination and reply, most recipients first (pflogsumm's deferral and bounce detail)",
      description: 'Recipients deferred, failed or expired in the window (at most the last hour), grouped by outcome, recipient domain and reply; replies that differ only in addresses, numbers and ids count as one (`reply.message` masked, `example` the last one as sent). Each row has the `kind` of trouble its reply tells of (invalid-recipient, mailbox-full, rate-limited, spam-block, …), and `byKind` counts the recipients of all rows by kind. In memory, per node.',
      tags: ['stats'],
      querystring: {
        type: 'object',
        properties: {
          window: { type: 'string', pattern: '^\\d+[smh]$', default: '1h', description: 'e.g. 15m, 1h (at most 1h)' },
          outcome: { type: 'string', enum: ['deferred', 'failed', 'expired'] },
          domain: { type: 'string', maxLength: 253 },
          kind: { type: 'string', enum: [...REPLY_KINDS] },
          limit: { type: 'integer', minimum: 1, maximum: 500, default: 50 },
        },
        additionalProperties: false,
      },
      response: {
        200: {
          type: 'object',
          properties: {
            rows: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  outcome: { type: 'string' }, kind: { type: 'string' }, domain: { type: 'string' },
                  reply: { type: 'object', properties: { code: { type: 'integer' }, enhanced: { type: 'string' }, message: { type: 'string' } } },
                  count: { type: 'integer' }, lastAt: { type: 'number' }, lastMailId: { type: 'string' }, example: { type: 'string' },
                },
              },
            },
            total: { type: 'integer' },
            byKind: { type: 'object', additionalProperties: { type: 'integer' } },
            notItemised: { type: 'integer' },
            windowSeconds: { type: 'integer' },
          },
        },
        ...errorResponses,
      },
    },
  }, async (request): Promise<ReplyDigestPage> => {
    const { window, outcome, domain, kind, limit } = request.query;
    const n = Number(window.slice(0, -1));
    const windowMs = n * ({ s: 1_000, m: 60_000, h: 3_600_000 } as const)[window.slice(-1) as 's' | 'm' | 'h'];
    if (windowMs < 1_000 || windowMs > 3_600_000) throw new BadRequestError(`window: "${window}" must be from 1s to 1h`);
    return ctx.replies({ windowMs, limit, ...(outcome ? { outcome } : {}), ...(domain ? { domain } : {}), ...(kind ? { kind } : {}) });
  });

  app.get<{ Params: { domain: string } }>('/destinations/:domain', {
    schema: {
      summary: 'Where this node would send the mail of a domain now: its MX hosts (or route, or smarthost) in order, and how TLS is used (its policy, MTA-STS)',
      description: 'Looked up afresh (DNS, the MTA-STS policy), as the next delivery attempt would; a domain that cannot be delivered to now has `via: "none"` and the `failure` its mail would be deferred or bounced with.',
      tags: ['stats'],
      params: {
        type: 'object',
        properties: { domain: { type: 'string', minLength: 1, maxLength: 253, pattern: '^[^\\s@/]+$' } },
        required: ['domain'],
      },
      response: {
        200: {
          type: 'object',
          properties: {
            domain: { type: 'string' },
            via: { type: 'string' },
            hosts: { type: 'array', items: { type: 'object', properties: { host: { type: 'string' }, port: { type: 'integer' }, preference: { type: 'integer' }, address: { type: 'string' } } } },
            tlsPolicy: { type: 'string' },
            mtaSts: { type: 'boolean' },
            fallbackRelay: { type: 'array', description: 'delivery.fallbackRelay, tried after `hosts` when none of them can be used', items: { type: 'object', properties: { host: { type: 'string' }, port: { type: 'integer' } } } },
            failure: {
              type: 'object',
              properties: { permanent: { type: 'boolean' }, reply: { type: 'object', properties: { code: { type: 'integer' }, enhanced: { type: 'string' }, message: { type: 'string' } } } },
            },
            connections: {
              type: 'object',
              description: "This node's delivery to it now (absent when this node had no mail for it lately): connections `open`, how many it may open now (`allowed`: moved by the concurrency feedback between 1 and `limit`), and the mails `waiting` for one",
              properties: {
                destination: { type: 'string' }, domains: { type: 'array', items: { type: 'string' } },
                open: { type: 'integer' }, allowed: { type: 'integer' }, limit: { type: 'integer' }, waiting: { type: 'integer' },
              },
            },
          },
        },
        ...errorResponses,
      },
    },
  }, async (request): Promise<DestinationView> => {
    if (!ctx.whereTo) throw new HttpError(503, 'This server runs no delivery to ask');
    const view = await ctx.whereTo(request.params.domain);
    const connections = ctx.connectionsTo?.(view.domain);
    return connections ? { ...view, connections } : view;
  });

  app.get<{ Querystring: { since: number } }>('/stats/history', {
    schema: {
      summary: 'Queue depth by state and the rates over the last day, sampled by the server (every 10 s by default)',
      tags: ['stats'],
      querystring: {
        type: 'object',
        properties: { since: { type: 'number', minimum: 0, default: 0, description: 'Only samples at or after this time (ms since the epoch)' } },
        additionalProperties: false,
      },
      response: {
        200: {
          type: 'object',
          properties: {
            everyMs: { type: 'number' },
            samples: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  at: { type: 'number' },
                  byState: counts,
                  rates: { type: 'object', additionalProperties: { type: 'number' } },
                },
              },
            },
          },
        },
        ...errorResponses,
      },
    },
  }, async (request): Promise<DepthHistoryPage> => ({ everyMs: ctx.history.everyMs, samples: ctx.history.since(request.query.since) }));
}
