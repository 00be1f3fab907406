/**
 * JSON schemas shared by the routes. One source for input validation, output shaping (fields
 * not listed here never leave the server, e.g. a lease token) and the OpenAPI description.
 */

export const errorSchema = {
  type: 'object',
  description: 'Every error: the HTTP status, its name, and what went wrong',
  properties: {
    statusCode: { type: 'integer' },
    error: { type: 'string' },
    message: { type: 'string' },
    problems: { type: 'array', items: { type: 'object', properties: { key: { type: 'string' }, problem: { type: 'string' } } } },
  },
  required: ['statusCode', 'error', 'message'],
} as const;

/** The error responses every authenticated route may give. */
export const errorResponses = {
  400: { ...errorSchema, description: 'Bad input' },
  401: { ...errorSchema, description: 'Missing or wrong token' },
  403: { ...errorSchema, description: 'A viewer token tried a change' },
  404: { ...errorSchema, description: 'No such mail' },
  409: { ...errorSchema, description: 'The action does not apply in the mail\'s state' },
  503: { ...errorSchema, description: 'The queue is unavailable' },
} as const;

export const mailIdParams = {
  type: 'object',
  properties: { id: { type: 'string', pattern: '^[0-9A-HJKMNP-TVW-Za-hjkmnp-tvw-z]{26}$', description: 'Mail id (ULID)' } },
  required: ['id'],
  additionalProperties: false,
} as const;

const smtpReply = {
  type: 'object',
  properties: { code: { type: 'integer' }, enhanced: { type: 'string' }, message: { type: 'string' } },
} as const;

const recipient = {
  type: 'object',
  properties: {
    address: { type: 'string' },
    status: { type: 'string', enum: ['pending', 'deferred', 'delivered', 'failed', 'expired'] },
    notify: { type: 'array', items: { type: 'string' } },
    orcpt: { type: 'string' },
    lastReply: smtpReply,
    /** In a mail's detail: the kind of trouble lastReply tells of, for a recipient not delivered. */
    replyKind: { type: 'string' },
    remoteHost: { type: 'string' },
    lastAttemptAt: { type: 'number' },
  },
} as const;

const classification = {
  type: 'object',
  properties: { source: { type: 'string' }, rule: { type: 'string' }, detail: { type: 'string' }, at: { type: 'number' } },
} as const;

const mailStates = ['queued', 'active', 'held', 'delivered', 'bounced', 'expired', 'removed'];

const summaryProperties = {
  id: { type: 'string' },
  state: { type: 'string', enum: mailStates },
  sender: { type: 'string', description: '"" is the null sender (a bounce)' },
  recipients: { type: 'array', items: recipient, description: 'At most 20 in a list; recipientCount has them all' },
  recipientCount: { type: 'integer' },
  size: { type: 'integer' },
  receivedAt: { type: 'number' },
  priority: { type: 'integer' },
  priorityName: { type: 'string' },
  notBefore: { type: 'number', description: 'Next attempt not before (epoch ms)' },
  attempts: { type: 'integer' },
  subject: { type: 'string' },
  messageId: { type: 'string' },
  holdReason: { type: 'string' },
  bounceRequest: {
    type: 'object',
    properties: { reason: { type: 'string' }, at: { type: 'number' }, recipients: { type: 'array', items: { type: 'string' } } },
    description: 'An operator asked to bounce it; its next attempt gives it up with a DSN (only `recipients` when given)',
  },
  lastReply: { ...smtpReply, description: 'The most recent reply any recipient got' },
} as const;

export const mailSummarySchema = { type: 'object', properties: summaryProperties } as const;

export const mailDetailSchema = {
  type: 'object',
  properties: {
    ...summaryProperties,
    history: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          at: { type: 'number' },
          host: { type: 'string' },
          recipients: { type: 'array', items: { type: 'string' } },
          outcome: { type: 'string' },
          reply: smtpReply,
          durationMs: { type: 'number' },
        },
      },
    },
    dsn: { type: 'object', properties: { ret: { type: 'string' }, envid: { type: 'string' } } },
    smtputf8: { type: 'boolean' },
    bodyType: { type: 'string' },
    client: {
      type: 'object',
      properties: {
        address: { type: 'string' }, helo: { type: 'string' }, hostname: { type: 'string' },
        authUser: { type: 'string' }, tls: { type: 'boolean' }, listener: { type: 'string' },
      },
    },
    classification: {
      type: 'object',
      description: 'Which rule, SMTP extension or operator set the priority, delay and hold',
      properties: { priority: classification, delay: classification, hold: classification },
    },
    mtPriority: { type: 'integer' },
    lease: { type: 'object', description: 'Who is delivering it now', properties: { owner: { type: 'string' }, until: { type: 'number' } } },
    generation: { type: 'integer' },
    updatedAt: { type: 'number' },
    delayWarnedAt: { type: 'number' },
    parsed: {
      type: 'object',
      description: 'The stored message as parsed by mailparser: always text, never HTML',
      properties: {
        headers: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, value: { type: 'string' } } } },
        subject: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        cc: { type: 'string' },
        date: { type: 'string' },
        text: { type: 'string', description: 'The first 4 KB of the plain text (converted from HTML when there is no text part)' },
        textTruncated: { type: 'boolean' },
        hasHtml: { type: 'boolean' },
        attachments: {
          type: 'array',
          items: { type: 'object', properties: { filename: { type: 'string' }, contentType: { type: 'string' }, size: { type: 'integer' } } },
        },
        error: { type: 'string', description: 'Set when the body could not be read or parsed' },
      },
    },
  },
} as const;
