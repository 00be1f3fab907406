/**
 * The admin REST API as the console sees it: every call carries the operator's Bearer token
 * (kept in sessionStorage, so it dies with the tab), errors become `ApiError` with the server's
 * `{ statusCode, error, message }`, and a 401 anywhere signs the operator out with a message.
 */

import type { MailState } from '../../src/api-types';

const TOKEN_KEY = 'spoolhouse.token';

export interface Problem { key: string; problem: string }

export class ApiError extends Error {
  constructor(readonly status: number, readonly error: string, message: string, readonly problems: Problem[] = []) {
    super(message);
    this.name = 'ApiError';
  }
}

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

type UnauthorizedHandler = (message: string) => void;
let onUnauthorized: UnauthorizedHandler = () => {};
export function setUnauthorizedHandler(handler: UnauthorizedHandler): void {
  onUnauthorized = handler;
}

export function apiUrl(path: string): string {
  // Relative to the page, so the console works wherever the admin server mounts it.
  return new URL(path.replace(/^\//, ''), document.baseURI).toString();
}

async function errorFrom(res: Response): Promise<ApiError> {
  let body: { statusCode?: number; error?: string; message?: string; problems?: Problem[] } = {};
  try {
    body = await res.json();
  } catch {
    /* not JSON: fall back to the status line */
  }
  return new ApiError(res.status, body.error ?? res.statusText, body.message ?? `${res.status} ${res.statusText}`, Array.isArray(body.problems) ? body.problems : []);
}

export interface RequestOptions {
  body?: unknown;
  token?: string;
  /** Do not sign out on 401 (the login screen checks a candidate token). */
  quiet401?: boolean;
  signal?: AbortSignal;
}

export async function request(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
  const token = opts.token ?? getToken();
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(apiUrl(path), {
      method,
      headers,
      ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      cache: 'no-store',
    });
  } catch (err) {
    if ((err as Error).name === 'AbortError') throw err;
    throw new ApiError(0, 'Network error', 'The admin server did not answer. Check that Spoolhouse is running and reachable, then try again.');
  }
  if (res.ok) return res;
  const error = await errorFrom(res);
  if (res.status === 401 && !opts.quiet401) {
    clearToken();
    onUnauthorized('The server refused your token (it may have been changed). Sign in again.');
  }
  throw error;
}

export async function api<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
  const res = await request(method, path, opts);
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/** Builds "?a=1&b=2" from the defined, non-empty values. */
export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

// ---- the shapes the console reads: the API's own types, shared with the server and the CLI ----
// (type-only, so nothing of src/ ends up in the bundle)

export type {
  AttemptRecord, BrowsePage, BulkAction, BulkResult, Classification, DepthHistoryPage, MailDetail, MailState, MailSummary, Recipient, Refusal, RefusalPage, DestinationView, ReplyDigestPage, ReplyDigestRow, SmtpReply, Stats,
} from '../../src/api-types';

export const MAIL_STATES: MailState[] = ['queued', 'active', 'held', 'delivered', 'bounced', 'expired', 'removed'];
export const LIVE_STATES: MailState[] = ['queued', 'active', 'held'];

export interface Limits { connections?: number; initialConnections?: number; messagesPerConnection?: number; rate?: string | null }
export interface Rule {
  name: string;
  match: { sender?: string; senderDomain?: string; recipientDomain?: string; authUser?: string; header?: { name: string; value: string }; body?: string; minSize?: number | string; maxSize?: number | string };
  priority?: string;
  delay?: number | string;
  hold?: boolean;
  /** Refuse the mail with this reply ("550 5.7.1 text") instead of queuing it. */
  reject?: string;
}
/** relay.reject: what is refused at the door; every key given must fit. */
export interface RejectEntry { client?: string[]; sender?: string; senderDomain?: string; recipient?: string; recipientDomain?: string; reply?: string }
export interface Priorities { classes: Record<string, number>; default: string; lowPriorityShare: number }
/** smtp.dnsbl: a zone, with the answers that list a client (null: any). */
export interface DnsblZone { zone: string; answers: string[] | null }
/** The door's DNS checks (smtp.helo, smtp.spf). */
export interface HeloChecks { rejectInvalid: boolean; rejectNonFqdn: boolean; rejectUnknown: boolean }
export interface SpfCheck { check: boolean; reject: string[] }
export interface ConsoleConfig {
  priorities: Priorities;
  rules: Rule[];
  delivery: { limits: { default: Limits; domains: Record<string, Limits> }; paused: string[]; routes: Record<string, string> };
  relay: { reject: RejectEntry[]; checkSenderDomain: boolean };
  smtp: { dnsbl: DnsblZone[]; helo: HeloChecks; spf: SpfCheck };
  /** The overlay file changes are saved to. */
  file?: string;
}
