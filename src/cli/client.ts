/**
 * The CLI's side of the admin API: one fetch per call with the Bearer token, JSON in and out,
 * and every failure turned into a CliError carrying the exit code scripts rely on.
 */

/** Exit codes (documented in `spoolhouse --help`). */
export const EXIT = { ok: 0, error: 1, usage: 2, notFound: 3, auth: 4 } as const;

export class CliError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
    this.name = 'CliError';
  }
}

export function exitCodeForStatus(status: number): number {
  if (status === 401 || status === 403) return EXIT.auth;
  if (status === 404) return EXIT.notFound;
  if (status === 400 || status === 422) return EXIT.usage;
  return EXIT.error;
}

export class ApiClient {
  constructor(readonly baseUrl: string, private readonly token: string, private readonly timeoutMs = 120_000) {}

  async request(method: string, path: string, body?: unknown): Promise<Response> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}`, Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(new URL(path, this.baseUrl), {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      throw new CliError(`cannot reach the admin API at ${this.baseUrl} (${cause}); is the server running? (--url / SPOOLHOUSE_URL)`, EXIT.error);
    }
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`;
      try {
        const e = (await res.json()) as { message?: string };
        if (e.message) message = e.message;
      } catch {
        /* not JSON: keep the status line */
      }
      if (res.status === 401) message += ' (check --token / SPOOLHOUSE_TOKEN)';
      throw new CliError(message, exitCodeForStatus(res.status));
    }
    return res;
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body);
    return (await res.json()) as T;
  }
}
