/**
 * MTA-STS (RFC 8461): a recipient domain that publishes a policy says its mail must go over TLS
 * with a valid certificate, to MX hosts its policy names. Used for MX delivery only (a route or
 * the smarthost is the operator's choice), and only where `delivery.tls.policy` says nothing for
 * the domain (the operator's word wins).
 *
 * - The TXT record `_mta-sts.DOMAIN` ("v=STSv1; id=…") says a policy exists and which version;
 *   the policy itself is fetched from https://mta-sts.DOMAIN/.well-known/mta-sts.txt (certificate
 *   verified, no redirects, 64 KB at most, 10 s), and cached for its max_age (at most a day here
 *   before the TXT id is checked again; a new id fetches it again).
 * - When the TXT lookup or the fetch fails, a cached policy that has not expired still applies
 *   (§5.1: an attacker who blocks either must not turn enforcement off); without one, none does.
 * - `enforce`: only MX hosts matching the policy's `mx` patterns are used, with STARTTLS required
 *   and the certificate verified for the MX host name; none matching is a temporary failure.
 *   `testing`: mail goes as without a policy, and what enforce would have refused is logged.
 *   `none`: nothing.
 * Policies are cached per node, in memory and in `file` (written atomically after each fetch, read
 * at start), so a restart does not forget a policy an attacker could then keep from being fetched.
 */
import { promises as dns } from 'node:dns';
import { readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import https from 'node:https';
import { checkServerIdentity } from 'node:tls';

export interface StsPolicy {
  mode: 'enforce' | 'testing' | 'none';
  mx: string[];
  maxAgeSeconds: number;
}

/** The longest max_age RFC 8461 allows (a year). */
const MAX_AGE_LIMIT = 31_557_600;
/** The policy body is small: a bigger one is refused. */
const MAX_POLICY_BYTES = 64 * 1024;
const FETCH_TIMEOUT_MS = 10_000;
/** How long a TXT answer is trusted before it is asked again (a new id fetches the policy again). */
const TXT_RECHECK_MS = 3_600_000;

/** RFC 8461 §3.2. Throws with the problem for a policy that is not valid. */
export function parseStsPolicy(text: string): StsPolicy {
  const fields = new Map<string, string[]>();
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line) continue;
    const i = line.indexOf(':');
    if (i <= 0) throw new Error(`not a "key: value" line: ${JSON.stringify(line.slice(0, 80))}`);
    const key = line.slice(0, i).trim();
    fields.set(key, [...(fields.get(key) ?? []), line.slice(i + 1).trim()]);
  }
  if (fields.get('version')?.[0] !== 'STSv1') throw new Error('version is not STSv1');
  const mode = fields.get('mode')?.[0];
  if (mode !== 'enforce' && mode !== 'testing' && mode !== 'none') throw new Error(`mode "${mode ?? ''}" is not enforce, testing or none`);
  const maxAge = fields.get('max_age')?.[0] ?? '';
  if (!/^\d{1,10}$/.test(maxAge)) throw new Error(`max_age "${maxAge}" is not a number of seconds`);
  const mx = (fields.get('mx') ?? []).map((m) => m.toLowerCase().replace(/\.$/, ''));
  if (mode !== 'none' && mx.length === 0) throw new Error('no mx pattern');
  return { mode, mx, maxAgeSeconds: Math.min(Number(maxAge), MAX_AGE_LIMIT) };
}

/** An MX host name against a policy's patterns: exact, or "*.example.com" for one label more. */
export function mxMatches(host: string, patterns: string[]): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return patterns.some((p) => {
    if (!p.startsWith('*.')) return h === p;
    const rest = p.slice(1); // ".example.com"
    return h.endsWith(rest) && !h.slice(0, -rest.length).includes('.') && h.length > rest.length;
  });
}

interface CacheEntry {
  id: string;
  policy: StsPolicy;
  /** The policy's max_age runs out. */
  expiresAt: number;
  /** The TXT record is asked again after this. */
  recheckAt: number;
}

export interface MtaStsOptions {
  /** The resolver of delivery.dns (TXT lookups, and the policy host's address). */
  resolver: () => dns.Resolver;
  /** Extra trusted CAs (delivery.tls.caFile), with the system's. */
  ca: () => string[] | undefined;
  log: { info(o: object, msg: string): void; warn(o: object, msg: string): void };
  now?: () => number;
  /** The HTTPS port of policy hosts: 443 (RFC 8461); tests serve elsewhere. */
  port?: number;
  /** Where the cache is kept across restarts (JSON); none: memory only. */
  file?: string;
}

export class MtaSts {
  readonly #o: MtaStsOptions;
  readonly #cache = new Map<string, CacheEntry>();
  /** One lookup at a time per domain. */
  readonly #pending = new Map<string, Promise<StsPolicy | undefined>>();

  /** A write of the cache file in progress, and whether another is wanted after it. */
  #saving: Promise<void> | undefined;
  #saveAgain = false;

  constructor(o: MtaStsOptions) {
    this.#o = o;
    if (o.file) this.#load(o.file);
  }

  /** The cache as the last run left it: unexpired policies only; a broken file is logged and ignored. */
  #load(file: string): void {
    let saved: Record<string, CacheEntry>;
    try {
      saved = JSON.parse(readFileSync(file, 'utf8')) as Record<string, CacheEntry>;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.#o.log.warn({ file, err: (err as Error).message }, 'MTA-STS cache file not read; starting empty');
      return;
    }
    const now = (this.#o.now ?? Date.now)();
    for (const [domain, e] of Object.entries(saved)) {
      try {
        if (typeof e?.id !== 'string' || !(e.expiresAt > now)) continue;
        const policy = parseStsPolicy(`version: STSv1\nmode: ${e.policy.mode}\n${e.policy.mx.map((m) => `mx: ${m}\n`).join('')}max_age: ${e.policy.maxAgeSeconds}\n`);
        // Asked again soon after a start: the TXT id may have changed meanwhile.
        this.#cache.set(domain, { id: e.id, policy, expiresAt: e.expiresAt, recheckAt: now });
      } catch {
        // An entry that is not a policy is dropped.
      }
    }
  }

  #save(): void {
    const file = this.#o.file;
    if (!file) return;
    if (this.#saving) {
      this.#saveAgain = true;
      return;
    }
    const tmp = `${file}.tmp`;
    this.#saving = writeFile(tmp, JSON.stringify(Object.fromEntries(this.#cache)))
      .then(() => rename(tmp, file))
      .catch((err: unknown) => this.#o.log.warn({ file, err: (err as Error).message }, 'MTA-STS cache file not written'))
      .finally(() => {
        this.#saving = undefined;
        if (this.#saveAgain) {
          this.#saveAgain = false;
          this.#save();
        }
      });
  }

  /** Resolves once the cache file holds what is cached now (for shutdown and tests). */
  async flushed(): Promise<void> {
    while (this.#saving) await this.#saving;
  }

  /** The domain's policy now, or undefined (none published, or none could be had and none is cached). */
  policyFor(domain: string): Promise<StsPolicy | undefined> {
    const now = (this.#o.now ?? Date.now)();
    const cached = this.#cache.get(domain);
    if (cached && cached.recheckAt > now && cached.expiresAt > now) return Promise.resolve(cached.policy);
    let p = this.#pending.get(domain);
    if (!p) {
      p = this.#refresh(domain, cached, now).finally(() => this.#pending.delete(domain));
      this.#pending.set(domain, p);
    }
    return p;
  }

  async #refresh(domain: string, cached: CacheEntry | undefined, now: number): Promise<StsPolicy | undefined> {
    const stillValid = cached && cached.expiresAt > now ? cached.policy : undefined;
    let id: string | undefined;
    try {
      id = await this.#txtId(domain);
    } catch (err) {
      if (stillValid) this.#o.log.warn({ domain, err: (err as Error).message }, 'MTA-STS TXT lookup failed; the cached policy still applies');
      return stillValid;
    }
    if (id === undefined) {
      // No record: a policy cached before still holds until it expires (§5.1), as a withdrawn one does.
      return stillValid;
    }
    if (cached && cached.id === id && cached.expiresAt > now) {
      cached.recheckAt = now + TXT_RECHECK_MS;
      return cached.policy;
    }
    try {
      const policy = parseStsPolicy(await this.#fetch(domain));
      this.#cache.set(domain, { id, policy, expiresAt: now + policy.maxAgeSeconds * 1000, recheckAt: now + Math.min(TXT_RECHECK_MS, policy.maxAgeSeconds * 1000) });
      this.#save();
      this.#o.log.info({ domain, mode: policy.mode, mx: policy.mx, maxAge: policy.maxAgeSeconds, id }, 'MTA-STS policy fetched');
      return policy;
    } catch (err) {
      this.#o.log.warn({ domain, err: (err as Error).message, cached: !!stillValid }, 'MTA-STS policy could not be fetched');
      return stillValid;
    }
  }

  /** The id of the domain's "v=STSv1" TXT record; undefined when there is none (or several). */
  async #txtId(domain: string): Promise<string | undefined> {
    let records: string[][];
    try {
      records = await this.#o.resolver().resolveTxt(`_mta-sts.${domain}`);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === dns.NOTFOUND || code === dns.NODATA) return undefined;
      throw err;
    }
    const sts = records.map((chunks) => chunks.join('')).filter((r) => /^v=STSv1\s*(;|$)/.test(r));
    if (sts.length !== 1) return undefined;
    const id = /(?:^|;)\s*id=([A-Za-z0-9]{1,32})\s*(?:;|$)/.exec(sts[0]!)?.[1];
    return id;
  }

  /** GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt, the host looked up through delivery.dns. */
  async #fetch(domain: string): Promise<string> {
    const host = `mta-sts.${domain}`;
    const resolver = this.#o.resolver();
    const [address] = await resolver.resolve4(host).catch(async () => resolver.resolve6(host));
    if (!address) throw new Error(`${host} has no address`);
    const extra = this.#o.ca();
    return new Promise<string>((resolve, reject) => {
      const req = https.get({
        host: address,
        servername: host,
        port: this.#o.port ?? 443,
        path: '/.well-known/mta-sts.txt',
        headers: { host },
        agent: false,
        timeout: FETCH_TIMEOUT_MS,
        ...(extra ? { ca: extra } : {}),
        // The certificate must be valid for the policy host's name, not for the address connected to.
        checkServerIdentity: (_name, cert) => checkServerIdentity(host, cert),
      }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`HTTP ${res.statusCode} from ${host}`));
          return;
        }
        const type = String(res.headers['content-type'] ?? '');
        if (!/^text\/plain\b/i.test(type)) {
          res.resume();
          reject(new Error(`content type "${type}" from ${host} is not text/plain`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_POLICY_BYTES) {
            req.destroy(new Error(`policy from ${host} is over ${MAX_POLICY_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`no policy from ${host} within ${FETCH_TIMEOUT_MS / 1000} s`)));
      req.on('error', reject);
    });
  }
}
