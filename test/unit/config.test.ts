import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, defaultConfigFile, loadConfig, overlayFileFromArgs } from '../../src/config/load.js';
import { networkList, parseDuration, parseHostPort, parseRate, parseSize } from '../../src/config/schema.js';
import { ConfigStore, restartOnlyChanges } from '../../src/config/store.js';

let dir: string;
beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'spoolhouse-config-')); });
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function overlay(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

function problemsOf(fn: () => unknown): ConfigError['problems'] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('config loading', () => {
  it('loads the documented defaults', () => {
    const { config } = loadConfig();
    expect(config.smtp.listen).toEqual([{ address: '127.0.0.1:2525', submission: false, implicitTls: false, proxyProtocol: [] }]);
    expect(config.relay.networks).toEqual(['127.0.0.0/8', '::1/128']);
    expect(config.delivery.retry).toEqual({ min: 300_000, max: 4_000_000, lifetime: 5 * 86_400_000, bounceLifetime: null });
    expect(config.smtp.maxMessageSize).toBe(50 * 1024 * 1024);
    expect(config.priorities.classes.urgent).toBeGreaterThan(config.priorities.classes.bulk!);
    expect(config.queue.backend).toBe('spool');
    expect(typeof config.smtp.hostname).toBe('string');
  });

  it('overlays a JSON file key by key, arrays replaced', () => {
    const file = overlay('o.json', JSON.stringify({ smtp: { listen: ['0.0.0.0:25', { address: '0.0.0.0:587', submission: true }], maxRecipients: 5 }, relay: { domains: ['Example.ORG'] } }));
    const { config } = loadConfig(file);
    expect(config.smtp.listen).toHaveLength(2);
    expect(config.smtp.listen[1]).toEqual({ address: '0.0.0.0:587', submission: true, implicitTls: false, proxyProtocol: [] });
    expect(config.smtp.maxRecipients).toBe(5);
    expect(config.smtp.maxConnections).toBe(500); // untouched default
    expect(config.relay.domains).toEqual(['example.org']);
  });

  it('reads YAML overlays', () => {
    const file = overlay('o.yaml', 'delivery:\n  retry:\n    min: 30s\n  delayWarning: 4h\nrules:\n  - name: newsletters\n    match: { header: { name: Precedence, value: bulk } }\n    priority: bulk\n');
    const { config } = loadConfig(file);
    expect(config.delivery.retry.min).toBe(30_000);
    expect(config.delivery.delayWarning).toBe(4 * 3_600_000);
    expect(config.rules[0]!.priority).toBe('bulk');
  });

  it('names the file and key of an unknown key', () => {
    const file = overlay('bad.json', JSON.stringify({ smtp: { maxRecipents: 5 } }));
    const problems = problemsOf(() => loadConfig(file));
    expect(problems).toContainEqual({ file, key: 'smtp.maxRecipents', problem: 'unknown key' });
  });

  it('names the file, key and problem of a wrong type or bad value', () => {
    const file = overlay('bad.json', JSON.stringify({ smtp: { maxRecipients: 'many' }, delivery: { retry: { min: 'soon' } }, relay: { networks: ['10.0.0.0/33'] } }));
    const problems = problemsOf(() => loadConfig(file));
    const keys = problems.map((p) => p.key);
    expect(keys).toEqual(expect.arrayContaining(['smtp.maxRecipients', 'delivery.retry.min', 'relay.networks.0']));
    expect(problems.every((p) => p.file === file)).toBe(true);
    expect(problems.find((p) => p.key === 'delivery.retry.min')!.problem).toMatch(/not a duration/);
  });

  it.each([
    // A union (a listener is "host:port" or an object): the shape the value was meant for speaks.
    [{ smtp: { listen: ['nope'] } }, 'smtp.listen.0', 'must be "host:port" (IPv6 as "[::1]:port")'],
    [{ smtp: { listen: [{ address: '127.0.0.1:25', submission: 'yes' }] } }, 'smtp.listen.0.submission', 'must be true or false, not a string'],
    [{ smtp: { listen: [{ address: '127.0.0.1:25', tls: true }] } }, 'smtp.listen.0.tls', 'unknown key'],
    // None of its shapes: which ones it may take.
    [{ smtp: { listen: [25] } }, 'smtp.listen.0', 'must be a string or an object, not a number'],
    [{ smtp: { tls: 5 } }, 'smtp.tls', 'must be null or an object, not a number'],
    [{ smtp: { listen: '127.0.0.1:25' } }, 'smtp.listen', 'must be a list, not a string'],
    [{ auth: { users: '' } }, 'auth.users', 'must not be empty'],
    [{ smtp: { maxRecipients: 0 } }, 'smtp.maxRecipients', 'must be at least 1'],
    [{ log: { level: 'loud' } }, 'log.level', 'must be one of "fatal", "error", "warn", "info", "debug", "trace", "silent"'],
    [{ rules: [{ match: { sender: 'a@example.com' }, priority: 'bulk' }] }, 'rules.0.name', 'required: must be a string'],
    [{ priorities: { classes: { x: 'high' } } }, 'priorities.classes.x', 'must be a number, not a string'],
    // Whole numbers: a fraction, and a value past every bound (only the key's own bound is named).
    [{ smtp: { maxRecipients: 1.5 } }, 'smtp.maxRecipients', 'must be a whole number'],
    [{ priorities: { classes: { high: -1e21 } } }, 'priorities.classes.high', 'must be at least 0'],
    // A name that is a key (a priority class, a domain): the name's own check.
    [{ priorities: { classes: { Urgent: 40 } } }, 'priorities.classes.Urgent', 'the name must be a lower-case name such as "bulk"'],
    [{ delivery: { tls: { policy: { 'bad domain': 'verify' } } } }, 'delivery.tls.policy.bad domain', 'the name must be a domain name in lower case'],
    [{ kafka: { topicPrefix: 'mail/queue' } }, 'kafka.topicPrefix', 'must be letters, digits, ".", "_" and "-" only (a Kafka topic name)'],
  ] as [unknown, string, string][])('says what is wrong in an operator\'s words: %j', (doc, key, problem) => {
    const file = overlay('bad.json', JSON.stringify(doc));
    const problems = problemsOf(() => loadConfig(file));
    expect(problems).toContainEqual({ file, key, problem });
    // One problem a key: the key's own bound, not also zod's range of whole numbers.
    expect(problems.filter((p) => p.key === key)).toHaveLength(1);
  });

  it('reads delivery.fallbackRelay hosts, and names a bad one', () => {
    expect(loadConfig(overlay('fallback.json', JSON.stringify({ delivery: { fallbackRelay: ['relay.example', '[2001:db8::1]:2525'] } }))).config.delivery.fallbackRelay)
      .toEqual(['relay.example', '[2001:db8::1]:2525']);
    const bad = overlay('fallback-bad.json', JSON.stringify({ delivery: { fallbackRelay: ['relay.example', 'not a host:25'] } }));
    expect(problemsOf(() => loadConfig(bad))).toEqual([{ file: bad, key: 'delivery.fallbackRelay.1', problem: 'must be "host" or "host:port"' }]);
  });

  it('reads smtp.dnsbl zones, with or without the answers that list, and names a bad one', () => {
    const good = overlay('dnsbl.json', JSON.stringify({ smtp: { dnsbl: ['Zen.Example.', { zone: 'picky.example', answers: ['127.0.0.4'] }] } }));
    expect(loadConfig(good).config.smtp.dnsbl).toEqual([{ zone: 'zen.example', answers: null }, { zone: 'picky.example', answers: ['127.0.0.4'] }]);
    const bad = overlay('dnsbl-bad.json', JSON.stringify({ smtp: { dnsbl: [{ zone: 'picky.example', answers: ['127.0.0'] }, 'not a zone'] } }));
    const problems = problemsOf(() => loadConfig(bad));
    expect(problems).toEqual([
      { file: bad, key: 'smtp.dnsbl.0.answers.0', problem: 'must be an IPv4 address such as "127.0.0.2"' },
      { file: bad, key: 'smtp.dnsbl.1.zone', problem: 'must be a domain name' },
    ]);
  });

  it('rejects a rule that names an unknown priority class', () => {
    const file = overlay('bad.json', JSON.stringify({ rules: [{ name: 'x', match: { sender: '*@x.org' }, priority: 'vip' }] }));
    const problems = problemsOf(() => loadConfig(file));
    expect(problems[0]).toMatchObject({ key: 'rules.0.priority', problem: expect.stringMatching(/not a priority class/) });
  });

  it('reports a syntax error with the file name', () => {
    const file = overlay('broken.json', '{ "smtp": ');
    expect(() => loadConfig(file)).toThrow(new RegExp(file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  });

  it('a bad value in the defaults file is blamed on the defaults file', () => {
    const defaults = JSON.parse(readFileSync(defaultConfigFile(), 'utf8'));
    defaults.admin.listen = 'nowhere';
    const file = overlay('defaults.json', JSON.stringify(defaults));
    const problems = problemsOf(() => loadConfig(undefined, file));
    expect(problems).toContainEqual(expect.objectContaining({ file, key: 'admin.listen' }));
  });

  it('takes --config FILE, --config=FILE, then SPOOLHOUSE_CONFIG', () => {
    expect(overlayFileFromArgs(['--config', 'a.json'], {})).toBe('a.json');
    expect(overlayFileFromArgs(['--config=b.yaml'], {})).toBe('b.yaml');
    expect(overlayFileFromArgs([], { SPOOLHOUSE_CONFIG: 'c.json' })).toBe('c.json');
    expect(overlayFileFromArgs([], {})).toBeUndefined();
    expect(() => overlayFileFromArgs(['--config'], {})).toThrow(ConfigError);
  });
});

describe('config values', () => {
  it('parses durations, sizes, rates, host:port and networks', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('5d')).toBe(432_000_000);
    expect(parseDuration('4000s')).toBe(4_000_000);
    expect(parseDuration('5 minutes')).toBeNaN();
    expect(parseSize('25MB')).toBe(25 * 1024 * 1024);
    expect(parseSize('10x')).toBeNaN();
    expect(parseRate('600/m')).toBe(10);
    expect(parseRate(null)).toBeUndefined();
    expect(parseHostPort('[::1]:25')).toEqual({ host: '::1', port: 25 });
    expect(parseHostPort('mx.example.org', 25)).toEqual({ host: 'mx.example.org', port: 25 });
    expect(parseHostPort('a:99999')).toBeUndefined();
    const nets = networkList(['127.0.0.0/8', '::1/128']);
    expect(nets.check('127.1.2.3', 'ipv4')).toBe(true);
    expect(nets.check('10.0.0.1', 'ipv4')).toBe(false);
    expect(nets.check('::1', 'ipv6')).toBe(true);
  });
});

describe('ConfigStore', () => {
  it('validates, saves and applies a change, and reloads the file', () => {
    const file = overlay('live.json', JSON.stringify({ smtp: { maxRecipients: 7 } }));
    const store = new ConfigStore(file);
    const seen: number[] = [];
    store.on('change', (c) => seen.push(c.rules.length));
    store.update({ rules: [{ name: 'vip', match: { senderDomain: 'vip.example' }, priority: 'urgent' }] });
    expect(store.current.rules[0]!.name).toBe('vip');
    expect(store.current.smtp.maxRecipients).toBe(7); // the rest of the overlay is kept
    const saved = JSON.parse(readFileSync(file, 'utf8'));
    expect(saved).toEqual({ smtp: { maxRecipients: 7 }, rules: [{ name: 'vip', match: { senderDomain: 'vip.example' }, priority: 'urgent' }] });

    expect(() => store.update({ priorities: { default: 'nope' } })).toThrow(ConfigError);
    expect(store.current.priorities.default).toBe('normal'); // a refused change changes nothing
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual(saved);

    writeFileSync(file, JSON.stringify({ smtp: { maxRecipients: 9 } }));
    store.reload();
    expect(store.current.smtp.maxRecipients).toBe(9);
    expect(store.current.rules).toEqual([]);
    expect(seen).toEqual([1, 0]);
  });
});

describe('restartOnlyChanges', () => {
  it('names the settings a reload cannot apply, and nothing for those it can', () => {
    const a = loadConfig(undefined).config;
    const same = structuredClone(a);
    expect(restartOnlyChanges(a, same)).toEqual([]);
    const live = { ...structuredClone(a), rules: [{ name: 'x', match: { sender: '*' }, hold: true }], delivery: { ...a.delivery, concurrency: 3 }, log: { ...a.log, level: 'debug' } } as typeof a;
    expect(restartOnlyChanges(a, live)).toEqual([]);
    const later = structuredClone(a);
    later.smtp.listen = [{ address: '127.0.0.1:2626', submission: false, implicitTls: false, proxyProtocol: [] }] as typeof a.smtp.listen;
    later.spool.dir = '/elsewhere';
    later.smtp.tls = { cert: 'c.pem', key: 'k.pem' } as typeof a.smtp.tls;
    later.log.pretty = !a.log.pretty;
    expect(restartOnlyChanges(a, later)).toEqual(['smtp.listen', 'smtp.tls', 'spool', 'log.pretty']);
    // New certificate files for a TLS already on are picked up live.
    const certs = structuredClone(later);
    certs.smtp.tls = { cert: 'new.pem', key: 'new.key' } as typeof a.smtp.tls;
    expect(restartOnlyChanges(later, certs)).toEqual([]);
  });
});

describe('config keys from the environment', () => {
  const defaults = defaultConfigFile();

  it('sets keys by path, reads values by the default type, and wins over the overlay file', () => {
    const file = overlay('o.json', JSON.stringify({ admin: { token: 'from-the-file-0123456' }, smtp: { maxRecipients: 7 } }));
    const { config } = loadConfig(file, defaults, {
      SPOOLHOUSE_ADMIN__TOKEN: '01234567890123456789',
      SPOOLHOUSE_KAFKA__BROKERS: 'k1:9092, k2:9092',
      SPOOLHOUSE_KAFKA__NODE_ID: 'node-a',
      SPOOLHOUSE_SMTP__MAX_RECIPIENTS: '50',
      SPOOLHOUSE_AUTH__ALLOW_INSECURE: 'true',
      SPOOLHOUSE_DELIVERY__RETRY__LIFETIME: '2d',
      SPOOLHOUSE_SMTP__TLS: '{ cert: /etc/ssl/c.pem, key: /etc/ssl/k.pem }',
      SPOOLHOUSE_SMTP__LISTEN: '["0.0.0.0:25", { address: "0.0.0.0:587", submission: true }]',
      SPOOLHOUSE_smtp__hostname: 'mx.example.org',
      // Not config keys: no "__" after the prefix.
      SPOOLHOUSE_CONFIG: '/nonexistent.json', SPOOLHOUSE_TOKEN: 'cli', SPOOLHOUSE_URL: 'http://x', SPOOLHOUSE_SKIP_KAFKA: '1',
    });
    expect(config.admin.token).toBe('01234567890123456789');
    expect(config.kafka.brokers).toEqual(['k1:9092', 'k2:9092']);
    expect(config.kafka.nodeId).toBe('node-a');
    expect(config.smtp.maxRecipients).toBe(50);
    expect(config.auth.allowInsecure).toBe(true);
    expect(config.delivery.retry.lifetime).toBe(2 * 86_400_000);
    expect(config.smtp.tls).toEqual({ cert: '/etc/ssl/c.pem', key: '/etc/ssl/k.pem' });
    expect(config.smtp.listen.map((l) => [l.address, l.submission])).toEqual([['0.0.0.0:25', false], ['0.0.0.0:587', true]]);
    expect(config.smtp.hostname).toBe('mx.example.org');
  });

  it('names the variable of an unknown key or a bad value', () => {
    expect(problemsOf(() => loadConfig(undefined, defaults, { SPOOLHOUSE_ADMIN__TOKN: 'x' }))).toEqual([
      { file: 'environment variable SPOOLHOUSE_ADMIN__TOKN', key: 'admin.tokn', problem: 'no configuration key admin.tokn' },
    ]);
    const bad = problemsOf(() => loadConfig(undefined, defaults, { SPOOLHOUSE_SMTP__MAX_RECIPIENTS: 'lots', SPOOLHOUSE_LOG__LEVEL: 'loud' }));
    expect(bad.map((p) => [p.file, p.key])).toEqual(expect.arrayContaining([
      ['environment variable SPOOLHOUSE_SMTP__MAX_RECIPIENTS', 'smtp.maxRecipients'],
      ['environment variable SPOOLHOUSE_LOG__LEVEL', 'log.level'],
    ]));
    expect(problemsOf(() => loadConfig(undefined, defaults, { SPOOLHOUSE_SMTP__TLS: '{ cert: [' }))[0]).toMatchObject({
      file: 'environment variable SPOOLHOUSE_SMTP__TLS', key: 'smtp.tls',
    });
  });

  it('keeps applying over what the API saves and what a reload reads', () => {
    const file = overlay('o.json', '{}');
    const store = new ConfigStore(file, defaults, { SPOOLHOUSE_PRIORITIES__LOW_PRIORITY_SHARE: '0.25' });
    store.update({ priorities: { lowPriorityShare: 0.5 } });
    expect(store.current.priorities.lowPriorityShare).toBe(0.25);
    expect(JSON.parse(readFileSync(file, 'utf8')).priorities.lowPriorityShare).toBe(0.5);
    expect(store.reload().priorities.lowPriorityShare).toBe(0.25);
  });

  it('gives the sections a change would save, and sets whole sections from another node (skipping equal ones)', () => {
    // Node A: its own overlay; a PUT of relay.reject and a partial priorities change.
    const a = new ConfigStore(overlay('a.json', JSON.stringify({ priorities: { lowPriorityShare: 0.2 } })));
    const patch = { relay: { reject: [{ sender: 'spam@bad.example' }] }, priorities: { default: 'bulk' } };
    const sections = a.sectionsAfter(patch, { replace: [['priorities', 'classes']] }, ['relay.reject', 'priorities']);
    expect(sections).toEqual({ 'relay.reject': [{ sender: 'spam@bad.example' }], priorities: { lowPriorityShare: 0.2, default: 'bulk' } });
    expect(a.current.relay.reject).toEqual([]); // only asked, nothing changed

    // Node B: other keys of its own stay; the sections replace B's whole values.
    const bFile = overlay('b.json', JSON.stringify({ smtp: { maxRecipients: 9 }, relay: { reject: [{ sender: 'old@x.example' }, { recipientDomain: 'y.example' }] }, priorities: { lowPriorityShare: 0.5 } }));
    const b = new ConfigStore(bFile);
    const changes: string[] = [];
    b.on('change', (c) => changes.push(c.relay.reject.map((e) => e.sender ?? '').join()));
    expect(b.replaceSections(sections)).toBeDefined();
    expect(b.current.relay.reject.map((e) => e.sender)).toEqual(['spam@bad.example']);
    expect([b.current.priorities.default, b.current.priorities.lowPriorityShare, b.current.smtp.maxRecipients]).toEqual(['bulk', 0.2, 9]);
    expect(JSON.parse(readFileSync(bFile, 'utf8')).relay).toEqual({ reject: [{ sender: 'spam@bad.example' }] });
    // The same sections again (a node reading its own change back): nothing saved, no event.
    expect(b.replaceSections(sections)).toBeUndefined();
    expect(changes).toHaveLength(1);
    // An invalid section is refused whole, and nothing changes.
    expect(() => b.replaceSections({ 'delivery.paused': ['not a domain!'] })).toThrow(ConfigError);
    expect(b.current.delivery.paused).toEqual([]);
  });
});
