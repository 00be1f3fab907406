/**
 * GET /health: no token, no data — only whether the queue answers, for load balancers and
 * process supervisors. 503 when the queue does not.
 */
import type { FastifyInstance } from 'fastify';
import type { AdminContext } from '../context.js';

export async function healthRoutes(app: FastifyInstance, ctx: AdminContext): Promise<void> {
  app.get('/health', {
    schema: {
      summary: 'Liveness: does the queue answer (no token needed)',
      tags: ['health'],
      security: [],
      response: {
        200: { type: 'object', properties: { status: { type: 'string' }, backend: { type: 'string' } } },
        503: { type: 'object', properties: { status: { type: 'string' }, backend: { type: 'string' }, message: { type: 'string' } } },
      },
    },
  }, async (_request, reply) => {
    try {
      await ctx.queue.nextDueAt();
      return { status: 'ok', backend: ctx.queue.backend };
    } catch (err) {
      ctx.logger.warn({ err }, 'health: the queue does not answer');
      return reply.code(503).send({ status: 'unavailable', backend: ctx.queue.backend, message: (err as Error).message });
    }
  });
}
