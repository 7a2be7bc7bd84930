// @vitest-environment happy-dom
import { describe, expect, it } from 'vitest';
import { binValues } from '../lib/histogram';
import { barChart, histogramChart, lineChart } from './chart';

describe('charts', () => {
  it('draws a histogram with the marked value in its bin and on the axis', () => {
    const histogram = { edges: [0, 10, 20, 30, 40], counts: [10, 20, 30, 40] };
    const { element, mark } = histogramChart({ title: 'scores', xLabel: 'log-likelihood', histogram, marked: { value: 25, label: 'this visit' } });
    expect(mark!.bin).toBe(2);
    const bars = element.querySelectorAll('rect.bar');
    expect(bars).toHaveLength(4);
    expect(element.querySelector('rect.marked-bin')!.getAttribute('data-bin')).toBe('2');
    // The marker line lies inside the marked bin's rectangle.
    const line = element.querySelector('.marker line')!;
    const x = Number(line.getAttribute('x1'));
    const rect = bars[2]!;
    const left = Number(rect.getAttribute('x'));
    expect(x).toBeGreaterThan(left);
    expect(x).toBeLessThan(left + Number(rect.getAttribute('width')));
    // Taller bars for larger counts.
    const heights = [...bars].map((b) => Number(b.getAttribute('height')));
    expect(heights).toEqual([...heights].sort((a, b) => a - b));
    expect(element.querySelector('desc')!.textContent).toContain('above 45.0 %');
    expect(element.querySelector('svg')!.getAttribute('role')).toBe('img');
  });

  it('keeps a marker outside the bins in view', () => {
    const histogram = binValues([1, 2, 3, 4], 4);
    const { element, mark } = histogramChart({ title: 't', xLabel: 'x', histogram, marked: { value: 10, label: 'far' } });
    expect(mark!.position).toBe('above');
    const x = Number(element.querySelector('.marker line')!.getAttribute('x1'));
    expect(x).toBeLessThanOrEqual(560);
    expect(element.querySelector('rect.marked-bin')).toBeNull();
  });

  it('draws one path per series and says when there is no data', () => {
    const el = lineChart({
      title: 'loss',
      xLabel: 'Epoch',
      yLabel: 'loss',
      series: [
        { name: 'per step', points: [{ x: 0.5, y: 1 }, { x: 1, y: 0.8 }] },
        { name: 'per epoch', points: [{ x: 1, y: 0.9 }] },
        { name: 'empty', points: [] },
      ],
    });
    expect(el.querySelectorAll('path.line')).toHaveLength(2);
    expect(el.querySelectorAll('.legend li')).toHaveLength(2);
    const empty = lineChart({ title: 'metrics', xLabel: 'Epoch', yLabel: 'v', series: [] });
    expect(empty.textContent).toContain('No data yet');
  });

  it('stacks bars', () => {
    const el = barChart({ title: 'per hour', xLabel: 'Hour', yLabel: 'n', names: ['a', 'b'], bars: [{ label: '01', values: [3, 1] }, { label: '02', values: [0, 0] }] });
    expect(el.querySelectorAll('rect.bar')).toHaveLength(2);
    expect(el.querySelector('desc')!.textContent).toContain('4 in all');
  });
});
