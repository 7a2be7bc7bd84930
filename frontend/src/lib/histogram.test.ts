import { describe, expect, it } from 'vitest';
import { binValues, fromJson, mark, problem } from './histogram';

describe('binValues', () => {
  it('puts each value in its bin, the maximum in the last', () => {
    const h = binValues([0, 0.5, 1, 1.5, 2, 4], 4);
    expect(h.edges).toEqual([0, 1, 2, 3, 4]);
    expect(h.counts).toEqual([2, 2, 1, 1]);
    expect(h.counts.reduce((a, b) => a + b, 0)).toBe(6);
  });

  it('counts values outside a given range apart and skips non-finite ones', () => {
    const h = binValues([-5, 0.1, 0.9, 7, Number.NaN, Number.POSITIVE_INFINITY], 2, { min: 0, max: 1 });
    expect(h.counts).toEqual([1, 1]);
    expect(h.below).toBe(1);
    expect(h.above).toBe(1);
  });

  it('widens a single repeated value into a drawable range', () => {
    const h = binValues([3, 3, 3], 3);
    expect(h.edges[0]).toBeLessThan(3);
    expect(h.edges[3]).toBeGreaterThan(3);
    expect(h.counts.reduce((a, b) => a + b, 0)).toBe(3);
    expect(problem(h)).toBeNull();
  });
});

describe('mark', () => {
  const h = { edges: [0, 10, 20, 30, 40], counts: [10, 20, 30, 40] };

  it('finds the bin and interpolates the share below inside it', () => {
    const m = mark(h, 25);
    expect(m.bin).toBe(2);
    expect(m.position).toBe('inside');
    // 10 + 20 below the bin, half of its 30: 45 of 100.
    expect(m.fractionBelow).toBeCloseTo(0.45, 12);
  });

  it('treats edges as the start of the next bin, the last edge as inside', () => {
    expect(mark(h, 10).bin).toBe(1);
    expect(mark(h, 0).fractionBelow).toBe(0);
    const last = mark(h, 40);
    expect(last.bin).toBe(3);
    expect(last.fractionBelow).toBeCloseTo(1, 12);
  });

  it('reports values outside the histogram', () => {
    expect(mark(h, -1)).toMatchObject({ bin: -1, position: 'below', fractionBelow: 0 });
    expect(mark(h, 41)).toMatchObject({ bin: 4, position: 'above', fractionBelow: 1 });
  });

  it('counts reported outliers in the share', () => {
    const m = mark({ ...h, below: 100, above: 0 }, 40);
    expect(m.fractionBelow).toBeCloseTo(1, 12);
    expect(mark({ ...h, below: 100 }, 0).fractionBelow).toBeCloseTo(0.5, 12);
  });

  it('agrees with binning: the share below a value is the share of smaller values', () => {
    const values = Array.from({ length: 1000 }, (_, i) => (i * 7919) % 1000);
    const hist = binValues(values, 100, { min: 0, max: 1000 });
    for (const v of [0, 123, 500, 999]) {
      const exact = values.filter((x) => x < v).length / values.length;
      expect(Math.abs(mark(hist, v).fractionBelow - exact)).toBeLessThan(0.011);
    }
  });
});

describe('fromJson', () => {
  it('reads edges and counts', () => {
    expect(fromJson({ edges: [0, 1, 2], counts: [3, 4] })).toEqual({ edges: [0, 1, 2], counts: [3, 4] });
    expect(fromJson({ bin_edges: [0, 1], counts: [3], below: 2 })).toEqual({ edges: [0, 1], counts: [3], below: 2 });
  });

  it('reads a list of bins', () => {
    expect(
      fromJson({
        bins: [
          { lo: -3, hi: -2, count: 1 },
          { lo: -2, hi: -1, count: 5 },
        ],
      }),
    ).toEqual({ edges: [-3, -2, -1], counts: [1, 5] });
  });

  it('refuses shapes that cannot be drawn', () => {
    expect(fromJson({ edges: [0, 1], counts: [1, 2] })).toBeNull();
    expect(fromJson({ edges: [0, 2, 1], counts: [1, 2] })).toBeNull();
    expect(fromJson({ bins: [{ lo: 0, hi: 1, count: 1 }, { lo: 2, hi: 3, count: 1 }] })).toBeNull();
    expect(fromJson({ edges: [0, 1], counts: [-1] })).toBeNull();
    expect(fromJson(null)).toBeNull();
    expect(fromJson({ counts: [1] })).toBeNull();
  });
});
