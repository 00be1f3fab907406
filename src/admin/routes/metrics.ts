/**
 * GET /metrics: Prometheus text exposition of the server's registry, behind the same token as
 * the API (Prometheus sends it with `authorization: { credentials: <token> }` in its scrape
 * config). Queue depth is read from the queue when scraped, by state and priority class:
 * live states (queued, active, held) per priority, finished states with priority "all".
 */
import type { FastifyInstance } from 'fastify';
import type { AdminContext } from '../context.js';
import type { MailState } from '../../queue/types.js';
import { priorityNameOf } from '../filters.js';
import { errorResponses } from '../schemas.js';

const LIVE: MailState[] = ['queued', 'active', 'held'];

async function updateQueueDepth(ctx: AdminContext): Promise<void> {
  const stats = await ctx.queue.stats({ topN: 1 });
  const priorities = ctx.config.current.priorities;
  const gauge = ctx.metrics.queueDepth;
  gauge.reset();
  const levels = new Set([...Object.values(priorities.classes), ...Object.keys(stats.byPriority).map(Number)]);
  // Live mail per state and priority: one counted browse each (the queue's indexes answer it).
  await Promise.all(LIVE.flatMap((state) => [...levels].map(async (level) => {
    const page = await ctx.queue.browse({ state, priority: level }, { limit: 1 });
    gauge.set({ state, priority: priorityNameOf(level, priorities) ?? String(level) }, page.total.count);
  })));
  for (const [state, n] of Object.entries(stats.byState)) {
    if (!LIVE.includes(state as MailState)) gauge.set({ state, priority: 'all' }, n);
  }
}

export async function metricsRoutes(app: FastifyInstance, ctx: AdminContext): Promise<void> {
  app.get('/metrics', {
    schema: {
      summary: 'Prometheus metrics (text exposition format)',
      tags: ['metrics'],
      produces: ['text/plain'],
      response: { 200: { type: 'string' }, ...errorResponses },
    },
  }, async (_request, reply) => {
    await updateQueueDepth(ctx);
    const text = await ctx.metrics.registry.metrics();
    return reply.type(ctx.metrics.registry.contentType).send(text);
  });
}
