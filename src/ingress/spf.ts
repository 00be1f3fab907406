/**
 * smtp.spf: the Sender Policy Framework (RFC 7208) at the door, as Postfix with
 * policyd-spf: the MAIL FROM identity (the HELO identity for the null sender) of a client outside
 * relay.networks that did not authenticate is evaluated at MAIL FROM by mailauth's SPF evaluator
 * (the maintained library of nodemailer's author; loaded only when the check is on), asking
 * delivery.dns's servers.
 *
 * What it guarantees:
 * - Every mail checked gets a `Received-SPF:` header (RFC 7208 §9.1), placed above our Received:.
 * - A result named in smtp.spf.reject is refused at MAIL FROM with RFC 7372's codes: fail and
 *   softfail 550 5.7.23, permerror 550 5.7.24, temperror 451 4.7.24 (temporary). Other results
 *   (and those not listed) are accepted and only recorded in the header.
 * - The evaluation is bounded: mailauth's limits of 10 lookups and 2 void lookups, and EVAL_MS in
 *   all (then temperror).
 * - A result is kept CACHE_MS per client address, sender and HELO name, so a burst of mail from one
 *   sender asks DNS once.
 */
import type { promises as dns } from 'node:dns';
import type { Reply } from './protocol.js';
import { TtlCache } from './ttl-cache.js';

export type SpfResult = 'pass' | 'fail' | 'softfail' | 'neutral' | 'none' | 'temperror' | 'permerror';

export interface SpfVerdict {
  result: SpfResult;
  /** The Received-SPF header, folded, CRLF-terminated. */
  header: string;
  /** Set when the result is one the config refuses. */
  refusal?: Reply;
}

const CACHE_MS = 60_000;
const MAX_CACHE = 20_000;
const EVAL_MS = 10_000;

type SpfFn = (opts: { sender: string; ip: string; helo: string; mta: string; resolver: (name: string, type: string) => Promise<unknown>; maxElapsedTime: number }) =>
  Promise<{ status: { result: string; comment?: string | false }; header?: string }>;

let evaluator: Promise<SpfFn> | undefined;

function loadEvaluator(): Promise<SpfFn> {
  evaluator ??= import('mailauth/lib/spf/index.js').then((m) => (m as unknown as { spf: SpfFn }).spf);
  return evaluator;
}

/** Characters outside visible ASCII become "?", and the text is cut: it goes into an SMTP reply. */
function replySafe(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?').slice(0, 200);
}

export class SpfCheck {
  readonly #cache: TtlCache<Promise<{ result: SpfResult; header: string; comment: string }>>;

  constructor(private readonly resolver: () => dns.Resolver, now: () => number = Date.now) {
    this.#cache = new TtlCache(CACHE_MS, MAX_CACHE, now);
  }

  /** Evaluates SPF for one MAIL FROM; `reject` lists the results to refuse. */
  async check(o: { ip: string; sender: string; helo: string; hostname: string; reject: readonly string[] }): Promise<SpfVerdict> {
    const key = `${o.ip}|${o.sender.toLowerCase()}|${o.helo}`;
    let evaluated = this.#cache.get(key);
    if (!evaluated) {
      evaluated = this.#evaluate(o);
      this.#cache.set(key, evaluated);
    }
    const { result, header, comment } = await evaluated;
    if (!o.reject.includes(result)) return { result, header };
    const who = o.sender ? `<${o.sender}>: Sender address rejected` : `<${o.helo}>: Helo command rejected`;
    const refusal: Reply = result === 'temperror'
      ? { code: 451, enhanced: '4.7.24', text: `${who}: SPF temporary error, try again later${comment ? ` (${comment})` : ''}` }
      : result === 'permerror'
        ? { code: 550, enhanced: '5.7.24', text: `${who}: SPF permanent error${comment ? ` (${comment})` : ''}` }
        : { code: 550, enhanced: '5.7.23', text: `${who}: SPF ${result}${comment ? ` (${comment})` : ''}` };
    return { result, header, refusal };
  }

  async #evaluate(o: { ip: string; sender: string; helo: string; hostname: string }): Promise<{ result: SpfResult; header: string; comment: string }> {
    const spf = await loadEvaluator();
    const resolver = this.resolver();
    const r = await spf({
      sender: o.sender, ip: o.ip, helo: o.helo, mta: o.hostname, maxElapsedTime: EVAL_MS,
      resolver: (name, type) => resolver.resolve(name, type),
    });
    const result = r.status.result as SpfResult;
    const header = r.header ? `${r.header.replace(/\r?\n/g, '\r\n').replace(/(\r\n)?$/, '')}\r\n` : `Received-SPF: ${result}\r\n`;
    return { result, header, comment: r.status.comment ? replySafe(r.status.comment) : '' };
  }
}
