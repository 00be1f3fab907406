/**
 * A broken configuration is reported, never a crash: seeded random overlays made from
 * config/default.json (a value swapped for one of another type or out of range, a key misspelt,
 * a list where an object belongs, an entry of a list broken, a whole section replaced) and random
 * environment variables go through loadConfig. Each either loads or fails with a ConfigError whose
 * every problem names the file (or the variable), a key, and a problem in words; nothing else is
 * thrown, and no problem reads as a library's generic text. A failure names the seed and the case;
 * FUZZ_SEED=N repeats it, FUZZ_CASES=N makes it longer.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, defaultConfigFile, loadConfig } from '../../src/config/load.js';
import { seededRandom } from '../helpers/rng.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261205);
const CASES = Number(process.env.FUZZ_CASES ?? 300);
const dir = mkdtempSync(join(tmpdir(), 'spoolhouse-config-fuzz-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const ODD_VALUES: Json[] = [
  null, true, false, 0, -1, 1.5, 1e21, -1e21, 65536, '', ' ', 'nope', '0', '-5', '1e3', '25MB', '-5MB', '10x', '5m', '0s', '-1s', '1w',
  '999999999999999999999d', '127.0.0.1:99999', '[::1]:25', 'host:', ':25', '10.0.0.0/33', '::/129', 'ü', '\u0000', 'a'.repeat(3000),
  [], [null], [1, 'a'], [[]], {}, { x: 1 }, { address: 1 }, { '': '' }, '*', '/(/', '/a+/i', '10/s', '0/s', '5/fortnight',
];

function paths(doc: Json, prefix: string[] = [], out: string[][] = []): string[][] {
  if (doc && typeof doc === 'object') {
    for (const [k, v] of Object.entries(doc)) {
      const p = [...prefix, k];
      out.push(p);
      paths(v as Json, p, out);
    }
  }
  return out;
}

function setPath(doc: { [k: string]: Json }, path: string[], value: Json): void {
  let cur: Json = doc;
  for (const k of path.slice(0, -1)) {
    const obj = cur as { [k: string]: Json };
    if (!obj[k] || typeof obj[k] !== 'object') obj[k] = {};
    cur = obj[k]!;
  }
  (cur as { [k: string]: Json })[path[path.length - 1]!] = value;
}

describe('loadConfig under random configurations', () => {
  it(`loads or names the file, the key and the problem, for every case (seed ${SEED})`, () => {
    const defaults = JSON.parse(readFileSync(defaultConfigFile(), 'utf8')) as { [k: string]: Json };
    const all = paths(defaults);
    const rnd = seededRandom(SEED);
    const int = (n: number) => Math.floor(rnd() * n);
    const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
    const problems: string[] = [];
    let refused = 0;
    for (let i = 0; i < CASES; i++) {
      const overlay: { [k: string]: Json } = {};
      const env: NodeJS.ProcessEnv = {};
      for (let n = 1 + int(3); n > 0; n--) {
        const path = [...pick(all)];
        const kind = rnd();
        if (kind < 0.55) setPath(overlay, path, pick(ODD_VALUES));
        else if (kind < 0.7) setPath(overlay, [...path.slice(0, -1), `${path[path.length - 1]}${pick(['s', 'X', '_', ''])}x`], 1);
        else if (kind < 0.8) setPath(overlay, path, [{ name: pick(ODD_VALUES) as Json, match: pick(ODD_VALUES), priority: pick(ODD_VALUES) }]);
        else if (kind < 0.9) setPath(overlay, path.slice(0, 1), pick(ODD_VALUES));
        else if (path.length >= 2) env[`SPOOLHOUSE_${path.map((p) => p.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()).join('__')}`] = String(pick(ODD_VALUES) ?? 'null');
      }
      const yaml = rnd() < 0.2;
      const file = join(dir, `case-${i}.${yaml ? 'yaml' : 'json'}`);
      writeFileSync(file, yaml ? toYamlish(overlay) : JSON.stringify(overlay));
      const where = `seed ${SEED}, case ${i}: ${JSON.stringify(overlay).slice(0, 300)} ${JSON.stringify(env).slice(0, 200)}`;
      try {
        loadConfig(file, defaultConfigFile(), env);
      } catch (err) {
        if (!(err instanceof ConfigError)) {
          problems.push(`${where} -> threw ${(err as Error)?.stack ?? String(err)}`);
          continue;
        }
        refused++;
        if (!err.problems.length) problems.push(`${where} -> a ConfigError without problems: ${err.message}`);
        for (const p of err.problems) {
          const names = p.file === file || (p.file.startsWith('environment variable SPOOLHOUSE_') && Object.keys(env).some((k) => p.file.endsWith(k)));
          if (!names) problems.push(`${where} -> a problem names ${p.file}, not the overlay or a variable set`);
          // zod's own wording ("Invalid input: …", "Too small: …", "Unrecognized key …") is not an operator's.
          if (!p.problem || /^(Invalid|Too (small|big)|Unrecognized)|\[object Object\]|undefined|NaN/.test(p.problem)) problems.push(`${where} -> ${p.key}: "${p.problem}"`);
          if (!p.key && !/parse|YAML|JSON|read/i.test(p.problem)) problems.push(`${where} -> a problem without a key: ${p.problem}`);
        }
        if (!err.message.includes(err.problems[0]?.file ?? '\u0000')) problems.push(`${where} -> the message does not name the file: ${err.message}`);
      }
    }
    expect(problems).toEqual([]);
    // Most cases are broken on purpose; some happen to be valid.
    expect(refused).toBeGreaterThan(CASES / 2);
    expect(refused).toBeLessThan(CASES);
  });
});

/** The overlay as YAML: JSON is YAML, with some of it in block style. */
function toYamlish(doc: { [k: string]: Json }): string {
  return Object.entries(doc).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join('\n') + '\n';
}
