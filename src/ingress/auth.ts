/**
 * SMTP AUTH users: a file of "user:bcrypt-hash" lines (auth.users), read at start and again on
 * every configuration change (SIGHUP or an API update). Hashes $2a$, $2b$ and $2y$ are accepted
 * ($2y$ is PHP's name for $2b$). Blank lines and lines starting with "#" are ignored.
 * Passwords are never logged; an unknown user costs a bcrypt comparison too, so timing does not
 * tell which user names exist.
 */
import { readFileSync } from 'node:fs';
import bcrypt from 'bcryptjs';

// A hash of a random password at the usual cost, compared against when the user is unknown.
let dummyHash: string | undefined;
function dummy(): string {
  dummyHash ??= bcrypt.hashSync(Math.random().toString(36), 10);
  return dummyHash;
}

export class UsersFile {
  readonly users: ReadonlyMap<string, string>;

  constructor(users: Map<string, string>) {
    this.users = users;
  }

  static empty(): UsersFile {
    return new UsersFile(new Map());
  }

  /** Reads and parses the file. Throws with the line number on a malformed line. */
  static load(file: string): UsersFile {
    return UsersFile.parse(readFileSync(file, 'utf8'), file);
  }

  static parse(text: string, file = 'users'): UsersFile {
    const users = new Map<string, string>();
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const colon = line.indexOf(':');
      const user = colon > 0 ? line.slice(0, colon) : '';
      const hash = colon > 0 ? line.slice(colon + 1).trim() : '';
      if (!user || !/^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/.test(hash)) {
        throw new Error(`${file}:${i + 1}: expected "user:bcrypt-hash"`);
      }
      users.set(user, hash.replace(/^\$2y\$/, '$2b$'));
    });
    return new UsersFile(users);
  }

  get size(): number {
    return this.users.size;
  }

  async verify(user: string, password: string): Promise<boolean> {
    const hash = this.users.get(user);
    const ok = await bcrypt.compare(password, hash ?? dummy());
    return ok && hash !== undefined;
  }
}
