/**
 * What every route plugin of the admin API is given (fastify encapsulation: a plugin sees only
 * this), and the audit helper that records an operator action however it ends.
 */
import type { FastifyRequest } from 'fastify';
import type { DestinationConnections, DestinationView, ReplyDigestPage, ReplyDigestRow, SuspendedDestination } from '../api-types.js';
import type { ConfigStore } from '../config/store.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { Queue } from '../queue/types.js';
import type { RefusalLog } from '../ingress/refusals.js';
import type { ReplyKind } from '../scheduler/reply-kind.js';
import type { AuditEntry, AuditLog } from './audit.js';
import { toApiError } from './errors.js';
import type { DepthHistory } from './history.js';
import type { RateWindow } from './rates.js';

export interface AdminContext {
  config: ConfigStore;
  queue: Queue;
  logger: Logger;
  metrics: Metrics;
  audit: AuditLog;
  rates: RateWindow;
  history: DepthHistory;
  /** SSE heartbeat interval. */
  heartbeatMs: number;
  /** Open event streams, ended when the server closes. */
  streams: Set<() => void>;
  /** This node's dead destinations (Scheduler.suspendedDestinations); none without a scheduler. */
  suspendedDestinations: () => SuspendedDestination[];
  /** Where this node would send a domain's mail now (Deliverer.resolve, looked up afresh); none without delivery. */
  whereTo?: (domain: string) => Promise<DestinationView>;
  /** This node's connections to a domain's destination now (Scheduler.destinationConnections); none without a scheduler. */
  connectionsTo?: (domain: string) => DestinationConnections | undefined;
  /** What this node is delivering now (Scheduler.deliveringNow); none without a scheduler. */
  deliveringNow?: () => DestinationConnections[];
  /** This node's name (kafka.nodeId or the host name). */
  nodeName: string;
  /** This node's deferrals and bounces of the last hour by destination and reply (Scheduler.replies); none without a scheduler. */
  replies: (q: { windowMs?: number; outcome?: ReplyDigestRow['outcome']; domain?: string; kind?: ReplyKind; limit?: number }) => ReplyDigestPage;
  /** This node's recent refusals at the door (SmtpIngress.refusals); an empty log without an ingress. */
  refusals: RefusalLog;
  /** Mails per step of a bulk action (tests make it small to exercise the paging). */
  bulkPageSize?: number;
}

type AuditWhat = Omit<AuditEntry, 'at' | 'actor' | 'role' | 'ip' | 'result' | 'status' | 'error'>;

/**
 * Runs an operator action and appends its audit entry (durably) before the caller answers,
 * whether it succeeded or failed. `describe` may add to the entry from the action's result.
 */
export async function audited<T>(
  ctx: AdminContext,
  request: FastifyRequest,
  what: AuditWhat,
  action: () => Promise<T>,
  describe?: (result: T) => Partial<AuditWhat>,
): Promise<T> {
  const base = {
    at: Date.now(),
    actor: request.actor?.name ?? 'unknown',
    role: request.actor?.role ?? 'unknown',
    ip: request.ip,
    ...what,
  };
  let result: T;
  try {
    result = await action();
  } catch (err) {
    const e = toApiError(err);
    await ctx.audit.append({ ...base, result: 'error', status: e.statusCode, error: e.message });
    throw err;
  }
  await ctx.audit.append({ ...base, ...(describe ? describe(result) : {}), result: 'ok' });
  ctx.logger.info({ actor: base.actor, ip: base.ip, action: what.action, ...(what.ids?.length === 1 ? { mailId: what.ids[0] } : {}) }, 'admin: operator action');
  return result;
}
