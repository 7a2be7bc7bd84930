import { describe, expect, it } from 'vitest';
import { extent, linear, niceStep, tickLabel, ticks } from './scale';

describe('scales', () => {
  it('chooses 1-2-5 steps', () => {
    expect(niceStep(1, 5)).toBe(0.2);
    expect(niceStep(100, 5)).toBe(20);
    expect(niceStep(0.03, 5)).toBeCloseTo(0.005, 12);
    expect(niceStep(0.037, 5)).toBeCloseTo(0.01, 12);
  });

  it('covers the extent with round ticks', () => {
    expect(ticks({ min: 0.13, max: 0.87 }, 5)).toEqual([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]);
    expect(ticks({ min: 0.13, max: 0.87 }, 3)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(ticks({ min: -3, max: 7 }, 5)).toEqual([-4, -2, 0, 2, 4, 6, 8]);
  });

  it('widens empty extents and skips non-finite values', () => {
    expect(extent([2, 2])).toEqual({ min: 1.8, max: 2.2 });
    expect(extent([0])).toEqual({ min: -1, max: 1 });
    expect(extent([Number.NaN, 1, 3], [0])).toEqual({ min: 0, max: 3 });
    expect(extent([])).toBeNull();
  });

  it('maps linearly, inverted ranges included', () => {
    const y = linear(0, 10, 200, 0);
    expect(y(0)).toBe(200);
    expect(y(5)).toBe(100);
    expect(tickLabel(0.25, 0.05)).toBe('0.25');
    expect(tickLabel(40, 10)).toBe('40');
  });
});
