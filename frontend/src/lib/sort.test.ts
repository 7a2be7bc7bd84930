import { describe, expect, it } from 'vitest';
import { nextDirection, sortRows } from './sort';

describe('sortRows', () => {
  const rows = [
    { v: 'v10', s: 0.3 },
    { v: 'v2', s: null },
    { v: 'v1', s: 0.5 },
    { v: 'v3', s: 0.3 },
  ];

  it('sorts numbers numerically, missing values last in both directions, ties stable', () => {
    expect(sortRows(rows, (r) => r.s, 'ascending').map((r) => r.v)).toEqual(['v10', 'v3', 'v1', 'v2']);
    expect(sortRows(rows, (r) => r.s, 'descending').map((r) => r.v)).toEqual(['v1', 'v10', 'v3', 'v2']);
  });

  it('sorts text naturally', () => {
    expect(sortRows(rows, (r) => r.v, 'ascending').map((r) => r.v)).toEqual(['v1', 'v2', 'v3', 'v10']);
  });

  it('toggles the direction on the same column', () => {
    expect(nextDirection(null, 'a')).toBe('ascending');
    expect(nextDirection({ column: 'a', dir: 'ascending' }, 'a')).toBe('descending');
    expect(nextDirection({ column: 'a', dir: 'descending' }, 'a')).toBe('ascending');
    expect(nextDirection({ column: 'a', dir: 'ascending' }, 'b', 'descending')).toBe('descending');
  });
});
