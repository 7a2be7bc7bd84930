import { describe, expect, it } from 'vitest';
import { direction, flatten, history, historySeries, splitMetrics, verdict } from './metrics';

const row = (j: number) => ({ jaccard: j, prauc: 0.5, ddi_rate: 0.08, patients: 12 });

describe('metrics', () => {
  it('reads flat tables, metric tables and shipped versions', () => {
    expect(splitMetrics({ val: { jaccard: 0.4, note: 'x' } }, 'val')).toEqual({ jaccard: 0.4 });
    const table = { val: { rows: [['MICRON', row(0.35), row(0.3)], ['copy-previous', row(0.2), row(0.2)]] } };
    expect(splitMetrics(table, 'val')).toEqual(row(0.35));
    expect(splitMetrics({ extra: { test: { rows: [['MICRON', row(0.42)]] } } }, 'test')).toEqual(row(0.42));
    expect(splitMetrics({}, 'val')).toBeNull();
    expect(splitMetrics({ val: { rows: [] } }, 'val')).toBeNull();
    expect(splitMetrics(null, 'test')).toBeNull();
  });

  it('reads the per-epoch history as curves from epoch 1', () => {
    const h = history({
      history: [
        { epoch: 0, steps: 36, train_loss: 0.78, train_seconds: 0.15, val_jaccard: 0.35 },
        { epoch: 1, steps: 36, train_loss: 0.56, train_seconds: 0.08, val_jaccard: 0.36 },
      ],
    });
    const s = historySeries(h);
    expect([...s.keys()]).toEqual(['train_loss', 'val_jaccard']);
    expect(s.get('train_loss')).toEqual([
      { x: 1, y: 0.78 },
      { x: 2, y: 0.56 },
    ]);
    expect(history({})).toEqual([]);
  });

  it('knows which way is better', () => {
    expect(direction('/val/jaccard')).toBe('higher');
    expect(direction('ddi_rate')).toBe('lower');
    expect(direction('train_loss')).toBe('lower');
    expect(direction('avg_med')).toBeNull();
    expect(verdict('jaccard', 0.4, 0.5)).toBe(1);
    expect(verdict('ddi_rate', 0.05, 0.08)).toBe(-1);
    expect(verdict('avg_med', 10, 12)).toBe(0);
    expect(verdict('jaccard', null, 0.5)).toBe(0);
  });

  it('flattens every number by JSON pointer', () => {
    expect(flatten({ a: { b: 1, 'c/d': [2, { e: 3 }] }, s: 'x' })).toEqual({ '/a/b': 1, '/a/c~1d/0': 2, '/a/c~1d/1/e': 3 });
  });
});
