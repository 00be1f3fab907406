/**
 * The running configuration, with changes at run time: `update()` validates a patch over the
 * overlay file, saves it (atomically) and emits 'change'; `reload()` re-reads the files
 * (SIGHUP). Stages listen for 'change' and apply what they can without a restart (rules,
 * priorities, per-destination limits). With no --config file, changes go to config/local.json,
 * which is then loaded as the overlay at the next start.
 */
import { EventEmitter } from 'node:events';
import { isDeepStrictEqual } from 'node:util';
import { existsSync, mkdirSync, openSync, fsyncSync, closeSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, extname, join } from 'node:path';
import { stringify as stringifyYaml } from 'yaml';
import { deepMerge, defaultConfigFile, envLayers, loadConfig, projectRoot, readConfigFile, validateConfig } from './load.js';
import type { Config } from './schema.js';

export function localOverlayFile(): string {
  return join(projectRoot(), 'config', 'local.json');
}

/** The overlay to use: the one asked for, else config/local.json when it exists. */
export function chooseOverlay(asked: string | undefined): string | undefined {
  if (asked) return asked;
  return existsSync(localOverlayFile()) ? localOverlayFile() : undefined;
}

export declare interface ConfigStore {
  on(event: 'change', listener: (config: Config, previous: Config) => void): this;
}

export class ConfigStore extends EventEmitter {
  #config: Config;
  #overlay: Record<string, unknown>;
  readonly overlayFile: string;
  readonly defaultsFile: string;
  /** The environment whose SPOOLHOUSE_…__… keys apply over the files (load.ts envLayers). */
  readonly #env: NodeJS.ProcessEnv;

  constructor(overlayFile: string | undefined, defaultsFile = defaultConfigFile(), env: NodeJS.ProcessEnv = process.env) {
    super();
    this.defaultsFile = defaultsFile;
    this.overlayFile = overlayFile ?? localOverlayFile();
    this.#env = env;
    const loaded = loadConfig(overlayFile, defaultsFile, env);
    this.#config = loaded.config;
    this.#overlay = loaded.overlay;
  }

  get current(): Config {
    return this.#config;
  }

  /**
   * Checks a patch (deep-merged over the overlay) without saving it. Throws ConfigError.
   * `replace` lists key paths whose value in the patch replaces the overlay's instead of merging
   * into it (e.g. ['delivery', 'limits', 'domains'], so a domain left out is removed).
   */
  validate(patch: Record<string, unknown>, opts: UpdateOptions = {}): Config {
    const overlay = mergeOverlay(this.#overlay, patch, opts);
    const defaults = readConfigFile(this.defaultsFile);
    const layers = [{ file: this.defaultsFile, doc: defaults }, { file: this.overlayFile, doc: overlay }, ...envLayers(this.#env, defaults)];
    return validateConfig(layers.reduce<unknown>((acc, l) => deepMerge(acc, l.doc), {}), layers);
  }

  /** Validates, saves to the overlay file, applies. Arrays in the patch replace (e.g. the rule list). */
  update(patch: Record<string, unknown>, opts: UpdateOptions = {}): Config {
    const next = this.validate(patch, opts);
    const overlay = mergeOverlay(this.#overlay, patch, opts);
    writeAtomically(this.overlayFile, /\.ya?ml$/i.test(extname(this.overlayFile)) ? stringifyYaml(overlay) : JSON.stringify(overlay, null, 2) + '\n');
    this.#overlay = overlay;
    return this.#apply(next);
  }

  /**
   * The overlay's value at each dotted section path ("relay.reject") once `patch` is merged: what
   * `update(patch, opts)` would save there, for another node to apply with replaceSections.
   */
  sectionsAfter(patch: Record<string, unknown>, opts: UpdateOptions, sections: string[]): Record<string, unknown> {
    const overlay = mergeOverlay(this.#overlay, patch, opts);
    return Object.fromEntries(sections.map((section) => [section, valueAt(overlay, section.split('.'))]));
  }

  /**
   * Sets whole sections of the overlay (dotted path → value, as sectionsAfter gives them):
   * validated, saved and applied as `update` does. Sections that already hold that value are left
   * alone; returns undefined when none changed (nothing saved, no 'change').
   */
  replaceSections(sections: Record<string, unknown>): Config | undefined {
    const changed = Object.entries(sections).filter(([section, value]) => !isDeepStrictEqual(valueAt(this.#overlay, section.split('.')), value));
    if (!changed.length) return undefined;
    const patch: Record<string, unknown> = {};
    for (const [section, value] of changed) {
      const path = section.split('.');
      let at = patch;
      for (const key of path.slice(0, -1)) at = (at[key] ??= {}) as Record<string, unknown>;
      at[path[path.length - 1]!] = value;
    }
    return this.update(patch, { replace: changed.map(([section]) => section.split('.')) });
  }

  /** Re-reads the files (SIGHUP). A broken file throws and leaves the running config as it was. */
  reload(): Config {
    const loaded = loadConfig(existsSync(this.overlayFile) ? this.overlayFile : undefined, this.defaultsFile, this.#env);
    this.#overlay = loaded.overlay;
    return this.#apply(loaded.config);
  }

  #apply(next: Config): Config {
    const previous = this.#config;
    this.#config = next;
    this.emit('change', next, previous);
    return next;
  }
}

/**
 * Settings read once, at start: the listeners, where and how mail is kept, the log format. A
 * reload that changes one of them leaves it as it runs until the next restart; these are the
 * paths (dotted) that differ, for a warning. (Everything else applies at once: rules, priorities,
 * relay, auth, delivery, limits, admin tokens, the TLS certificate files.)
 */
export function restartOnlyChanges(previous: Config, next: Config): string[] {
  const paths: [string, (c: Config) => unknown][] = [
    ['smtp.listen', (c) => c.smtp.listen],
    // STARTTLS is offered or not from the start; new certificate files are picked up live.
    ['smtp.tls', (c) => c.smtp.tls === null],
    ['admin.listen', (c) => c.admin.listen],
    // HTTPS or not is set up with the listener; new certificate files are picked up live.
    ['admin.tls', (c) => c.admin.tls === null],
    ['queue.backend', (c) => c.queue.backend],
    ['spool', (c) => c.spool],
    ['kafka', (c) => c.kafka],
    // The log's format and batching are set up with its destination; its level applies at once (main.ts).
    ['log.pretty', (c) => c.log.pretty],
    ['log.flushInterval', (c) => c.log.flushInterval],
  ];
  return paths.filter(([, get]) => JSON.stringify(get(previous)) !== JSON.stringify(get(next))).map(([path]) => path);
}

export interface UpdateOptions {
  replace?: string[][];
}

function valueAt(doc: Record<string, unknown>, path: string[]): unknown {
  let at: unknown = doc;
  for (const key of path) at = (at as Record<string, unknown> | undefined)?.[key];
  return at;
}

function mergeOverlay(overlay: Record<string, unknown>, patch: Record<string, unknown>, opts: UpdateOptions): Record<string, unknown> {
  const merged = deepMerge(overlay, patch) as Record<string, unknown>;
  for (const path of opts.replace ?? []) {
    let from: unknown = patch;
    for (const key of path) from = (from as Record<string, unknown> | undefined)?.[key];
    if (from === undefined) continue;
    let to = merged;
    for (const key of path.slice(0, -1)) to = to[key] as Record<string, unknown>;
    to[path[path.length - 1]!] = from;
  }
  return merged;
}

function writeAtomically(file: string, text: string): void {
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode: 0o600 });
  const fd = openSync(tmp, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
  renameSync(tmp, file);
  const dirFd = openSync(dirname(file), 'r');
  try { fsyncSync(dirFd); } finally { closeSync(dirFd); }
}
