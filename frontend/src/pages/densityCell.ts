// How typical a visit is of the training data (`prediction.density`).
import type { DensityFields } from '../api/client';
import { h } from '../lib/dom';
import { num } from '../lib/format';

export function densityCell(d: DensityFields | null | undefined): HTMLElement {
  if (!d) {
    return h('div', { class: 'density-cell muted' }, 'Density: none (no density model over this MICRON version is active).');
  }
  const p = Math.max(0, Math.min(100, d.percentile));
  const fill = h('div', { class: 'meter-fill' });
  fill.style.width = `${p}%`;
  return h(
    'div',
    { class: 'density-cell' },
    h('span', { class: `badge ${d.in_distribution ? 'status-ready' : 'status-failed'}` }, d.in_distribution ? 'typical' : 'unusual'),
    h(
      'div',
      {
        class: 'meter',
        role: 'meter',
        'aria-label': 'Density percentile among the training data',
        'aria-valuemin': 0,
        'aria-valuemax': 100,
        'aria-valuenow': Number(p.toFixed(1)),
        'aria-valuetext': `${p.toFixed(1)}th percentile`,
      },
      fill,
    ),
    h('span', null, `${p.toFixed(1)}th percentile`),
    h('span', { class: 'muted small' }, ` log p ${num(d.log_likelihood, 2)} nats, ${num(d.bits_per_dim, 3)} bits/dim, model ${d.model_version}`),
  );
}
