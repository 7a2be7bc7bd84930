// Density: the histogram of a density model's training scores, with a
// chosen input's score marked.
//
// TODO(lead, after merging the density branch): the density endpoints
// (score, encode, invert, sample) are not in openapi.json yet. This page
// reads what exists today: density versions from GET /v1/models?kind=density,
// a histogram from the version's `metrics` (any of the keys in
// HISTOGRAM_KEYS, in a shape `fromJson` in lib/histogram.ts accepts), and a
// marked score from a patient's stored predictions (`prediction.density`).
// Once the density API lands: take the histogram from its endpoint if it has
// one (or add the key it writes to HISTOGRAM_KEYS), and let the "score a
// value" form call the scoring endpoint for a visit or vector.
import { type ModelVersion, api, unwrap } from '../api/client';
import { histogramChart } from '../charts/chart';
import { h, mount } from '../lib/dom';
import { dateTime, num, pct } from '../lib/format';
import { type Histogram, fromJson } from '../lib/histogram';
import type { PageContext } from '../router';
import { facts, pageHeader, problemBox, section } from '../ui';
import { densityCell } from './densityCell';
import { allPages } from './util';

/** Where a density version's metrics may hold its training-score histogram. */
export const HISTOGRAM_KEYS = ['train_scores', 'train_histogram', 'score_histogram', 'histogram'];

export function histogramOf(metrics: unknown): Histogram | null {
  if (!metrics || typeof metrics !== 'object') return null;
  const m = metrics as Record<string, unknown>;
  for (const k of HISTOGRAM_KEYS) {
    const h = fromJson(m[k]);
    if (h) return h;
  }
  return null;
}

export async function densityPage(ctx: PageContext): Promise<void> {
  const { items: versions } = await allPages((cursor) =>
    unwrap(api.GET('/v1/models', { params: { query: { kind: 'density', limit: 200, ...(cursor ? { cursor } : {}) } }, signal: ctx.signal })),
  );
  const wanted = ctx.query.get('model');
  const model: ModelVersion | undefined = versions.find((v) => v.id === wanted) ?? versions.find((v) => v.status === 'active') ?? versions[0];
  if (!model) {
    mount(ctx.main, 
      pageHeader('Density'),
      section(
        'No density model yet',
        h(
          'p',
          null,
          'Density models (invertible residual networks over a MICRON version’s health representation) say how typical a visit is of the training data. None is registered on this server yet: train one with the ',
          h('code', null, 'train_density'),
          ' job kind when it is available (',
          h('a', { href: '/training' }, 'Training'),
          '). Their histogram of training scores will show here, with a chosen visit’s score marked.',
        ),
      ),
    );
    return;
  }
  const histogram = histogramOf(model.metrics);
  const chartSlot = h('div');
  const markInfo = h('div', { 'aria-live': 'polite' });
  const draw = (marked: { value: number; label: string } | null) => {
    if (!histogram) {
      chartSlot.replaceChildren(h('p', { class: 'muted' }, 'This version reports no histogram of its training scores.'));
      return;
    }
    const { element, mark } = histogramChart({ title: `Training log-likelihoods of ${model.version}`, xLabel: 'log-likelihood (nats)', histogram, marked });
    chartSlot.replaceChildren(element);
    markInfo.replaceChildren(
      mark && marked
        ? h(
            'p',
            null,
            `${marked.label}: ${num(mark.value, 2)} nats, ${mark.position === 'inside' ? `above ${pct(mark.fractionBelow)} of the training scores` : mark.position === 'below' ? 'below every training score' : 'above every training score'}.`,
          )
        : '',
    );
  };

  // The input to mark: a patient's latest prediction carrying a density, or a typed score.
  const patientInput = h('input', { id: 'density-patient', type: 'search', autocomplete: 'off', spellcheck: 'false' });
  const valueInput = h('input', { id: 'density-value', type: 'text', inputmode: 'decimal', autocomplete: 'off' });
  const error = h('p', { class: 'field-error', role: 'alert' });
  const form = h(
    'form',
    { class: 'search-form', novalidate: true, 'aria-label': 'Input to mark' },
    h('div', { class: 'field' }, h('label', { for: 'density-patient' }, 'Patient external id'), patientInput),
    h('div', { class: 'field' }, h('label', { for: 'density-value' }, 'or a log-likelihood'), valueInput),
    h('button', { type: 'submit', class: 'primary' }, 'Mark'),
    error,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const typed = valueInput.value.trim();
    if (typed) {
      const v = Number(typed);
      if (!Number.isFinite(v)) {
        error.textContent = 'The log-likelihood must be a number.';
        return;
      }
      draw({ value: v, label: 'typed score' });
      return;
    }
    const ext = patientInput.value.trim();
    if (!ext) {
      error.textContent = 'Enter a patient’s external id or a score.';
      return;
    }
    try {
      const sources = [...new Set((await unwrap(api.GET('/v1/patients', { params: { query: { limit: 100 } }, signal: ctx.signal }))).items.map((p) => p.source))];
      let found: { log: number; label: string; cell: HTMLElement } | null = null;
      for (const source of sources) {
        const p = await unwrap(api.GET('/v1/patients/lookup', { params: { query: { external_id: ext, source } }, signal: ctx.signal })).catch(() => null);
        if (!p) continue;
        const preds = await unwrap(api.GET('/v1/patients/{patient_id}/predictions', { params: { path: { patient_id: p.id }, query: { limit: 500 } }, signal: ctx.signal }));
        const latest = [...preds.items].reverse().find((x) => x.prediction.density && x.prediction.density.model_id === model.id);
        if (latest?.prediction.density) {
          found = { log: latest.prediction.density.log_likelihood, label: `${ext}, visit ${latest.visit.seq}`, cell: densityCell(latest.prediction.density) };
        }
        break;
      }
      if (!found) {
        error.textContent = `No prediction of “${ext}” carries a density from this version.`;
        return;
      }
      draw({ value: found.log, label: found.label });
      markInfo.append(found.cell);
    } catch (err) {
      error.replaceChildren(problemBox(err));
    }
  });

  const picker = h(
    'select',
    { id: 'density-model' },
    versions.map((v) => h('option', { value: v.id, selected: v.id === model.id }, `${v.version} (${v.status})`)),
  );
  picker.addEventListener('change', () => ctx.navigate(`/density?model=${picker.value}`));
  mount(ctx.main, 
    pageHeader('Density'),
    section(
      'Version',
      h('div', { class: 'field inline' }, h('label', { for: 'density-model' }, 'Density version'), picker),
      facts([
        ['Status', model.status],
        ['Created', dateTime(model.created_at)],
        ['Over', model.parent_id ? h('a', { href: `/models/${model.parent_id}` }, 'its MICRON version') : '—'],
      ]),
    ),
    section('Training scores', chartSlot, markInfo),
    section('Mark an input', form),
  );
  draw(null);
}
