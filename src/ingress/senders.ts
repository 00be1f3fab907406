/**
 * Who may use which sender address once authenticated (auth.senders, Postfix's
 * smtpd_sender_login_maps with reject_authenticated_sender_login_mismatch): on a submission
 * service, a user's stolen password must not let its thief send as every other user or domain.
 *
 * The file: one entry per line, a sender address or `@domain`, then the users who own it
 * (separated by commas or blanks): `alice@example.org alice`, `@example.org alice, bob`.
 * `#` comments and blank lines are ignored. Lookups ignore case; the full address is looked up
 * first, then its `@domain` (as Postfix does), and the first entry found decides. An
 * authenticated user may use only the addresses it owns there (and the null sender, which
 * nobody owns); a client that did not authenticate is not concerned (relay control applies).
 * Read like relay.recipients: at start (a broken file stops the start) and at every
 * configuration change (a broken file keeps the previous table).
 */
import { readFileSync } from 'node:fs';
import { recipientDomain } from './policy.js';

export class SenderOwners {
  private constructor(private readonly owners: ReadonlyMap<string, ReadonlySet<string>>, readonly file: string) {}

  static load(file: string): SenderOwners {
    return SenderOwners.parse(readFileSync(file, 'utf8'), file);
  }

  static parse(text: string, file = 'senders'): SenderOwners {
    const owners = new Map<string, Set<string>>();
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const [entry, ...rest] = line.split(/\s+/);
      const users = rest.join(' ').split(/[\s,]+/).filter(Boolean);
      const at = entry!.lastIndexOf('@');
      if (at < 0 || at === entry!.length - 1 || !users.length) throw new Error(`${file}:${i + 1}: expected "user@domain user[,user...]" or "@domain user[,user...]"`);
      const key = lookupKey(entry!.slice(0, at), recipientDomain(entry!));
      const set = owners.get(key) ?? new Set<string>();
      for (const u of users) set.add(u);
      owners.set(key, set);
    });
    return new SenderOwners(owners, file);
  }

  get size(): number {
    return this.owners.size;
  }

  /** May `user` (as authenticated) send from `sender`? The null sender always. */
  mayUse(user: string, sender: string): boolean {
    if (sender === '') return true;
    const at = sender.lastIndexOf('@');
    const domain = recipientDomain(sender);
    const found = (at > 0 ? this.owners.get(lookupKey(sender.slice(0, at), domain)) : undefined) ?? this.owners.get(lookupKey('', domain));
    return !!found && found.has(user);
  }
}

function lookupKey(local: string, domain: string): string {
  return `${local.toLowerCase()}@${domain}`;
}
