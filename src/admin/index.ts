/**
 * The admin server (fastify 5): the REST API under /api, Prometheus /metrics, /health, the
 * OpenAPI description (/api/openapi.json) with interactive docs (/api/docs), and the built web
 * console (admin-ui/dist/) at /.
 *
 * What it guarantees:
 * - Every API route and /metrics need a valid token (auth.ts: one onRequest hook on the API's
 *   encapsulated context); a viewer token may read but not change. Public without a token: GET
 *   /health (status only), the console's static files (the console asks for the token itself)
 *   and the API docs and OpenAPI description (they describe the API and hold no data; the docs
 *   page could not load the description otherwise).
 * - Every error is JSON `{ statusCode, error, message }`; bad input is a 4xx, never a 500.
 * - Every operator change is in the audit log, on disk, before the answer (audit.ts).
 * - A removal is answered only after the queue made it final (routes/messages.ts).
 * - Every response carries a strict Content-Security-Policy (no inline or foreign script), so
 *   nothing taken from a mail can run as script in the console.
 */
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Server as TlsServer } from 'node:tls';
import fastifyStatic from '@fastify/static';
import fastifySwagger from '@fastify/swagger';
import fastifySwaggerUi from '@fastify/swagger-ui';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { SuspendedDestination } from '../api-types.js';
import { RefusalLog } from '../ingress/refusals.js';
import { ConfigError, projectRoot } from '../config/load.js';
import { parseHostPort, type Config } from '../config/schema.js';
import { readTlsPair } from '../config/tls-files.js';
import type { ConfigStore } from '../config/store.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Queue } from '../queue/types.js';
import { AuditLog } from './audit.js';
import { authHook, bearerToken, TokenAuthority } from './auth.js';
import type { AdminContext } from './context.js';
import { adminErrorHandler, errorBody, UnauthorizedError } from './errors.js';
import { DepthHistory } from './history.js';
import { RateWindow } from './rates.js';
import { auditRoutes } from './routes/audit.js';
import { configRoutes } from './routes/config.js';
import { eventRoutes } from './routes/events.js';
import { healthRoutes } from './routes/health.js';
import { messageRoutes } from './routes/messages.js';
import { metricsRoutes } from './routes/metrics.js';
import { statsRoutes } from './routes/stats.js';
import { refusalRoutes } from './routes/refusals.js';

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  // The console sets style attributes (chart geometry); styles cannot run script.
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export interface AdminServerOptions {
  config: ConfigStore;
  queue: Queue;
  logger: Logger;
  metrics: Metrics;
  /** Holds admin.token (generated when none is configured) and audit.log. */
  dataDir: string;
  /** The built console; default admin-ui/dist/ of the project. Served only when it exists. */
  uiDir?: string;
  /** SSE heartbeat interval; default 15 s. */
  heartbeatMs?: number;
  /** Mails listed and acted on per step of a bulk action; default 500 (routes/messages.ts). */
  bulkPageSize?: number;
  /** How often queue depth is sampled for GET /api/stats/history; default 10 s. */
  historyEveryMs?: number;
  /** This node's dead destinations for GET /api/stats (Scheduler.suspendedDestinations). */
  suspendedDestinations?: () => SuspendedDestination[];
  /** Where this node would send a domain's mail now, for GET /api/destinations/:domain. */
  whereTo?: AdminContext['whereTo'];
  /** This node's connections to a domain's destination (Scheduler.destinationConnections). */
  connectionsTo?: AdminContext['connectionsTo'];
  /** What this node is delivering now, for GET /api/stats (Scheduler.deliveringNow). */
  deliveringNow?: AdminContext['deliveringNow'];
  /** This node's name (kafka.nodeId or the host name), for GET /api/stats: the per-node figures say whose they are. */
  nodeName?: string;
  /** This node's deferral and bounce detail for GET /api/stats/replies (Scheduler.replies). */
  replies?: AdminContext['replies'];
  /** This node's recent refusals for GET /api/refusals (SmtpIngress.refusals). */
  refusals?: RefusalLog;
}

export interface AdminServer {
  app: FastifyInstance;
  listen(): Promise<string>;
  close(): Promise<void>;
}

export async function createAdminServer(o: AdminServerOptions): Promise<AdminServer> {
  const logger = o.logger.child({ component: 'admin' });
  const tlsFiles = o.config.current.admin.tls;
  const app = Fastify({
    // admin.tls: HTTPS only (turning it on or off takes a restart; new files are picked up live).
    ...(tlsFiles ? { https: readTlsPair('admin.tls', tlsFiles) } : {}),
    loggerInstance: logger,
    // One line per request at debug (below); operator actions are logged and audited by the routes.
    logController: new LogController({ disableRequestLogging: true }),
    // Unknown query/body keys are an error (400), not silently dropped: a mistyped filter must
    // not turn a bulk action into one on every mail.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false } },
    bodyLimit: 1024 * 1024,
    // Keep-alive and SSE connections must not hold close() up.
    forceCloseConnections: true,
    trustProxy: false,
  }) as unknown as FastifyInstance; // pino's Logger is a FastifyBaseLogger; the generics just differ
  const rates = new RateWindow({ metrics: o.metrics });
  const ctx: AdminContext = {
    config: o.config,
    queue: o.queue,
    logger,
    metrics: o.metrics,
    audit: new AuditLog(o.dataDir),
    rates,
    history: new DepthHistory({ queue: o.queue, rates: () => rates.rates(), logger, file: join(o.dataDir, 'depth-history.jsonl'), ...(o.historyEveryMs !== undefined ? { everyMs: o.historyEveryMs } : {}) }),
    heartbeatMs: o.heartbeatMs ?? 15_000,
    streams: new Set(),
    suspendedDestinations: o.suspendedDestinations ?? (() => []),
    refusals: o.refusals ?? new RefusalLog(0),
    replies: o.replies ?? (() => ({ rows: [], total: 0, byKind: {}, windowSeconds: 3600 })),
    nodeName: o.nodeName ?? hostname(),
    ...(o.whereTo ? { whereTo: o.whereTo } : {}),
    ...(o.connectionsTo ? { connectionsTo: o.connectionsTo } : {}),
    ...(o.deliveringNow ? { deliveringNow: o.deliveringNow } : {}),
    ...(o.bulkPageSize !== undefined ? { bulkPageSize: o.bulkPageSize } : {}),
  };
  const authority = new TokenAuthority({ config: () => o.config.current, dataDir: o.dataDir, logger });

  app.setErrorHandler(adminErrorHandler);
  app.addHook('onSend', async (_request, reply, payload) => {
    if (!reply.hasHeader('content-security-policy')) void reply.header('Content-Security-Policy', CONTENT_SECURITY_POLICY);
    void reply.header('X-Content-Type-Options', 'nosniff');
    void reply.header('Referrer-Policy', 'no-referrer');
    return payload;
  });
  app.addHook('onResponse', async (request, reply) => {
    request.log.debug({ method: request.method, route: request.routeOptions.url, statusCode: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'admin request');
  });
  app.addHook('preClose', async () => {
    for (const end of [...ctx.streams]) end();
  });

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Spoolhouse admin API',
        version: '1',
        description: 'Browse, inspect and steer the Spoolhouse mail queue. Send `Authorization: Bearer <token>` (admin.token, admin.tokens, or the generated <spool.dir>/admin.token). Errors are `{ statusCode, error, message }`.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
      tags: ['messages', 'stats', 'config', 'events', 'audit', 'metrics', 'health'].map((name) => ({ name })),
    },
  });
  await app.register(fastifySwaggerUi, {
    routePrefix: '/api/docs',
    // Swagger UI's own CSP (hashes of its inline scripts), minus upgrade-insecure-requests: the
    // admin server speaks plain HTTP on loopback, and an upgrade would break every asset.
    staticCSP: true,
    transformStaticCSP: (header) => header.replace(/\s*upgrade-insecure-requests;?/, ''),
  });
  app.get('/api/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  await app.register(async (pub) => healthRoutes(pub, ctx));
  await app.register(async (api) => {
    api.addHook('onRequest', authHook(authority));
    await api.register(async (p) => messageRoutes(p, ctx), { prefix: '/api' });
    await api.register(async (p) => statsRoutes(p, ctx), { prefix: '/api' });
    await api.register(async (p) => refusalRoutes(p, ctx), { prefix: '/api' });
    await api.register(async (p) => configRoutes(p, ctx), { prefix: '/api' });
    await api.register(async (p) => eventRoutes(p, ctx), { prefix: '/api' });
    await api.register(async (p) => auditRoutes(p, ctx), { prefix: '/api' });
    await api.register(async (p) => metricsRoutes(p, ctx));
  });

  registerConsole(app, o.uiDir ?? join(projectRoot(), 'admin-ui', 'dist'), logger, authority);

  await app.ready();
  // New certificate files (a renewal, then SIGHUP or a change through the API) serve new connections.
  const onConfig = (next: Config): void => {
    if (!tlsFiles || !next.admin.tls) return;
    try {
      (app.server as unknown as TlsServer).setSecureContext(readTlsPair('admin.tls', next.admin.tls));
    } catch (err) {
      logger.error({ err: (err as Error).message }, 'cannot reload the admin TLS certificate; keeping the old one');
    }
  };
  o.config.on('change', onConfig);
  ctx.rates.start();
  await ctx.history.start();

  let closed = false;
  return {
    app,
    async listen() {
      const where = parseHostPort(o.config.current.admin.listen)!;
      await app.listen({ host: where.host, port: where.port });
      const addr = app.server.address();
      const port = typeof addr === 'object' && addr ? addr.port : where.port;
      const host = where.host.includes(':') ? `[${where.host}]` : where.host;
      const url = `${tlsFiles ? 'https' : 'http'}://${host}:${port}`;
      logger.info({ url }, 'admin listening');
      if (!tlsFiles && !isLoopback(where.host)) {
        logger.warn({ listen: o.config.current.admin.listen }, 'admin API on a network address without admin.tls: tokens and mail cross the network in clear text');
      }
      return url;
    },
    async close() {
      if (closed) return;
      closed = true;
      o.config.off('change', onConfig);
      ctx.rates.stop();
      await ctx.history.stop();
      await app.close();
      await ctx.audit.close();
    },
  };
}

/** The console at /, with the SPA's index.html for any other non-API GET. */
function registerConsole(app: FastifyInstance, uiDir: string, logger: Logger, authority: TokenAuthority): void {
  const hasUi = existsSync(join(uiDir, 'index.html'));
  if (hasUi) {
    void app.register(fastifyStatic, { root: uiDir, prefix: '/', index: ['index.html'], wildcard: true });
  } else {
    logger.info({ uiDir }, 'admin: no built console here (run `npx vite build` in admin-ui/); serving the API only');
  }
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0]!;
    const isApi = path === '/api' || path.startsWith('/api/') || path === '/metrics' || path === '/health';
    if (hasUi && !isApi && (request.method === 'GET' || request.method === 'HEAD')) {
      return reply.type('text/html; charset=utf-8').sendFile('index.html');
    }
    // An unknown API path says nothing, not even that it is unknown, without a valid token.
    const token = bearerToken(request.headers.authorization);
    if (isApi && path !== '/health' && !(token && authority.identify(token))) {
      return reply.code(401).header('WWW-Authenticate', 'Bearer realm="spoolhouse"').send(errorBody(401, new UnauthorizedError().message));
    }
    return reply.code(404).send(errorBody(404, `No route ${request.method} ${path}`));
  });
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** admin.tls's files, checked as at start (`main.js --check`). */
export function checkAdminFiles(config: Config): { key: string; file: string; problem?: string }[] {
  const tls = config.admin.tls;
  if (!tls) return [];
  try {
    readTlsPair('admin.tls', tls);
    return [{ key: 'admin.tls', file: `${tls.cert}, ${tls.key}` }];
  } catch (err) {
    return [{ ...(err as ConfigError).problems[0]! }];
  }
}
