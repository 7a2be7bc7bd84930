// Sorting table rows by a column: numbers numerically, text naturally,
// missing values last in either direction.

export type Direction = 'ascending' | 'descending';
export type SortValue = number | string | null | undefined;

function missing(v: SortValue): boolean {
  return v === null || v === undefined || (typeof v === 'number' && !Number.isFinite(v)) || v === '';
}

const collator = new Intl.Collator('en', { numeric: true, sensitivity: 'base' });

export function compareValues(a: SortValue, b: SortValue): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return collator.compare(String(a), String(b));
}

/** A sorted copy; ties keep their order (the sort is stable). */
export function sortRows<T>(rows: readonly T[], key: (row: T) => SortValue, dir: Direction): T[] {
  const sign = dir === 'ascending' ? 1 : -1;
  return rows
    .map((row, i) => ({ row, i, v: key(row) }))
    .sort((x, y) => {
      const mx = missing(x.v);
      const my = missing(y.v);
      if (mx || my) return mx && my ? x.i - y.i : mx ? 1 : -1;
      return sign * compareValues(x.v, y.v) || x.i - y.i;
    })
    .map((x) => x.row);
}

/** The direction after clicking a column header. */
export function nextDirection(current: { column: string; dir: Direction } | null, column: string, first: Direction = 'ascending'): Direction {
  if (!current || current.column !== column) return first;
  return current.dir === 'ascending' ? 'descending' : 'ascending';
}
