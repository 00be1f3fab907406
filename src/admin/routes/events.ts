/**
 * GET /api/events: the queue's change feed as Server-Sent Events, one `event: <type>` with a
 * JSON `data:` line per change, and a comment line every `heartbeatMs` so proxies and clients
 * see a live connection. A client that cannot keep up is not buffered without bound: when the
 * socket's buffer is full, events are dropped and the client is told (`event: overflow`) so it
 * can reload its view. The stream ends when the client goes or the server closes.
 */
import type { FastifyInstance } from 'fastify';
import type { AdminContext } from '../context.js';
import { errorResponses } from '../schemas.js';

let nextEventId = 1;

export async function eventRoutes(app: FastifyInstance, ctx: AdminContext): Promise<void> {
  app.get('/events', {
    schema: {
      summary: 'Live queue changes (Server-Sent Events): enqueued, reserved, delivered, deferred, bounced, expired, removed, held, released, updated',
      description: 'Send the token in the Authorization header (the console reads the stream with fetch). Each event is `event: <type>` and `data: {"type","id","state","at",…}`; `: heartbeat` comments keep it alive.',
      tags: ['events'],
      produces: ['text/event-stream'],
      response: { 200: { description: 'text/event-stream', type: 'string' }, ...errorResponses },
    },
  }, async (request, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache, no-transform',
      Connection: 'keep-alive',
      'X-Accel-Buffering': 'no',
    });
    res.write(`retry: 3000\n: connected\n\n`);
    let overflowed = false;
    const send = (text: string) => {
      if (res.writableNeedDrain) {
        if (!overflowed) {
          overflowed = true;
          res.once('drain', () => {
            overflowed = false;
            res.write(`event: overflow\ndata: {"type":"overflow"}\n\n`);
          });
        }
        return;
      }
      res.write(text);
    };
    const unsubscribe = ctx.queue.subscribe((event) => {
      send(`id: ${nextEventId++}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`);
    });
    const heartbeat = setInterval(() => send(`: heartbeat ${Date.now()}\n\n`), ctx.heartbeatMs);
    heartbeat.unref();
    const end = () => {
      clearInterval(heartbeat);
      unsubscribe();
      ctx.streams.delete(end);
      if (!res.writableEnded) res.end();
    };
    ctx.streams.add(end);
    request.raw.on('close', end);
    res.on('error', (err) => {
      request.log.debug({ err }, 'event stream closed with an error');
      end();
    });
  });
}
