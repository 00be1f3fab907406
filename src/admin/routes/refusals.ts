/**
 * GET /api/refusals: the door's recent refusals on this node (smtp.refusalsKept of them), newest
 * first, filtered by reason, client address or network, and text; paged with a cursor.
 */
import type { FastifyInstance } from 'fastify';
import type { AdminContext } from '../context.js';
import { BadRequestError } from '../errors.js';
import { errorResponses } from '../schemas.js';

interface Query {
  limit: number;
  before?: number;
  after?: number;
  reason?: string;
  client?: string;
  text?: string;
}

const refusal = {
  type: 'object',
  properties: {
    seq: { type: 'integer' },
    at: { type: 'number' },
    client: { type: 'string' },
    helo: { type: 'string' },
    user: { type: 'string' },
    sender: { type: 'string', description: 'The open transaction\'s sender ("" for the null sender)' },
    command: { type: 'string', description: 'What was answered: the command line (AUTH without credentials), or "DATA (end of data)"; absent at connect and for idle timeouts' },
    reply: { type: 'object', properties: { code: { type: 'integer' }, enhanced: { type: 'string' }, text: { type: 'string' } } },
    reason: { type: 'string', description: 'The label of spoolhouse_rejected_total' },
    listener: { type: 'string' },
  },
} as const;

export async function refusalRoutes(app: FastifyInstance, ctx: AdminContext): Promise<void> {
  app.get<{ Querystring: Query }>('/refusals', {
    schema: {
      summary: "This node's recent refusals at the door (every SMTP reply of 400 or more), newest first",
      description: 'What a Postfix operator greps the log for ("NOQUEUE: reject"). Kept in memory, per node: `smtp.refusalsKept` of them.',
      tags: ['stats'],
      querystring: {
        type: 'object',
        properties: {
          limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
          before: { type: 'integer', minimum: 1, description: 'A nextCursor: only older refusals' },
          after: { type: 'integer', minimum: 0, description: 'The seq of the newest refusal seen: only newer ones (to follow the log)' },
          reason: { type: 'string', maxLength: 64, description: 'e.g. relay, dnsbl, helo, spf, rate, auth, size' },
          client: { type: 'string', maxLength: 64, description: 'An IP address, or a network such as 198.51.100.0/24' },
          text: { type: 'string', maxLength: 256, description: 'Case-insensitive text in the HELO name, user, sender, command or reply' },
        },
        additionalProperties: false,
      },
      response: {
        200: {
          type: 'object',
          properties: {
            items: { type: 'array', items: refusal },
            nextCursor: { type: 'integer' },
            capacity: { type: 'integer', description: 'smtp.refusalsKept' },
            total: { type: 'integer', description: 'Refusals since the node started, kept or not' },
          },
        },
        ...errorResponses,
      },
    },
  }, async (request) => {
    const { limit, before, after, reason, client, text } = request.query;
    try {
      return ctx.refusals.page({
        limit, ...(before !== undefined ? { before } : {}), ...(after !== undefined ? { after } : {}),
        ...(reason ? { reason } : {}), ...(client ? { client } : {}), ...(text ? { text } : {}),
      });
    } catch (err) {
      if (err instanceof Error && err.name === 'BadClientFilter') throw new BadRequestError(err.message);
      throw err;
    }
  });
}
