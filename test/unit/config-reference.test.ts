/**
 * The configuration is a public contract: config/default.json holds every key with its default and
 * the README's "Configuration reference" documents every key. These checks walk the schema itself,
 * so a key added to src/config/schema.ts without its default or its documentation fails here.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { configSchema } from '../../src/config/schema.js';

/** The parts of a zod 4 schema's definition this walk reads. */
interface Def {
  type: string;
  shape?: Record<string, { _zod: { def: Def } }>;
  innerType?: { _zod: { def: Def } };
  in?: { _zod: { def: Def } };
  out?: { _zod: { def: Def } };
  options?: { _zod: { def: Def } }[];
  element?: { _zod: { def: Def } };
}

const WRAPPERS = new Set(['optional', 'nullable', 'default', 'readonly', 'prefault', 'nonoptional']);

/**
 * Every key path of the schema: through objects, wrappers, unions (an object form of a value, such
 * as `delivery.smarthost`) and arrays of objects (`rules.match.sender`), not into records (their
 * keys are the operator's: domain names).
 */
function keyPaths(def: Def, path: string, out: Set<string>): Set<string> {
  if (WRAPPERS.has(def.type)) return keyPaths(def.innerType!._zod.def, path, out);
  if (def.type === 'pipe') return keyPaths(def.in!._zod.def, path, out);
  if (def.type === 'union') for (const o of def.options!) keyPaths(o._zod.def, path, out);
  if (def.type === 'array') keyPaths(def.element!._zod.def, path, out);
  if (def.type === 'object') {
    for (const [k, v] of Object.entries(def.shape!)) {
      const p = path ? `${path}.${k}` : k;
      out.add(p);
      keyPaths(v._zod.def, p, out);
    }
  }
  return out;
}

/** Key paths reachable through objects alone: the ones config/default.json must hold. */
function plainKeyPaths(def: Def, path: string, out: string[]): string[] {
  if (WRAPPERS.has(def.type)) return plainKeyPaths(def.innerType!._zod.def, path, out);
  if (def.type === 'pipe') return plainKeyPaths(def.in!._zod.def, path, out);
  if (def.type !== 'object') return out;
  for (const [k, v] of Object.entries(def.shape!)) {
    const p = path ? `${path}.${k}` : k;
    out.push(p);
    plainKeyPaths(v._zod.def, p, out);
  }
  return out;
}

const root = (configSchema as unknown as { _zod: { def: Def } })._zod.def;
const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const reference = readme.slice(readme.indexOf('## Configuration reference'), readme.indexOf('\n## ', readme.indexOf('## Configuration reference') + 1));

/**
 * Where a key is documented: its own row (`| \`smtp.maxRecipients\` |`) or its full path in
 * backquotes; or, for a key inside a value (`smtp.helo.rejectUnknown`, `rules.match.sender`), its
 * name in backquotes or quotes in the row of one of its parents or in the text that follows that
 * row down to the next heading (the rules are described in a paragraph below their table).
 */
function documented(path: string): boolean {
  if (reference.includes(`\`${path}\``)) return true;
  const parts = path.split('.');
  const leaf = parts.at(-1)!;
  const names = [`\`${leaf}\``, `"${leaf}"`];
  for (let i = parts.length - 1; i > 0; i--) {
    const at = reference.indexOf(`| \`${parts.slice(0, i).join('.')}\` |`);
    if (at < 0) continue;
    const next = reference.indexOf('\n###', at);
    const text = reference.slice(at, next < 0 ? undefined : next);
    const row = text.slice(0, text.indexOf('\n') < 0 ? undefined : text.indexOf('\n'));
    const after = text.slice(row.length).replace(/^\|.*$/gm, '');
    if (names.some((n) => row.includes(n) || after.includes(n))) return true;
  }
  return false;
}

describe('the configuration reference', () => {
  const all = [...keyPaths(root, '', new Set())];

  it('walks the whole schema (a walk that found nothing would pass everything)', () => {
    expect(all.length).toBeGreaterThan(150);
    expect(all).toEqual(expect.arrayContaining(['smtp.maxRecipients', 'smtp.helo.rejectUnknown', 'rules.match.header.value', 'delivery.smarthost.auth.user', 'kafka.sasl.mechanism']));
  });

  it('config/default.json holds every key that is not inside a list or an alternative form', () => {
    const defaults = JSON.parse(readFileSync(new URL('../../config/default.json', import.meta.url), 'utf8')) as Record<string, unknown>;
    const missing = plainKeyPaths(root, '', []).filter((p) => {
      let v: unknown = defaults;
      for (const k of p.split('.')) {
        if (v === null || typeof v !== 'object' || !(k in v)) return true;
        v = (v as Record<string, unknown>)[k];
      }
      return false;
    });
    expect(missing).toEqual([]);
  });

  it('the README documents every key', () => {
    // Parents documented only through their children (`delivery.retry` through `delivery.retry.min`, …).
    const undocumented = all.filter((p) => !documented(p) && !all.some((c) => c.startsWith(`${p}.`) && documented(c)));
    expect(undocumented).toEqual([]);
  });

  it('would notice a key missing from the README', () => {
    expect(documented('smtp.maxRecipients')).toBe(true);
    expect(documented('smtp.maxRecipientz')).toBe(false);
    expect(documented('smtp.helo.rejectSomething')).toBe(false);
  });
});
