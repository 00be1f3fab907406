/**
 * Loads the configuration: `config/default.json` (the documented defaults), then one overlay
 * file (`--config FILE` or `SPOOLHOUSE_CONFIG`), JSON or YAML, deep-merged over it (objects
 * merge key by key; arrays and scalars replace), then single keys from the environment
 * (`SPOOLHOUSE_ADMIN__TOKEN=…`, see `envLayers`). The result is validated once against
 * `configSchema`; an error names the file (or the environment variable), the key and the problem.
 *
 * Relative paths in the config (spool.dir, auth.users, smtp.tls) resolve against the current
 * working directory, as `npm start` runs from the project root.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { configSchema, type Config } from './schema.js';

export class ConfigError extends Error {
  constructor(message: string, readonly problems: { file: string; key: string; problem: string }[] = []) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** The project root (where package.json is), from src/ or from dist/src/. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('package.json not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
}

export function defaultConfigFile(): string {
  return join(projectRoot(), 'config', 'default.json');
}

type Plain = Record<string, unknown>;
const isPlain = (v: unknown): v is Plain => typeof v === 'object' && v !== null && !Array.isArray(v);

export function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlain(base) || !isPlain(over)) return over === undefined ? base : over;
  const out: Plain = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = deepMerge(base[k], v);
  return out;
}

/** Reads one JSON or YAML file into a plain object. */
export function readConfigFile(file: string): Plain {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${(err as Error).message}`, [{ file, key: '', problem: 'cannot read' }]);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { prettyErrors: true });
  } catch (err) {
    throw new ConfigError(`${file}: not valid JSON or YAML: ${(err as Error).message}`, [{ file, key: '', problem: 'syntax' }]);
  }
  if (doc === null || doc === undefined) return {};
  if (!isPlain(doc)) throw new ConfigError(`${file}: the top level must be a mapping of keys`, [{ file, key: '', problem: 'not a mapping' }]);
  return doc;
}

function hasPath(obj: unknown, path: PropertyKey[]): boolean {
  let cur: unknown = obj;
  for (const key of path) {
    if (!isPlain(cur) && !Array.isArray(cur)) return false;
    if (!(String(key) in (cur as Plain))) return false;
    cur = (cur as Plain)[String(key)];
  }
  return true;
}

/** Which file a key came from: the overlay when it sets that key (or a parent of it), else the defaults. */
function blame(path: PropertyKey[], layers: { file: string; doc: Plain }[]): string {
  for (let i = layers.length - 1; i >= 0; i--) {
    for (let n = path.length; n > 0; n--) {
      if (hasPath(layers[i]!.doc, path.slice(0, n))) return layers[i]!.file;
    }
  }
  return layers[layers.length - 1]!.file;
}

/** How a problem reads for each kind of value zod names. */
const KINDS: Record<string, string> = {
  string: 'a string', number: 'a number', int: 'a whole number', boolean: 'true or false', object: 'an object',
  array: 'a list', null: 'null', undefined: 'absent', bigint: 'a number', symbol: 'a symbol', function: 'a function',
};

function kind(name: string | undefined): string {
  return name === undefined ? 'something else' : KINDS[name] ?? name;
}

const SAFE_RANGE = 'must be a whole number between -9007199254740991 and 9007199254740991';

/** zod's own wording ("Invalid input: expected string, received number") in the operator's terms. */
function problemOf(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type': {
      const received = /received (\w+)$/.exec(issue.message)?.[1];
      if (received === 'undefined') return `required: must be ${kind(issue.expected)}`;
      // 1.5 where a whole number belongs is a number too: "not a number" would puzzle.
      if (issue.expected === 'int' && received === 'number') return 'must be a whole number';
      return `must be ${kind(issue.expected)}${received ? `, not ${kind(received)}` : ''}`;
    }
    case 'too_small': {
      const min = Number(issue.minimum);
      // zod's bound of every whole number; the key's own bound, when it has one, is named too.
      if (min === Number.MIN_SAFE_INTEGER) return SAFE_RANGE;
      if (issue.origin === 'string') return min <= 1 ? 'must not be empty' : `must be at least ${min} characters`;
      if (issue.origin === 'array' || issue.origin === 'set') return min <= 1 ? 'must list at least one entry' : `must list at least ${min} entries`;
      return `must be ${issue.inclusive ? 'at least' : 'more than'} ${issue.minimum}`;
    }
    case 'too_big': {
      if (Number(issue.maximum) === Number.MAX_SAFE_INTEGER) return SAFE_RANGE;
      if (issue.origin === 'string') return `must be at most ${issue.maximum} characters`;
      if (issue.origin === 'array' || issue.origin === 'set') return `must list at most ${issue.maximum} entries`;
      return `must be ${issue.inclusive ? 'at most' : 'less than'} ${issue.maximum}`;
    }
    case 'invalid_key': {
      // A name (a record's key: a priority class, a domain) that is not one: its own check says why.
      const inner = issue.issues[0];
      return `the name ${inner ? problemOf({ ...inner, path: [] } as z.core.$ZodIssue) : 'is not allowed here'}`;
    }
    case 'invalid_value':
      return issue.values.length === 1 ? `must be ${JSON.stringify(issue.values[0])}` : `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    default:
      return issue.message;
  }
}

/**
 * A value that matches none of a union's shapes: zod says only "Invalid input". When the value
 * has the type of one shape (a string where a string or an object may stand), that shape's own
 * problems are the ones to name; when it has none of their types, the shapes it may take.
 */
function unionIssues(issue: z.core.$ZodIssueInvalidUnion): z.core.$ZodIssue[] | string {
  const typeOnly = (branch: z.core.$ZodIssue[]) => branch.length > 0 && branch.every((i) => i.code === 'invalid_type' && i.path.length === 0);
  const meant = issue.errors.find((branch) => branch.length > 0 && !typeOnly(branch));
  if (meant) return meant.map((i) => ({ ...i, path: [...issue.path, ...i.path] }) as z.core.$ZodIssue);
  const expected = [...new Set(issue.errors.flatMap((b) => b.map((i) => (i.code === 'invalid_type' ? kind(i.expected) : undefined))).filter((k): k is string => !!k))];
  if (!expected.length) return issue.message;
  const first = issue.errors[0]?.[0];
  const received = first ? /received (\w+)$/.exec(first.message)?.[1] : undefined;
  const alternatives = expected.length > 1 ? `${expected.slice(0, -1).join(', ')} or ${expected[expected.length - 1]}` : expected[0]!;
  return received === 'undefined' ? `required: must be ${alternatives}` : `must be ${alternatives}${received ? `, not ${kind(received)}` : ''}`;
}

function describeIssues(issues: z.core.$ZodIssue[], layers: { file: string; doc: Plain }[]): { file: string; key: string; problem: string }[] {
  return issues.flatMap((issue) => {
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((k) => {
        const path = [...issue.path, k];
        return { file: blame(path, layers), key: path.join('.'), problem: 'unknown key' };
      });
    }
    if (issue.code === 'invalid_union') {
      const inner = unionIssues(issue);
      if (typeof inner !== 'string') return describeIssues(inner, layers);
      return [{ file: blame(issue.path, layers), key: issue.path.join('.') || '(top level)', problem: inner }];
    }
    return [{ file: blame(issue.path, layers), key: issue.path.join('.') || '(top level)', problem: problemOf(issue) }];
  });
}

/** Validates an already merged document; `layers` say which file each key came from. */
export function validateConfig(merged: unknown, layers: { file: string; doc: Plain }[]): Config {
  const result = configSchema.safeParse(merged);
  if (!result.success) {
    const all = describeIssues(result.error.issues, layers);
    // A key out of the whole numbers' range and out of its own bounds: its own bounds say more.
    const problems = all.filter((p) => p.problem !== SAFE_RANGE || !all.some((q) => q !== p && q.key === p.key && q.file === p.file));
    throw new ConfigError(
      'Invalid configuration:\n' + problems.map((p) => `  ${p.file}: ${p.key}: ${p.problem}`).join('\n'),
      problems,
    );
  }
  return result.data;
}

export interface LoadedConfig {
  config: Config;
  /** The files read, defaults first. */
  files: string[];
  /** The overlay document as read (what an admin PUT rewrites). */
  overlay: Plain;
}

/** Loads defaults plus an optional overlay file, plus the environment's keys. Throws ConfigError. */
export function loadConfig(overlayFile?: string, defaultsFile = defaultConfigFile(), env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const defaults = { file: defaultsFile, doc: readConfigFile(defaultsFile) };
  const overlay = overlayFile ? { file: resolve(overlayFile), doc: readConfigFile(overlayFile) } : undefined;
  const layers = [defaults, ...(overlay ? [overlay] : []), ...envLayers(env, defaults.doc)];
  const merged = layers.reduce<unknown>((acc, l) => deepMerge(acc, l.doc), {});
  return { config: validateConfig(merged, layers), files: [defaults.file, ...(overlay ? [overlay.file] : [])], overlay: overlay?.doc ?? {} };
}

const ENV_PREFIX = 'SPOOLHOUSE_';

/** `maxMessageSize`, `MAX_MESSAGE_SIZE` and `maxmessagesize` name the same key. */
function keyName(segment: string): string {
  return segment.replace(/_/g, '').toLowerCase();
}

/**
 * Config keys set in the environment, one layer each (so an error names the variable), applied
 * over the files: `SPOOLHOUSE_` and the key's path, its levels joined by `__`, each level in
 * upper snake case or as written: `SPOOLHOUSE_ADMIN__TOKEN`, `SPOOLHOUSE_KAFKA__NODE_ID`,
 * `SPOOLHOUSE_DELIVERY__RETRY__LIFETIME`. Only keys of config/default.json (two levels deep or
 * more) can be set; another `SPOOLHOUSE_X__Y` is an error, so a typo does not pass unnoticed.
 * Names without `__` are not keys (`SPOOLHOUSE_CONFIG`, the CLI's `SPOOLHOUSE_URL` and `_TOKEN`).
 * The value is read by the default's type: a list as comma-separated items (or JSON/YAML
 * `[...]`), a number or a boolean as one, an object as JSON/YAML `{...}`, `null` as null, and
 * anything else as the string it is (an admin token of digits stays a string).
 */
export function envLayers(env: NodeJS.ProcessEnv, defaults: Plain): { file: string; doc: Plain }[] {
  const layers: { file: string; doc: Plain }[] = [];
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith(ENV_PREFIX) || !name.includes('__', ENV_PREFIX.length)) continue;
    const raw = env[name]!;
    const file = `environment variable ${name}`;
    const path: string[] = [];
    let node: unknown = defaults;
    for (const segment of name.slice(ENV_PREFIX.length).split('__')) {
      const key = isPlain(node) ? Object.keys(node).find((k) => keyName(k) === keyName(segment)) : undefined;
      if (key === undefined) {
        const problem = `no configuration key ${[...path, segment.toLowerCase()].join('.')}`;
        throw new ConfigError(`${file}: ${problem}`, [{ file, key: [...path, segment.toLowerCase()].join('.'), problem }]);
      }
      path.push(key);
      node = (node as Plain)[key];
    }
    let value: unknown;
    try {
      value = envValue(raw, node);
    } catch (err) {
      const problem = `not valid JSON or YAML: ${(err as Error).message}`;
      throw new ConfigError(`${file}: ${problem}`, [{ file, key: path.join('.'), problem }]);
    }
    const doc: Plain = {};
    let at = doc;
    path.forEach((k, i) => {
      if (i === path.length - 1) at[k] = value;
      else at = (at[k] = {}) as Plain;
    });
    layers.push({ file, doc });
  }
  return layers;
}

function envValue(raw: string, fallback: unknown): unknown {
  const text = raw.trim();
  if (/^[[{]/.test(text)) return parseYaml(text) as unknown;
  if (text === 'null') return null;
  if (Array.isArray(fallback)) return text ? text.split(',').map((s) => s.trim()).filter(Boolean) : [];
  if (typeof fallback === 'number' && /^-?\d+(\.\d+)?$/.test(text)) return Number(text);
  if (typeof fallback === 'boolean' && (text === 'true' || text === 'false')) return text === 'true';
  return raw;
}

/** `--config FILE` from argv, else SPOOLHOUSE_CONFIG. */
export function overlayFileFromArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): string | undefined {
  const i = argv.findIndex((a) => a === '--config' || a === '-c');
  if (i >= 0) {
    const file = argv[i + 1];
    if (!file) throw new ConfigError('--config needs a file name');
    return file;
  }
  const eq = argv.find((a) => a.startsWith('--config='));
  if (eq) return eq.slice('--config='.length);
  return env.SPOOLHOUSE_CONFIG || undefined;
}
