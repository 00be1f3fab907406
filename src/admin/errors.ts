/**
 * HTTP errors of the admin API, and the one error handler that turns every failure into
 * `{ statusCode, error, message }` (plus `problems` for configuration errors). Queue errors
 * carry their own HTTP status (src/queue/errors.ts); schema validation failures are 400; only
 * unexpected failures are 500, and those are logged with their stack (never the request's token).
 */
import { STATUS_CODES } from 'node:http';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { ConfigError } from '../config/load.js';
import { QueueError } from '../queue/errors.js';

export class HttpError extends Error {
  constructor(readonly statusCode: number, message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad input the schemas could not catch (unknown priority name, malformed date, …). */
export class BadRequestError extends HttpError {
  constructor(message: string) {
    super(400, message);
  }
}

export class UnauthorizedError extends HttpError {
  constructor(message = 'A valid token is required: send "Authorization: Bearer <token>"') {
    super(401, message);
  }
}

export class ForbiddenError extends HttpError {
  constructor(message = 'This token may only read (role viewer); changes need an operator token') {
    super(403, message);
  }
}

export interface ApiErrorBody {
  statusCode: number;
  error: string;
  message: string;
  problems?: { key: string; problem: string }[];
}

export function errorBody(statusCode: number, message: string, extra: Partial<ApiErrorBody> = {}): ApiErrorBody {
  return { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message, ...extra };
}

/** Maps any thrown value to a status and a body safe to show to the client. */
export function toApiError(err: unknown): ApiErrorBody {
  if (err instanceof HttpError) return errorBody(err.statusCode, err.message);
  if (err instanceof QueueError) return errorBody(err.httpStatus, err.message);
  if (err instanceof ConfigError) {
    const problems = err.problems.map((p) => ({ key: p.key, problem: p.problem }));
    const message = problems.length ? problems.map((p) => `${p.key}: ${p.problem}`).join('; ') : err.message;
    return errorBody(400, message, { problems });
  }
  const fe = err as Partial<FastifyError>;
  if (fe.validation) return errorBody(400, fe.message ?? 'Invalid request');
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return errorBody(fe.statusCode, fe.message ?? STATUS_CODES[fe.statusCode] ?? 'Bad request');
  }
  return errorBody(500, 'Internal server error; the server log has the details');
}

export function adminErrorHandler(err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const body = toApiError(err);
  if (body.statusCode >= 500) {
    request.log.error({ err, method: request.method, route: request.routeOptions.url }, 'admin request failed');
  } else {
    request.log.debug({ statusCode: body.statusCode, msg: body.message, route: request.routeOptions.url }, 'admin request refused');
  }
  void reply.code(body.statusCode).type('application/json; charset=utf-8').send(body);
}
