/**
 * Small hand-built SVG charts (no chart library to keep up to date): a time-series line chart,
 * horizontal bars and a heatmap table. Every chart has a text alternative (aria-label) and a
 * legend in words, so colour is never the only carrier of meaning.
 */
import { h, s } from './dom';

export interface Series {
  name: string;
  colorClass: string;
  points: [number, number][];
}

/** The top of a y axis with four gridlines at round values (1, 2 or 5 × 10^k apart). */
function niceMax(v: number): number {
  const raw = v / 4;
  if (raw <= 1) return 4;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= raw)!;
  return step * 4;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** A line chart of series over time; `unit` labels the y axis. */
export function lineChart(opts: { title: string; series: Series[]; unit: string; empty: string }): HTMLElement {
  const W = 640, H = 220, L = 48, R = 12, T = 12, B = 28;
  const all = opts.series.flatMap((x) => x.points);
  const latest = opts.series.map((x) => `${x.name} ${x.points.at(-1)?.[1] ?? 0}`).join(', ');
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${opts.title}. Latest: ${latest}.`, class: 'chart' });
  if (all.length === 0) {
    return h('figure', { class: 'chart-box' }, h('figcaption', null, opts.title), h('p', { class: 'muted' }, opts.empty));
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]), t0 + 1000);
  const yMax = niceMax(Math.max(...all.map((p) => p[1]), 0));
  const x = (t: number) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v: number) => T + (1 - v / yMax) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (yMax / 4) * i;
    svg.append(
      s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }),
      s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, Number.isInteger(v) ? String(v) : v.toFixed(1)));
  }
  svg.append(
    s('text', { x: L, y: H - 8, class: 'axis' }, timeFmt.format(t0)),
    s('text', { x: W - R, y: H - 8, 'text-anchor': 'end', class: 'axis' }, timeFmt.format(t1)),
    s('text', { x: 4, y: T + 4, class: 'axis unit', transform: `rotate(90 4 ${T + 4})` }, opts.unit));
  for (const series of opts.series) {
    if (series.points.length === 1) {
      const [t, v] = series.points[0]!;
      svg.append(s('circle', { cx: x(t), cy: y(v), r: 3, class: `series ${series.colorClass}` }));
    } else if (series.points.length > 1) {
      const d = series.points.map(([t, v], i) => `${i ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
      svg.append(s('path', { d, class: `series ${series.colorClass}`, fill: 'none' }, s('title', null, series.name)));
    }
  }
  const legend = h('ul', { class: 'legend' }, opts.series.map((x) =>
    h('li', null, h('span', { class: `swatch ${x.colorClass}`, 'aria-hidden': 'true' }), `${x.name}: ${(x.points.at(-1)?.[1] ?? 0).toLocaleString()}`)));
  return h('figure', { class: 'chart-box' }, h('figcaption', null, opts.title), svg, legend);
}

/** Horizontal bars: label, value. */
export function barChart(opts: { title: string; rows: { label: string; value: number; colorClass?: string }[]; empty: string }): HTMLElement {
  if (opts.rows.length === 0) return h('figure', { class: 'chart-box' }, h('figcaption', null, opts.title), h('p', { class: 'muted' }, opts.empty));
  const W = 640, rowH = 24, L = 180, R = 60;
  const H = opts.rows.length * rowH + 8;
  const max = Math.max(...opts.rows.map((r) => r.value), 1);
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart',
    'aria-label': `${opts.title}: ${opts.rows.map((r) => `${r.label} ${r.value}`).join(', ')}.`,
  });
  opts.rows.forEach((r, i) => {
    const yy = 4 + i * rowH;
    const w = Math.max(1, (r.value / max) * (W - L - R));
    svg.append(
      s('text', { x: L - 8, y: yy + 16, 'text-anchor': 'end', class: 'axis' }, r.label.length > 26 ? r.label.slice(0, 25) + '…' : r.label),
      s('rect', { x: L, y: yy + 3, width: w, height: rowH - 8, rx: 2, class: `bar ${r.colorClass ?? ''}` }, s('title', null, `${r.label}: ${r.value}`)),
      s('text', { x: L + w + 6, y: yy + 16, class: 'axis' }, r.value.toLocaleString()));
  });
  return h('figure', { class: 'chart-box' }, h('figcaption', null, opts.title), svg);
}

function bucketLabel(mins: (number | null)[], i: number): string {
  const fmt = (m: number) => (m >= 1440 && m % 1440 === 0 ? `${m / 1440} d` : m >= 60 && m % 60 === 0 ? `${m / 60} h` : `${m} min`);
  const lo = i === 0 ? 0 : mins[i - 1]!;
  const hi = mins[i];
  // The server sends the open last bucket as null (JSON has no Infinity).
  if (hi === undefined || hi === null || !Number.isFinite(hi)) return `over ${fmt(lo)}`;
  return i === 0 ? `under ${fmt(hi)}` : `${fmt(lo)}–${fmt(hi)}`;
}

/**
 * The qshape table: rows are destination domains, columns are age buckets, each cell shaded
 * by its count (and the count written in it). A table is the accessible form of a heatmap.
 * `bucketsMinutes` are upper bounds; one more count than bounds means an open "over" bucket.
 */
export function heatmap(opts: { title: string; bucketsMinutes: (number | null)[]; rows: { domain: string; total: number; counts: number[] }[]; empty: string }): HTMLElement {
  if (opts.rows.length === 0) return h('figure', { class: 'chart-box' }, h('figcaption', null, opts.title), h('p', { class: 'muted' }, opts.empty));
  const columns = Math.max(opts.bucketsMinutes.length, ...opts.rows.map((r) => r.counts.length));
  const max = Math.max(1, ...opts.rows.flatMap((r) => r.counts));
  const cell = (n: number) => {
    const level = n === 0 ? 0 : Math.min(5, 1 + Math.floor((n / max) * 4.999));
    return h('td', { class: `heat heat-${level}`, title: `${n} mail${n === 1 ? '' : 's'}` }, n ? n.toLocaleString() : '·');
  };
  return h('figure', { class: 'chart-box' },
    h('figcaption', null, opts.title),
    h('div', { class: 'scroll' },
      h('table', { class: 'heatmap', 'aria-label': opts.title },
        h('thead', null, h('tr', null,
          h('th', { scope: 'col' }, 'Domain'),
          h('th', { scope: 'col', class: 'num' }, 'Total'),
          Array.from({ length: columns }, (_, i) => h('th', { scope: 'col', class: 'num' }, bucketLabel(opts.bucketsMinutes, i))))),
        h('tbody', null, opts.rows.map((r) => h('tr', null,
          h('th', { scope: 'row' }, r.domain || '(none)'),
          h('td', { class: 'num total' }, r.total.toLocaleString()),
          Array.from({ length: columns }, (_, i) => cell(r.counts[i] ?? 0))))))),
    h('p', { class: 'legend-note muted' }, 'Darker cells hold more mail. Mail piling up in the right-hand columns for one domain points at a destination problem.'));
}
