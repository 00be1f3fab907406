/** GET /api/audit: the operator actions, newest first, paginated with a cursor. */
import type { FastifyInstance } from 'fastify';
import type { AdminContext } from '../context.js';
import { BadRequestError } from '../errors.js';
import { errorResponses } from '../schemas.js';

export async function auditRoutes(app: FastifyInstance, ctx: AdminContext): Promise<void> {
  app.get<{ Querystring: { limit: number; cursor?: string } }>('/audit', {
    schema: {
      summary: 'Every operator action: who (token name), when, what, on which mails, from which address, and how it ended',
      tags: ['audit'],
      querystring: {
        type: 'object',
        properties: { limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 }, cursor: { type: 'string', pattern: '^\\d+$' } },
        additionalProperties: false,
      },
      response: {
        200: {
          type: 'object',
          properties: {
            items: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  at: { type: 'number' }, actor: { type: 'string' }, role: { type: 'string' }, ip: { type: 'string' },
                  action: { type: 'string' }, ids: { type: 'array', items: { type: 'string' } }, idCount: { type: 'integer' },
                  filter: { type: 'object', additionalProperties: true }, detail: { type: 'object', additionalProperties: true },
                  result: { type: 'string' }, status: { type: 'integer' }, error: { type: 'string' },
                },
              },
            },
            nextCursor: { type: 'string' },
            file: { type: 'string' },
          },
        },
        ...errorResponses,
      },
    },
  }, async (request) => {
    const { limit, cursor } = request.query;
    if (cursor !== undefined && !Number.isSafeInteger(Number(cursor))) throw new BadRequestError('cursor: not a cursor this server gave out');
    const page = await ctx.audit.read({ limit, ...(cursor !== undefined ? { cursor } : {}) });
    return { ...page, file: ctx.audit.file };
  });
}
