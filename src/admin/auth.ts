/**
 * Who may use the admin API. One `onRequest` hook (installed on the API's encapsulated context,
 * so the public routes — /health, the console's static files, the API docs — never see it):
 * - `Authorization: Bearer <token>` is compared with every configured token in constant time
 *   (SHA-256 of both sides, then crypto.timingSafeEqual, and every token is always compared, so
 *   neither the token's length nor which token matched shows in the timing);
 * - missing or wrong → 401 and no data; a viewer's change (any method other than GET/HEAD on a
 *   route not marked `readOnly`) → 403;
 * - tokens come from `admin.token` (operator, named "admin") and `admin.tokens` (named, with a
 *   role), re-read when the configuration changes; with neither configured, a random operator
 *   token is generated once and kept in `<dataDir>/admin.token` (mode 0600). Its path is logged;
 *   the token itself never is.
 * The token is accepted only in the header, never in a query string (URLs end up in logs and
 * browser history); the console reads the event stream with fetch, which can send the header.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync, mkdirSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config/schema.js';
import type { Logger } from '../logger.js';
import { ForbiddenError, UnauthorizedError } from './errors.js';

export type Role = 'viewer' | 'operator';

export interface Actor {
  name: string;
  role: Role;
}

declare module 'fastify' {
  interface FastifyRequest {
    actor?: Actor;
  }
  interface FastifyContextConfig {
    /** A non-GET route that changes nothing (e.g. POST /api/rules/test): viewers may call it. */
    readOnly?: boolean;
  }
}

interface KnownToken extends Actor {
  hash: Buffer;
}

export const GENERATED_TOKEN_FILE = 'admin.token';

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** Reads `<dataDir>/admin.token`, or creates it with a new random token. */
export function generatedToken(dataDir: string, logger: Logger): string {
  const file = join(dataDir, GENERATED_TOKEN_FILE);
  try {
    const existing = readFileSync(file, 'utf8').trim();
    if (existing.length >= 16) {
      logger.info({ file }, 'admin: no token configured; using the generated token in this file');
      return existing;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  mkdirSync(dataDir, { recursive: true });
  const token = randomBytes(32).toString('base64url');
  writeFileSync(file, token + '\n', { mode: 0o600 });
  chmodSync(file, 0o600); // the umask or an older file must not widen it
  const fd = openSync(file, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
  logger.warn({ file }, 'admin: no token configured; generated one and wrote it to this file (mode 0600)');
  return token;
}

export class TokenAuthority {
  #known: KnownToken[] = [];
  #forConfig: Config['admin'] | undefined;
  #generated: string | undefined;

  constructor(private readonly o: { config: () => Config; dataDir: string; logger: Logger }) {
    this.#refresh();
  }

  /** Rebuilds the token table when the admin section of the config changed (SIGHUP, PUT). */
  #refresh(): void {
    const admin = this.o.config().admin;
    if (admin === this.#forConfig) return;
    this.#forConfig = admin;
    const known: KnownToken[] = [];
    if (admin.token) known.push({ name: 'admin', role: 'operator', hash: sha256(admin.token) });
    for (const t of admin.tokens) known.push({ name: t.name, role: t.role, hash: sha256(t.token) });
    if (known.length === 0) {
      this.#generated ??= generatedToken(this.o.dataDir, this.o.logger);
      known.push({ name: 'admin', role: 'operator', hash: sha256(this.#generated) });
    }
    this.#known = known;
  }

  /** The actor a presented token belongs to, or undefined. Constant time in the token. */
  identify(presented: string): Actor | undefined {
    this.#refresh();
    const hash = sha256(presented);
    let found: Actor | undefined;
    for (const k of this.#known) {
      // No early exit: every token is compared whatever matched.
      if (timingSafeEqual(hash, k.hash) && !found) found = { name: k.name, role: k.role };
    }
    return found;
  }
}

export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  return m?.[1];
}

const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** The onRequest hook of the API context. */
export function authHook(authority: TokenAuthority) {
  return async function authenticate(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const token = bearerToken(request.headers.authorization);
    const actor = token ? authority.identify(token) : undefined;
    if (!actor) {
      request.log.warn({ ip: request.ip, method: request.method, route: request.routeOptions.url, presented: token ? 'wrong token' : 'no token' }, 'admin: refused a request without a valid token');
      void reply.header('WWW-Authenticate', 'Bearer realm="spoolhouse"');
      throw new UnauthorizedError(token ? 'The token is not valid' : undefined);
    }
    request.actor = actor;
    if (actor.role !== 'operator' && !READ_METHODS.has(request.method) && request.routeOptions.config.readOnly !== true) {
      request.log.warn({ ip: request.ip, actor: actor.name, method: request.method, route: request.routeOptions.url }, 'admin: refused a change by a viewer token');
      throw new ForbiddenError();
    }
  };
}
