/**
 * GET/PUT /api/config (the parts an operator steers at run time: priorities, rules,
 * per-destination delivery limits, the paused domains, the routes, relay.reject, and the door's
 * DNS checks: smtp.dnsbl, smtp.helo, smtp.spf, relay.checkSenderDomain) and POST /api/rules/test.
 *
 * PUT validates through ConfigStore (the one config schema), saves the overlay file atomically
 * and applies it at once (stages listen for the store's 'change'). A section given replaces the
 * running one: `rules` is the whole list, `delivery.limits.domains` and `delivery.routes` the whole maps, and
 * `priorities.classes` the classes the overlay adds or changes (the documented default classes
 * stay, as config/default.json always supplies them). Invalid input is a 400 naming each key and
 * its problem, and nothing is saved. On a cluster (Queue.sharedSettings) the sections changed are
 * stored for every node first (503 when they cannot be, and nothing changes anywhere).
 */
import type { FastifyInstance } from 'fastify';
import { classify, type ClassifyInput } from '../../config/rules.js';
import type { Config } from '../../config/schema.js';
import { audited, type AdminContext } from '../context.js';
import { errorResponses } from '../schemas.js';

const anyObject = { type: 'object', additionalProperties: true } as const;

const limitsSchema = {
  type: 'object',
  properties: {
    connections: { type: 'integer' },
    messagesPerConnection: { type: 'integer' },
    rate: { type: ['string', 'null'] },
  },
} as const;

const ruleSchema = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    match: {
      type: 'object',
      properties: {
        sender: { type: 'string' }, senderDomain: { type: 'string' }, recipientDomain: { type: 'string' }, authUser: { type: 'string' },
        header: { type: 'object', properties: { name: { type: 'string' }, value: { type: 'string' } } },
        body: { type: 'string' },
        minSize: { type: ['integer', 'string'] }, maxSize: { type: ['integer', 'string'] },
      },
    },
    priority: { type: 'string' },
    delay: { type: ['number', 'string'], description: 'Milliseconds (as read back), or e.g. "10m" when written' },
    hold: { type: 'boolean' },
    reject: { type: 'string', description: 'Refuse the mail at the end of DATA with this reply, e.g. "550 5.7.1 text"' },
  },
} as const;

const prioritiesSchema = {
  type: 'object',
  properties: {
    classes: { type: 'object', additionalProperties: { type: 'integer' } },
    default: { type: 'string' },
    lowPriorityShare: { type: 'number' },
  },
} as const;

const rejectEntrySchema = {
  type: 'object',
  properties: {
    client: { type: 'array', items: { type: 'string' } },
    sender: { type: 'string' },
    senderDomain: { type: 'string' },
    recipient: { type: 'string' },
    recipientDomain: { type: 'string' },
    reply: { type: 'string' },
  },
} as const;

/** The door's DNS checks, changed at run time (e.g. a blocklist switched on during a spam run). */
const doorSchema = {
  dnsbl: {
    type: 'array',
    items: { type: 'object', properties: { zone: { type: 'string' }, answers: { type: ['array', 'null'], items: { type: 'string' } } } },
    description: 'DNS blocklists (smtp.dnsbl)',
  },
  helo: {
    type: 'object',
    properties: { rejectInvalid: { type: 'boolean' }, rejectNonFqdn: { type: 'boolean' }, rejectUnknown: { type: 'boolean' } },
    description: 'Checks of the HELO name (smtp.helo)',
  },
  spf: {
    type: 'object',
    properties: { check: { type: 'boolean' }, reject: { type: 'array', items: { type: 'string' } } },
    description: 'SPF at MAIL FROM (smtp.spf)',
  },
} as const;

const configView = {
  type: 'object',
  properties: {
    priorities: prioritiesSchema,
    smtp: { type: 'object', properties: doorSchema },
    rules: { type: 'array', items: ruleSchema },
    delivery: {
      type: 'object',
      properties: {
        limits: { type: 'object', properties: { default: limitsSchema, domains: { type: 'object', additionalProperties: limitsSchema } } },
        paused: { type: 'array', items: { type: 'string' }, description: 'Recipient domains whose delivery is paused ("*": all): deferred at once, no connection' },
        routes: { type: 'object', additionalProperties: { type: 'string' }, description: 'Recipient domain → "host[:port]" to deliver to instead of its MX (delivery.routes)' },
      },
    },
    relay: {
      type: 'object',
      properties: {
        reject: { type: 'array', items: rejectEntrySchema, description: 'Clients, senders and recipients refused outright (relay.reject)' },
        checkSenderDomain: { type: 'boolean', description: 'Refuse senders whose domain cannot receive mail (relay.checkSenderDomain)' },
      },
    },
    file: { type: 'string', description: 'The overlay file changes are saved to' },
  },
} as const;

function viewOf(ctx: AdminContext, c: Config) {
  return {
    priorities: c.priorities, rules: c.rules, delivery: { limits: c.delivery.limits, paused: c.delivery.paused, routes: c.delivery.routes },
    smtp: { dnsbl: c.smtp.dnsbl, helo: c.smtp.helo, spf: c.smtp.spf },
    relay: { reject: c.relay.reject, checkSenderDomain: c.relay.checkSenderDomain }, file: ctx.config.overlayFile,
  };
}

interface PutBody {
  priorities?: Record<string, unknown>;
  rules?: unknown[];
  delivery?: { limits?: Record<string, unknown>; paused?: string[]; routes?: Record<string, string> };
  smtp?: { dnsbl?: unknown[]; helo?: Record<string, unknown>; spf?: Record<string, unknown> };
  relay?: { reject?: unknown[]; checkSenderDomain?: boolean };
}

interface RulesTestBody {
  envelope?: { sender?: string; recipients?: string[]; authUser?: string };
  sender?: string;
  recipients?: string[];
  authUser?: string;
  headers?: { name: string; value: string }[] | string;
  body?: string;
  size?: number;
  rules?: unknown[];
  priorities?: Record<string, unknown>;
}

/** "Name: value" lines (with folded continuations) → header list. */
function headerLines(text: string): { name: string; value: string }[] {
  const out: { name: string; value: string }[] = [];
  for (const line of text.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && out.length) out[out.length - 1]!.value += ' ' + line.trim();
    else if (line.includes(':')) out.push({ name: line.slice(0, line.indexOf(':')).trim(), value: line.slice(line.indexOf(':') + 1).trim() });
  }
  return out;
}

/** The run-time sections a PUT body sets, as dotted paths (the keys of the shared settings on a cluster). */
function sharedSections(body: PutBody): string[] {
  const sections: string[] = [];
  if (body.priorities !== undefined) sections.push('priorities');
  if (body.rules !== undefined) sections.push('rules');
  if (body.delivery?.limits !== undefined) sections.push('delivery.limits');
  if (body.delivery?.paused !== undefined) sections.push('delivery.paused');
  if (body.delivery?.routes !== undefined) sections.push('delivery.routes');
  if (body.relay?.reject !== undefined) sections.push('relay.reject');
  if (body.relay?.checkSenderDomain !== undefined) sections.push('relay.checkSenderDomain');
  for (const key of ['dnsbl', 'helo', 'spf'] as const) if (body.smtp?.[key] !== undefined) sections.push(`smtp.${key}`);
  return sections;
}

export async function configRoutes(app: FastifyInstance, ctx: AdminContext): Promise<void> {
  app.get('/config', {
    schema: {
      summary: 'The running priorities, rules, per-destination delivery limits, paused domains, routes, relay.reject and the door\'s DNS checks',
      tags: ['config'],
      response: { 200: configView, ...errorResponses },
    },
  }, async () => viewOf(ctx, ctx.config.current));

  app.put<{ Body: PutBody }>('/config', {
    schema: {
      summary: 'Change priorities, rules, per-destination limits, the paused domains, the routes, relay.reject and/or the door\'s DNS checks; saved and applied without restart',
      tags: ['config'],
      body: {
        type: 'object',
        properties: {
          priorities: anyObject,
          rules: { type: 'array', items: anyObject },
          delivery: {
            type: 'object',
            properties: { limits: anyObject, paused: { type: 'array', items: { type: 'string' } }, routes: { type: 'object', additionalProperties: { type: 'string' } } },
            additionalProperties: false,
          },
          relay: { type: 'object', properties: { reject: { type: 'array', items: anyObject }, checkSenderDomain: { type: 'boolean' } }, additionalProperties: false, minProperties: 1 },
          smtp: {
            type: 'object',
            properties: { dnsbl: { type: 'array', items: { anyOf: [{ type: 'string' }, anyObject] } }, helo: anyObject, spf: anyObject },
            additionalProperties: false,
            minProperties: 1,
          },
        },
        additionalProperties: false,
        minProperties: 1,
      },
      response: { 200: configView, ...errorResponses },
    },
  }, async (request) => {
    const body = request.body;
    const patch: Record<string, unknown> = {};
    if (body.priorities !== undefined) patch.priorities = body.priorities;
    if (body.rules !== undefined) patch.rules = body.rules;
    // The body schema allows only delivery.limits/paused/routes, relay.reject/checkSenderDomain and smtp.dnsbl/helo/spf.
    if (body.delivery !== undefined) patch.delivery = body.delivery;
    if (body.relay !== undefined) patch.relay = body.relay;
    if (body.smtp !== undefined) patch.smtp = body.smtp;
    const replace = [['priorities', 'classes'], ['delivery', 'limits', 'domains'], ['delivery', 'routes']];
    const next = await audited(ctx, request, { action: 'config.update', detail: { keys: Object.keys(patch), patch } }, async () => {
      const shared = ctx.queue.sharedSettings;
      if (!shared) return ctx.config.update(patch, { replace });
      // A cluster: checked here, stored in Kafka for every node (a 503 if it cannot be, and nothing
      // changes), then applied here at once; the other nodes apply it as they read it.
      ctx.config.validate(patch, { replace });
      const sections = ctx.config.sectionsAfter(patch, { replace }, sharedSections(body));
      await shared.publish(sections);
      return ctx.config.replaceSections(sections) ?? ctx.config.current;
    });
    return viewOf(ctx, next);
  });

  app.post<{ Body: RulesTestBody }>('/rules/test', {
    config: { readOnly: true },
    schema: {
      summary: 'Classify a sample envelope and headers against the running (or a proposed) rule set',
      description: 'Give the envelope as `envelope: {sender, recipients, authUser}` (or the same keys at the top level), headers as a list or "Name: value" lines, and optionally `rules`/`priorities` to test a proposed set without saving it.',
      tags: ['config'],
      body: {
        type: 'object',
        properties: {
          envelope: {
            type: 'object',
            properties: { sender: { type: 'string' }, recipients: { type: 'array', items: { type: 'string' } }, authUser: { type: 'string' } },
            additionalProperties: false,
          },
          sender: { type: 'string' },
          recipients: { type: 'array', items: { type: 'string' } },
          authUser: { type: 'string' },
          headers: {
            anyOf: [
              { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, value: { type: 'string' } }, required: ['name', 'value'] } },
              { type: 'string' },
            ],
          },
          size: { type: 'integer', minimum: 0, default: 0 },
          body: { type: 'string', description: 'A sample body, for rules that match on it' },
          rules: { type: 'array', items: anyObject },
          priorities: anyObject,
        },
        additionalProperties: false,
      },
      response: {
        200: {
          type: 'object',
          properties: {
            matched: { type: 'boolean' },
            rule: { type: ['string', 'null'] },
            ruleIndex: { type: ['integer', 'null'] },
            priority: { type: 'integer' },
            priorityName: { type: 'string' },
            delayMs: { type: 'number' },
            notBefore: { type: 'number' },
            hold: { type: 'boolean' },
            reject: { type: ['string', 'null'], description: 'The reply a rejecting rule refuses the mail with' },
            classification: anyObject,
            proposed: { type: 'boolean' },
          },
        },
        ...errorResponses,
      },
    },
  }, async (request) => {
    const b = request.body;
    const input: ClassifyInput = {
      sender: b.envelope?.sender ?? b.sender ?? '',
      recipients: b.envelope?.recipients ?? b.recipients ?? [],
      headers: typeof b.headers === 'string' ? headerLines(b.headers) : b.headers ?? [],
      size: b.size ?? 0,
      ...(b.body !== undefined ? { body: b.body } : {}),
    };
    const authUser = b.envelope?.authUser ?? b.authUser;
    if (authUser) input.authUser = authUser;
    const proposed = b.rules !== undefined || b.priorities !== undefined;
    // A proposed set is validated exactly as a PUT would be (and nothing is saved).
    const config = proposed
      ? ctx.config.validate({ ...(b.rules !== undefined ? { rules: b.rules } : {}), ...(b.priorities !== undefined ? { priorities: b.priorities } : {}) }, { replace: [['priorities', 'classes']] })
      : ctx.config.current;
    const r = classify(input, config);
    const ruleIndex = r.rule !== undefined ? config.rules.findIndex((x) => x.name === r.rule) : -1;
    return {
      matched: r.rule !== undefined,
      rule: r.rule ?? null,
      ruleIndex: ruleIndex >= 0 ? ruleIndex : null,
      priority: r.priority,
      priorityName: r.priorityName,
      delayMs: r.delayMs,
      notBefore: r.notBefore,
      hold: r.hold,
      reject: r.reject ? `${r.reject.code} ${r.reject.enhanced} ${r.reject.text}` : null,
      classification: r.classification,
      proposed,
    };
  });
}
