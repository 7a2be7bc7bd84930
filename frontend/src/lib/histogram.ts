// Histograms of scores (e.g. the training data's log-likelihoods under a
// density model) and where one value falls in them.

/** `counts[i]` values fell in `[edges[i], edges[i + 1])` (the last bin includes its right edge). */
export interface Histogram {
  edges: number[];
  counts: number[];
  /** Values below the first edge / above the last (not drawn). */
  below?: number;
  above?: number;
}

/** Bins finite values into `bins` equal-width bins over `range` (default: their extent). */
export function binValues(values: readonly number[], bins = 30, range?: { min: number; max: number }): Histogram {
  const finite = values.filter(Number.isFinite);
  const n = Math.max(1, Math.floor(bins));
  let min = range?.min ?? Math.min(...finite);
  let max = range?.max ?? Math.max(...finite);
  if (!Number.isFinite(min) || !Number.isFinite(max)) {
    min = 0;
    max = 1;
  }
  if (min === max) {
    min -= 0.5;
    max += 0.5;
  }
  const width = (max - min) / n;
  const edges = Array.from({ length: n + 1 }, (_, i) => (i === n ? max : min + i * width));
  const counts = new Array<number>(n).fill(0);
  let below = 0;
  let above = 0;
  for (const v of finite) {
    if (v < min) below += 1;
    else if (v > max) above += 1;
    else counts[Math.min(n - 1, Math.floor((v - min) / width))]! += 1;
  }
  return { edges, counts, below, above };
}

/** Why a histogram cannot be drawn, or null when it can. */
export function problem(h: Histogram): string | null {
  if (h.counts.length === 0) return 'it has no bins';
  if (h.edges.length !== h.counts.length + 1) return `it has ${h.counts.length} counts but ${h.edges.length} edges`;
  for (let i = 1; i < h.edges.length; i++) {
    if (!(h.edges[i]! > h.edges[i - 1]!)) return 'its edges are not increasing';
  }
  if (h.counts.some((c) => !(c >= 0))) return 'it has a negative or missing count';
  return null;
}

function numbers(x: unknown): number[] | null {
  return Array.isArray(x) && x.every((v) => typeof v === 'number') ? (x as number[]) : null;
}

/**
 * Reads a histogram from the shapes a density model may report:
 * `{edges, counts}`, `{bin_edges, counts}`, or `{bins: [{lo|start, hi|end, count}]}`.
 */
export function fromJson(x: unknown): Histogram | null {
  if (!x || typeof x !== 'object') return null;
  const o = x as Record<string, unknown>;
  const counts = numbers(o.counts);
  const edges = numbers(o.edges) ?? numbers(o.bin_edges);
  if (counts && edges) {
    const h: Histogram = { edges, counts };
    if (typeof o.below === 'number') h.below = o.below;
    if (typeof o.above === 'number') h.above = o.above;
    return problem(h) ? null : h;
  }
  if (Array.isArray(o.bins) && o.bins.length > 0) {
    const e: number[] = [];
    const c: number[] = [];
    for (const b of o.bins as Record<string, unknown>[]) {
      const lo = (b.lo ?? b.start) as unknown;
      const hi = (b.hi ?? b.end) as unknown;
      if (typeof lo !== 'number' || typeof hi !== 'number' || typeof b.count !== 'number') return null;
      if (e.length === 0) e.push(lo);
      else if (e[e.length - 1] !== lo) return null;
      e.push(hi);
      c.push(b.count);
    }
    const h = { edges: e, counts: c };
    return problem(h) ? null : h;
  }
  return null;
}

export interface Mark {
  value: number;
  /** The bin holding the value; -1 below the first edge, `counts.length` above the last. */
  bin: number;
  position: 'below' | 'inside' | 'above';
  /**
   * Share of the histogram's values below `value` (0 to 1), interpolating
   * linearly inside its bin; values outside the edges count when reported.
   */
  fractionBelow: number;
}

/** Where `value` falls in `h`. */
export function mark(h: Histogram, value: number): Mark {
  const { edges, counts } = h;
  const below = h.below ?? 0;
  const above = h.above ?? 0;
  const inside = counts.reduce((a, b) => a + b, 0);
  const total = inside + below + above;
  const first = edges[0]!;
  const last = edges[edges.length - 1]!;
  if (value < first) {
    return { value, bin: -1, position: 'below', fractionBelow: 0 };
  }
  if (value > last) {
    return { value, bin: counts.length, position: 'above', fractionBelow: total === 0 ? 1 : (below + inside) / total };
  }
  // The last bin includes its right edge.
  let bin = counts.length - 1;
  for (let i = 0; i < counts.length; i++) {
    if (value < edges[i + 1]!) {
      bin = i;
      break;
    }
  }
  let under = below;
  for (let i = 0; i < bin; i++) under += counts[i]!;
  const lo = edges[bin]!;
  const hi = edges[bin + 1]!;
  under += counts[bin]! * ((value - lo) / (hi - lo));
  return { value, bin, position: 'inside', fractionBelow: total === 0 ? 0 : under / total };
}
