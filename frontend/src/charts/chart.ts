// Small SVG charts drawn by our own code: line charts (training curves),
// bar charts (predictions per hour) and histograms with a marked value.
import { h, s, uid } from '../lib/dom';
import { type Histogram, type Mark, mark as markValue } from '../lib/histogram';
import type { Point } from '../lib/metrics';
import { extent, linear, niceStep, tickLabel, ticks } from '../lib/scale';

const W = 560;
const H = 240;
const M = { top: 12, right: 16, bottom: 40, left: 56 };

export interface Series {
  name: string;
  points: Point[];
}

interface Frame {
  svg: SVGSVGElement;
  x: (v: number) => number;
  y: (v: number) => number;
}

/** Axes, grid and labels; returns the scales for the content. */
function frame(
  title: string,
  summary: string,
  xDomain: { min: number; max: number },
  yDomain: { min: number; max: number },
  xLabel: string,
  yLabel: string,
  xTicks?: { value: number; label: string }[],
  integerY = false,
): Frame {
  const titleId = uid('chart-title');
  const descId = uid('chart-desc');
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`,
    class: 'chart',
    role: 'img',
    'aria-labelledby': `${titleId} ${descId}`,
  });
  svg.append(s('title', { id: titleId }, title), s('desc', { id: descId }, summary));
  const x = linear(xDomain.min, xDomain.max, M.left, W - M.right);
  const y = linear(yDomain.min, yDomain.max, H - M.bottom, M.top);
  const ystep = integerY ? Math.max(1, niceStep(yDomain.max - yDomain.min, 5)) : niceStep(yDomain.max - yDomain.min, 5);
  const yt = (integerY ? ticks(yDomain, 5).filter((v) => Number.isInteger(v)) : ticks(yDomain, 5)).filter(
    (v) => v >= yDomain.min - 1e-12 && v <= yDomain.max + 1e-12 && (!integerY || v % ystep === 0),
  );
  const grid = s('g', { class: 'grid', 'aria-hidden': 'true' });
  for (const v of yt) {
    grid.append(
      s('line', { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
      s('text', { x: M.left - 6, y: y(v), class: 'tick y', 'dominant-baseline': 'middle', 'text-anchor': 'end' }, tickLabel(v, ystep)),
    );
  }
  const xstep = niceStep(xDomain.max - xDomain.min, 6);
  const xt =
    xTicks ??
    ticks(xDomain, 6)
      .filter((v) => v >= xDomain.min - 1e-12 && v <= xDomain.max + 1e-12)
      .map((v) => ({ value: v, label: tickLabel(v, xstep) }));
  for (const t of xt) {
    grid.append(s('text', { x: x(t.value), y: H - M.bottom + 16, class: 'tick x', 'text-anchor': 'middle' }, t.label));
  }
  grid.append(
    s('line', { class: 'axis', x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }),
    s('line', { class: 'axis', x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }),
    s('text', { x: (M.left + W - M.right) / 2, y: H - 6, class: 'axis-label', 'text-anchor': 'middle' }, xLabel),
    s(
      'text',
      { x: 14, y: (M.top + H - M.bottom) / 2, class: 'axis-label', 'text-anchor': 'middle', transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` },
      yLabel,
    ),
  );
  svg.append(grid);
  return { svg, x, y };
}

/** A figure: caption, chart, legend. */
function figure(title: string, chart: SVGSVGElement, legend: { name: string; cls: string }[]): HTMLElement {
  return h(
    'figure',
    { class: 'chart-figure' },
    h('figcaption', null, title),
    chart,
    legend.length > 0
      ? h(
          'ul',
          { class: 'legend', 'aria-label': `${title}: legend` },
          legend.map((l) => h('li', null, h('span', { class: `swatch ${l.cls}`, 'aria-hidden': 'true' }), l.name)),
        )
      : null,
  );
}

function fmt(v: number): string {
  return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
}

/** Lines (and dots, when they are few) for each series. */
export function lineChart(opts: { title: string; xLabel: string; yLabel: string; series: Series[]; xMin?: number; xMax?: number }): HTMLElement {
  const series = opts.series.filter((se) => se.points.length > 0);
  const xs = series.flatMap((se) => se.points.map((p) => p.x));
  const ys = series.flatMap((se) => se.points.map((p) => p.y));
  const xe = extent(xs, [opts.xMin, opts.xMax].filter((v): v is number => v !== undefined));
  const ye = extent(ys);
  if (!xe || !ye) {
    return h('figure', { class: 'chart-figure empty' }, h('figcaption', null, opts.title), h('p', { class: 'muted' }, 'No data yet.'));
  }
  const pad = (ye.max - ye.min) * 0.05;
  const yDomain = { min: ye.min - pad, max: ye.max + pad };
  const summary = series
    .map((se) => {
      const first = se.points[0]!;
      const last = se.points[se.points.length - 1]!;
      return `${se.name}: ${se.points.length} points, from ${fmt(first.y)} at ${opts.xLabel.toLowerCase()} ${fmt(first.x)} to ${fmt(last.y)} at ${fmt(last.x)}`;
    })
    .join('; ');
  const f = frame(opts.title, summary, xe, yDomain, opts.xLabel, opts.yLabel);
  series.forEach((se, i) => {
    const cls = `series-${i % 6}`;
    const d = se.points.map((p, j) => `${j === 0 ? 'M' : 'L'}${f.x(p.x).toFixed(1)},${f.y(p.y).toFixed(1)}`).join('');
    const g = s('g', { class: `series ${cls}`, 'data-series': se.name });
    g.append(s('path', { d, class: 'line' }));
    if (se.points.length <= 60) {
      for (const p of se.points) g.append(s('circle', { cx: f.x(p.x).toFixed(1), cy: f.y(p.y).toFixed(1), r: 2.5, class: 'dot' }));
    }
    f.svg.append(g);
  });
  return figure(opts.title, f.svg, series.map((se, i) => ({ name: se.name, cls: `series-${i % 6}` })));
}

export interface Bar {
  label: string;
  /** Stacked from the bottom; `names` says what each is. */
  values: number[];
}

/** Bars (stacked when a bar has several values). */
export function barChart(opts: { title: string; xLabel: string; yLabel: string; names: string[]; bars: Bar[]; labelEvery?: number }): HTMLElement {
  const totals = opts.bars.map((b) => b.values.reduce((a, v) => a + v, 0));
  const ymax = Math.max(1, ...totals);
  const n = Math.max(1, opts.bars.length);
  const every = opts.labelEvery ?? Math.max(1, Math.ceil(n / 8));
  const xTicks = opts.bars
    .map((b, i) => ({ value: i + 0.5, label: b.label }))
    .filter((_, i) => i % every === 0 || i === n - 1);
  const total = totals.reduce((a, v) => a + v, 0);
  const peak = totals.indexOf(Math.max(...totals));
  const summary = `${total} in all over ${n} ${opts.xLabel.toLowerCase()}s${total > 0 ? `; most (${totals[peak]}) at ${opts.bars[peak]!.label}` : ''}`;
  const f = frame(opts.title, summary, { min: 0, max: n }, { min: 0, max: ymax * 1.05 }, opts.xLabel, opts.yLabel, xTicks, true);
  const bw = Math.max(1, f.x(1) - f.x(0) - 2);
  opts.bars.forEach((b, i) => {
    let base = 0;
    b.values.forEach((v, k) => {
      if (v <= 0) return;
      const y0 = f.y(base);
      const y1 = f.y(base + v);
      f.svg.append(
        s(
          'rect',
          { x: (f.x(i) + 1).toFixed(1), y: y1.toFixed(1), width: bw.toFixed(1), height: Math.max(0.5, y0 - y1).toFixed(1), class: `bar series-${k % 6}` },
          s('title', null, `${b.label}: ${opts.names[k] ?? ''} ${v}`),
        ),
      );
      base += v;
    });
  });
  return figure(opts.title, f.svg, opts.names.map((name, i) => ({ name, cls: `series-${i % 6}` })));
}

/** A histogram with one value marked (e.g. a visit's score among the training data's). */
export function histogramChart(opts: { title: string; xLabel: string; histogram: Histogram; marked?: { value: number; label: string } | null }): {
  element: HTMLElement;
  mark: Mark | null;
} {
  const { edges, counts } = opts.histogram;
  const first = edges[0]!;
  const last = edges[edges.length - 1]!;
  const m = opts.marked ? markValue(opts.histogram, opts.marked.value) : null;
  // Keep a marker outside the bins in view.
  const xmin = m && m.value < first ? m.value - (last - first) * 0.05 : first;
  const xmax = m && m.value > last ? m.value + (last - first) * 0.05 : last;
  const total = counts.reduce((a, b) => a + b, 0);
  const summary =
    `${total} values in ${counts.length} bins from ${fmt(first)} to ${fmt(last)}` +
    (m && opts.marked ? `; ${opts.marked.label} at ${fmt(m.value)}, above ${(m.fractionBelow * 100).toFixed(1)} % of them` : '');
  const f = frame(opts.title, summary, { min: xmin, max: xmax }, { min: 0, max: Math.max(1, ...counts) * 1.08 }, opts.xLabel, 'count', undefined, true);
  counts.forEach((c, i) => {
    const x0 = f.x(edges[i]!);
    const x1 = f.x(edges[i + 1]!);
    const cls = m && m.bin === i ? 'bar marked-bin' : 'bar series-0';
    f.svg.append(
      s(
        'rect',
        { x: (x0 + 0.5).toFixed(1), y: f.y(c).toFixed(1), width: Math.max(0.5, x1 - x0 - 1).toFixed(1), height: Math.max(0, f.y(0) - f.y(c)).toFixed(1), class: cls, 'data-bin': i },
        s('title', null, `${fmt(edges[i]!)} to ${fmt(edges[i + 1]!)}: ${c}`),
      ),
    );
  });
  if (m && opts.marked) {
    const x = f.x(m.value);
    f.svg.append(
      s(
        'g',
        { class: 'marker', 'data-value': m.value, 'data-bin': m.bin },
        s('line', { x1: x.toFixed(1), x2: x.toFixed(1), y1: M.top, y2: H - M.bottom }),
        s('text', { x: (x + (x > W / 2 ? -4 : 4)).toFixed(1), y: M.top + 10, 'text-anchor': x > W / 2 ? 'end' : 'start' }, opts.marked.label),
      ),
    );
  }
  const legend = [{ name: 'training data', cls: 'series-0' }, ...(m ? [{ name: opts.marked!.label, cls: 'marker-swatch' }] : [])];
  return { element: figure(opts.title, f.svg, legend), mark: m };
}
