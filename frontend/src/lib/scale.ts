// Linear scales and "nice" axis ticks for the SVG charts.

export interface Extent {
  min: number;
  max: number;
}

/** The extent of finite values; a zero-width extent is widened so it can be drawn. */
export function extent(values: Iterable<number>, include?: number[]): Extent | null {
  let min = Infinity;
  let max = -Infinity;
  for (const v of [...values, ...(include ?? [])]) {
    if (!Number.isFinite(v)) continue;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (min === Infinity) return null;
  if (min === max) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    return { min: min - pad, max: max + pad };
  }
  return { min, max };
}

/** A step of 1, 2 or 5 times a power of ten giving about `count` intervals. */
export function niceStep(span: number, count: number): number {
  if (!(span > 0) || !(count > 0)) return 1;
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  const nice = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  return nice * power;
}

/** Round tick values covering `e` (the first at or below min, the last at or above max). */
export function ticks(e: Extent, count = 5): number[] {
  const step = niceStep(e.max - e.min, count);
  const start = Math.floor(e.min / step) * step;
  const end = Math.ceil(e.max / step) * step;
  const out: number[] = [];
  for (let i = 0; start + i * step <= end + step * 1e-9 && i < 1000; i++) {
    out.push(Number((start + i * step).toPrecision(12)));
  }
  return out;
}

/** Maps the domain [d0, d1] linearly onto the range [r0, r1]. */
export function linear(d0: number, d1: number, r0: number, r1: number): (x: number) => number {
  const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
  return (x: number) => r0 + (x - d0) * k;
}

/** A tick label: as few decimals as the step needs. */
export function tickLabel(v: number, step: number): string {
  if (Math.abs(v) >= 1e5 || (Math.abs(v) > 0 && Math.abs(v) < 1e-4)) return v.toExponential(1);
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
  return v.toFixed(decimals);
}
