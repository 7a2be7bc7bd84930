// Reading a model version's `metrics` object. Its shape depends on the
// kind and the trainer, so this reads what it can:
//   {val: {jaccard: …}, test: {…}}                       (flat tables)
//   {val: {rows: [["MICRON", {jaccard: …}, {…}], …]}}   (metric tables, first row = the model)
//   {extra: {val: …, test: …}, history: […]}            (shipped MICRON versions)

export type MetricTable = Record<string, number>;
export type Split = 'val' | 'test';

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function numericEntries(o: Record<string, unknown>): MetricTable | null {
  const out: MetricTable = {};
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === 'number' && Number.isFinite(v)) out[k] = v;
  }
  return Object.keys(out).length > 0 ? out : null;
}

function table(x: unknown): MetricTable | null {
  if (!isObject(x)) return null;
  if (Array.isArray(x.rows)) {
    for (const row of x.rows) {
      if (Array.isArray(row) && isObject(row[1])) return numericEntries(row[1]);
    }
    return null;
  }
  return numericEntries(x);
}

/** The model's own metrics on a split (validation or test), when reported. */
export function splitMetrics(metrics: unknown, split: Split): MetricTable | null {
  if (!isObject(metrics)) return null;
  return table(metrics[split]) ?? (isObject(metrics.extra) ? table(metrics.extra[split]) : null);
}

export interface MetricInfo {
  key: string;
  label: string;
  better: 'higher' | 'lower' | null;
}

/** The metrics shown in tables, in order. */
export const KEY_METRICS: MetricInfo[] = [
  { key: 'jaccard', label: 'Jaccard', better: 'higher' },
  { key: 'prauc', label: 'PRAUC', better: 'higher' },
  { key: 'f1', label: 'F1', better: 'higher' },
  { key: 'precision', label: 'Precision', better: 'higher' },
  { key: 'recall', label: 'Recall', better: 'higher' },
  { key: 'ddi_rate', label: 'DDI rate', better: 'lower' },
  { key: 'err_add', label: 'Err(add)', better: 'lower' },
  { key: 'err_remove', label: 'Err(remove)', better: 'lower' },
  { key: 'avg_med', label: '#med', better: null },
];

/** Whether a higher value of a metric (named by key or pointer) is better. */
export function direction(name: string): 'higher' | 'lower' | null {
  const key = name.split('/').pop() ?? name;
  const known = KEY_METRICS.find((m) => m.key === key);
  if (known) return known.better;
  if (/loss|error|err_|nll|bits_per_dim|seconds/.test(key)) return 'lower';
  if (/jaccard|auc|f1|accuracy|precision|recall|score|likelihood/.test(key)) return 'higher';
  return null;
}

/** +1 when `b` is better than `a`, -1 when worse, 0 when equal or unknown. */
export function verdict(name: string, a: number | null | undefined, b: number | null | undefined): -1 | 0 | 1 {
  const dir = direction(name);
  if (dir === null || a === null || a === undefined || b === null || b === undefined || a === b) return 0;
  const up = b > a ? 1 : -1;
  return (dir === 'higher' ? up : -up) as -1 | 1;
}

export type HistoryRow = Record<string, number>;

/** Per-epoch training history (`metrics.history`), numeric fields only. */
export function history(metrics: unknown): HistoryRow[] {
  if (!isObject(metrics) || !Array.isArray(metrics.history)) return [];
  return metrics.history.filter(isObject).map((row) => numericEntries(row) ?? {});
}

export interface Point {
  x: number;
  y: number;
}

/** Curves of a history, one per field (x = epoch, counted from 1). */
export function historySeries(rows: HistoryRow[]): Map<string, Point[]> {
  const out = new Map<string, Point[]>();
  rows.forEach((row, i) => {
    const x = (row.epoch ?? i) + 1; // stored epochs count from 0
    for (const [k, y] of Object.entries(row)) {
      if (k === 'epoch' || k === 'steps' || k.endsWith('_seconds')) continue;
      const pts = out.get(k) ?? [];
      pts.push({ x, y });
      out.set(k, pts);
    }
  });
  return out;
}

/** Every number in a JSON value by JSON pointer (arrays included). */
export function flatten(value: unknown, prefix = '', out: Record<string, number> = {}): Record<string, number> {
  if (typeof value === 'number' && Number.isFinite(value)) {
    out[prefix || '/'] = value;
  } else if (Array.isArray(value)) {
    value.forEach((v, i) => flatten(v, `${prefix}/${i}`, out));
  } else if (isObject(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, `${prefix}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`, out);
  }
  return out;
}
