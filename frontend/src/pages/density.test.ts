import { describe, expect, it } from 'vitest';
import { histogramOf } from './density';

describe('density page', () => {
  it('finds the training-score histogram in a version’s metrics', () => {
    expect(histogramOf({ train_scores: { edges: [-3, -2, -1], counts: [4, 6] } })).toEqual({ edges: [-3, -2, -1], counts: [4, 6] });
    expect(histogramOf({ nll: 1.2, histogram: { bins: [{ lo: 0, hi: 1, count: 2 }] } })).toEqual({ edges: [0, 1], counts: [2] });
    // A malformed one under the first key does not hide a good one under another.
    expect(histogramOf({ train_scores: { edges: [0], counts: [1] }, histogram: { edges: [0, 1], counts: [1] } })).toEqual({ edges: [0, 1], counts: [1] });
    expect(histogramOf({ val: { nll: 1 } })).toBeNull();
    expect(histogramOf(null)).toBeNull();
  });
});
