// Density: the density versions (GET /v1/density/models), one version's
// facts and the histogram of its training inputs' log-likelihoods (GET
// /v1/density/models/{id}), and an input scored by it (POST
// /v1/density/models/{id}/score: a stored visit or a visit's codes for
// `micron_health` models, a typed vector for `vectors` models) with its
// position marked on the histogram. A typed log-likelihood can be marked too.
import {
  ApiProblem,
  type DensityModelDetail,
  type DensityModelSummary,
  type FeatureSpace,
  type LogDetMethod,
  type ScoreRequest,
  type ScoreResponse,
  api,
  unwrap,
} from '../api/client';
import { histogramChart } from '../charts/chart';
import { type Child, h, mount } from '../lib/dom';
import { dateTime, duration, num, pct, percentileText, shortId } from '../lib/format';
import { type Histogram, fromJson } from '../lib/histogram';
import type { PageContext } from '../router';
import { badge, facts, pageHeader, problemBox, section, sortableTable } from '../ui';
import { densityCell } from './densityCell';
import { lookupPatient } from './patients';
import { allPages } from './util';

/** The histogram of a version's training scores, when it can be drawn. */
export function histogramOf(detail: Pick<DensityModelDetail, 'training_scores'> | null | undefined): Histogram | null {
  return fromJson(detail?.training_scores?.histogram);
}

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i;

/** A typed vector: numbers separated by commas (or spaces, or semicolons). */
export function parseVector(text: string): { values: number[] } | { error: string } {
  const parts = text.split(/[\s,;]+/).filter((p) => p !== '');
  if (parts.length === 0) return { error: 'Enter the vector’s values, separated by commas.' };
  const values: number[] = [];
  for (const [i, p] of parts.entries()) {
    const v = Number(p);
    if (!NUMBER.test(p) || !Number.isFinite(v)) return { error: `Value ${i + 1} (“${p}”) is not a number.` };
    values.push(v);
  }
  return { values };
}

/** Codes typed in a field: separated by commas or spaces, each once. */
export function parseCodes(text: string): string[] {
  return [...new Set(text.split(/[\s,;]+/).filter((c) => c !== ''))];
}

/** The feature space in words. */
export function featureSpaceText(fs: FeatureSpace | null | undefined): string {
  if (!fs) return 'unknown';
  if (fs.type === 'micron_health') return `MICRON health representation (MICRON ${fs.micron_version})`;
  return `vectors of dataset “${fs.dataset_name}”`;
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function at(x: unknown, ...keys: string[]): unknown {
  let v = x;
  for (const k of keys) v = isObject(v) ? v[k] : undefined;
  return v;
}

function numAt(x: unknown, ...keys: string[]): number | null {
  const v = at(x, ...keys);
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** `{nll, nll_se, bpd, n}` (a split's negative log-likelihood) in words. */
export function nllText(x: unknown): string | null {
  const nll = numAt(x, 'nll');
  if (nll === null) return null;
  const se = numAt(x, 'nll_se');
  const bpd = numAt(x, 'bpd');
  const n = numAt(x, 'n');
  return (
    `${num(nll, 3)}${se !== null ? ` ± ${num(se, 3)}` : ''} nats` +
    (bpd !== null ? `, ${num(bpd, 4)} bits/dim` : '') +
    (n !== null ? ` (${num(n)} inputs)` : '')
  );
}

function staleText(m: DensityModelSummary): Child {
  if (m.stale) return [badge('stale'), ` ${m.stale_reason ?? 'its MICRON version is not the active one'}: the server refuses to score with it.`];
  return m.feature_space?.type === 'micron_health' ? 'no (its MICRON version is active)' : 'no';
}

/** What an admin wants to know about a density version (the detail adds the scores and metrics). */
export function versionFacts(m: DensityModelSummary, d: DensityModelDetail | null): [string, Child][] {
  const fs = m.feature_space;
  const rows: [string, Child][] = [['Status', badge(m.status)]];
  if (fs?.type === 'micron_health') {
    rows.push(
      ['Feature space', 'MICRON’s health representation h of a visit'],
      ['MICRON version', h('a', { href: `/models/${fs.micron_model_id}` }, fs.micron_version)],
    );
  } else if (fs?.type === 'vectors') {
    rows.push(
      ['Feature space', 'vectors (rows of an uploaded dataset)'],
      ['Dataset', [fs.dataset_name, fs.columns?.length ? h('span', { class: 'muted' }, ` (${fs.columns.join(', ')})`) : null]],
    );
  } else {
    rows.push(['Feature space', 'unknown']);
  }
  rows.push(['Dimension', num(m.dim)], ['Stale', staleText(m)], ['Serving scope', h('code', null, m.scope)]);
  if (d) {
    const a = d.architecture;
    const blocks = numAt(a, 'blocks');
    const hidden = numAt(a, 'hidden');
    const coeff = numAt(a, 'coeff');
    if (blocks !== null || hidden !== null) {
      rows.push(['Architecture', `${num(blocks)} residual blocks × ${num(hidden)} hidden units${coeff !== null ? `, spectral bound c = ${num(coeff, 2)}` : ''}`]);
    }
    const trainLogdet = at(d.metrics, 'train_logdet');
    rows.push([
      'Log-determinant',
      `${d.score_logdet} when scoring${typeof trainLogdet === 'string' ? `, ${trainLogdet} in training` : ''}`,
    ]);
    const ts = d.training_scores;
    rows.push([
      'In-distribution cut',
      `at or above the ${percentileText(d.in_distribution_percentile)} percentile of the training scores (log-likelihood ≥ ${num(ts.in_distribution_cut, 2)} nats)`,
    ]);
    rows.push(['Training scores', `${num(ts.n)} inputs, mean log-likelihood ${num(ts.mean, 2)} nats`]);
  }
  const metrics = d?.metrics;
  rows.push(['Validation NLL', nllText(at(metrics, 'val')) ?? '—']);
  rows.push([
    'Test NLL',
    nllText(at(metrics, 'test')) ?? (m.test_nll !== null && m.test_nll !== undefined ? `${num(m.test_nll, 3)} nats, ${num(m.test_bpd, 4)} bits/dim` : '—'),
  ]);
  const gaussian = nllText(at(metrics, 'gaussian_baseline_test'));
  if (gaussian) rows.push(['Gaussian baseline (test)', gaussian]);
  if (d) {
    const best = numAt(metrics, 'best_epoch');
    if (best !== null) rows.push(['Best epoch', num(best)]);
    const sigma = numAt(metrics, 'spectral_norm', 'max');
    if (sigma !== null) rows.push(['Largest singular value', `${num(sigma, 4)} (bound ${num(numAt(metrics, 'spectral_norm', 'coeff'), 2)})`]);
    const inputs = numAt(metrics, 'inversion', 'inputs');
    if (inputs !== null) {
      const ok = at(metrics, 'inversion', 'all_converged');
      rows.push([
        'Inversion check',
        `${num(inputs)} test inputs, largest error ${num(numAt(metrics, 'inversion', 'max_abs_error'))}, ${ok === true ? 'all converged' : ok === false ? 'not all converged' : 'convergence not reported'}`,
      ]);
    }
    const secs = numAt(metrics, 'training_seconds');
    if (secs !== null) rows.push(['Training time', duration(secs)]);
  }
  rows.push(['Created', dateTime(m.created_at)], ['Activated', dateTime(m.activated_at)]);
  rows.push(['Trained by', m.job_id ? h('a', { href: `/training/jobs/${m.job_id}` }, `job ${shortId(m.job_id)}`) : '—']);
  rows.push(['In the registry', h('a', { href: `/models/${m.id}` }, `${m.version} (activate, retire, artifacts)`)]);
  return rows;
}

/** The version shown when none is asked for: the served one, else the newest usable one. */
export function defaultVersion(versions: DensityModelSummary[]): DensityModelSummary | undefined {
  return (
    versions.find((v) => v.status === 'active' && !v.stale) ??
    versions.find((v) => v.status === 'active') ??
    versions.find((v) => v.status === 'ready') ??
    versions[0]
  );
}

function quantileTable(d: DensityModelDetail): HTMLElement | null {
  const q = d.training_scores.quantiles;
  if (q.length === 0) return null;
  return h(
    'table',
    { class: 'mini quantiles' },
    h('caption', null, 'Quantiles of the training log-likelihoods'),
    h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Percentile'), h('th', { scope: 'col', class: 'num' }, 'Log-likelihood (nats)'))),
    h(
      'tbody',
      null,
      q.map((x) => h('tr', null, h('th', { scope: 'row' }, percentileText(x.percentile)), h('td', { class: 'num' }, num(x.log_likelihood, 2)))),
    ),
  );
}

interface Marked {
  value: number;
  label: string;
  /** The server's percentile of a scored input (a typed value is placed by the histogram). */
  percentile?: number;
  inDistribution?: boolean;
}

function field(id: string, label: string, input: HTMLElement, hint?: string): HTMLElement {
  if (hint) input.setAttribute('aria-describedby', `${id}-hint`);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('p', { id: `${id}-hint`, class: 'hint' }, hint) : null);
}

export async function densityPage(ctx: PageContext): Promise<void> {
  const { items: versions, truncated } = await allPages((cursor) =>
    unwrap(api.GET('/v1/density/models', { params: { query: { limit: 200, ...(cursor ? { cursor } : {}) } }, signal: ctx.signal })),
  );
  const wanted = ctx.query.get('model');
  const model = versions.find((v) => v.id === wanted) ?? defaultVersion(versions);
  if (!model) {
    mount(
      ctx.main,
      pageHeader('Density'),
      section(
        'No density model yet',
        h(
          'p',
          null,
          'Density models (invertible residual networks) say how typical an input is of the data they were trained on: MICRON’s health representation of a visit, or the rows of an uploaded dataset. None is registered on this server yet: train one with the ',
          h('code', null, 'train_density'),
          ' job kind (',
          h('a', { href: '/training' }, 'Training'),
          '). Its histogram of training scores will show here, and inputs can be scored against it.',
        ),
      ),
    );
    return;
  }

  // The detail (training score distribution, metrics) needs the version's artifact.
  let detail: DensityModelDetail | null = null;
  let detailProblem: HTMLElement | null = null;
  if (model.status === 'training' || model.status === 'failed') {
    detailProblem = h('p', { class: 'muted' }, `This version is ${model.status}: it has no training scores.`);
  } else {
    try {
      detail = await unwrap(api.GET('/v1/density/models/{model_id}', { params: { path: { model_id: model.id } }, signal: ctx.signal }));
    } catch (e) {
      if (ctx.signal.aborted) throw e;
      detailProblem = problemBox(e, 'The training scores could not be loaded');
    }
  }
  const histogram = histogramOf(detail);

  const chartSlot = h('div');
  const markInfo = h('div', { 'aria-live': 'polite', 'data-testid': 'mark-info' });
  const draw = (marked: Marked | null) => {
    if (!histogram) {
      chartSlot.replaceChildren(detailProblem ?? h('p', { class: 'muted' }, 'This version reports no histogram of its training scores.'));
      return;
    }
    const { element, mark } = histogramChart({
      title: `Training log-likelihoods of ${model.version}`,
      xLabel: 'log-likelihood (nats)',
      histogram,
      marked: marked ? { value: marked.value, label: marked.label } : null,
    });
    chartSlot.replaceChildren(element);
    let text = '';
    if (mark && marked) {
      const where =
        marked.percentile !== undefined
          ? `at the ${percentileText(marked.percentile)} percentile of the training scores${marked.inDistribution === false ? ' (out of distribution)' : marked.inDistribution ? ' (in distribution)' : ''}`
          : mark.position === 'inside'
            ? `above ${pct(mark.fractionBelow)} of the training scores`
            : mark.position === 'below'
              ? 'below every training score'
              : 'above every training score';
      text = `${marked.label}: ${num(mark.value, 2)} nats, ${where}.`;
    }
    markInfo.replaceChildren(text ? h('p', null, text) : '');
  };

  // Scoring an input with this version.
  const space = model.feature_space?.type;
  const dim = model.dim ?? null;
  const logdet = h(
    'select',
    { id: 'density-logdet' },
    h('option', { value: '' }, `the model’s default${detail ? ` (${detail.score_logdet})` : ''}`),
    h('option', { value: 'exact' }, 'exact'),
    h('option', { value: 'estimate' }, 'estimate (with a standard error)'),
  );
  const patientInput = h('input', { id: 'density-patient', type: 'search', autocomplete: 'off', spellcheck: 'false' });
  const visitInput = h('input', { id: 'density-visit', type: 'text', inputmode: 'numeric', autocomplete: 'off' });
  const diagnosesInput = h('input', { id: 'density-diagnoses', type: 'text', autocomplete: 'off', spellcheck: 'false' });
  const proceduresInput = h('input', { id: 'density-procedures', type: 'text', autocomplete: 'off', spellcheck: 'false' });
  const columns = model.feature_space?.type === 'vectors' ? (model.feature_space.columns ?? null) : null;
  const vectorInput = h('input', { id: 'density-vector', type: 'text', inputmode: 'decimal', autocomplete: 'off', spellcheck: 'false' });
  const scoreError = h('p', { id: 'density-score-error', class: 'field-error', role: 'alert' });
  const scoreResult = h('div', { class: 'score-result', 'aria-live': 'polite', 'data-testid': 'score-result' });
  const scoreButton = h('button', { type: 'submit', class: 'primary' }, 'Score');
  const inputs =
    space === 'vectors'
      ? [
          field(
            'density-vector',
            dim !== null ? `Vector (${dim} value${dim === 1 ? '' : 's'})` : 'Vector',
            vectorInput,
            `Numbers separated by commas${columns?.length ? `, in the order ${columns.join(', ')}` : ''}.`,
          ),
        ]
      : [
          h(
            'fieldset',
            null,
            h('legend', null, 'A stored visit'),
            field('density-patient', 'Patient external id', patientInput),
            field('density-visit', 'Visit number', visitInput, '1 is the first visit; leave empty for the latest.'),
          ),
          h(
            'fieldset',
            null,
            h('legend', null, 'Or a visit’s codes'),
            field('density-diagnoses', 'Diagnosis codes', diagnosesInput, 'Separated by commas or spaces; codes MICRON does not know are ignored and counted.'),
            field('density-procedures', 'Procedure codes', proceduresInput),
          ),
        ];
  const scoreForm = h(
    'form',
    { novalidate: true, 'aria-label': 'Score an input', 'aria-describedby': 'density-score-error' },
    ...inputs,
    field('density-logdet', 'Log-determinant', logdet),
    h('div', { class: 'actions' }, scoreButton),
    scoreError,
  );
  const fail = (message: string, input?: HTMLInputElement) => {
    scoreError.textContent = message;
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
  };

  /** The request for the form's input and how to name it, or null after telling what is wrong. */
  const buildRequest = async (): Promise<{ body: ScoreRequest; label: string } | null> => {
    const method = logdet.value ? { logdet: logdet.value as LogDetMethod } : {};
    if (space === 'vectors') {
      const parsed = parseVector(vectorInput.value);
      if ('error' in parsed) {
        fail(parsed.error, vectorInput);
        return null;
      }
      return { body: { vectors: [parsed.values], ...method }, label: 'typed vector' };
    }
    const ext = patientInput.value.trim();
    const diagnoses = parseCodes(diagnosesInput.value);
    const procedures = parseCodes(proceduresInput.value);
    if (ext && (diagnoses.length || procedures.length)) {
      fail('Give either a stored visit or codes, not both.', patientInput);
      return null;
    }
    if (!ext) {
      if (!diagnoses.length && !procedures.length) {
        fail('Enter a patient’s external id, or a visit’s diagnosis codes.', patientInput);
        return null;
      }
      return { body: { visits: [{ diagnoses, procedures }], ...method }, label: 'typed codes' };
    }
    const seqText = visitInput.value.trim();
    const seq = seqText ? Number(seqText) : null;
    if (seq !== null && !(Number.isInteger(seq) && seq >= 1)) {
      fail('The visit number must be a whole number from 1.', visitInput);
      return null;
    }
    const known = [...new Set((await unwrap(api.GET('/v1/patients', { params: { query: { limit: 100 } }, signal: ctx.signal }))).items.map((p) => p.source))];
    const patient = await lookupPatient(ext, '', known, ctx.signal);
    if (!patient) {
      fail(`No patient with external id “${ext}”.`, patientInput);
      return null;
    }
    const visits = await allPages((cursor) =>
      unwrap(
        api.GET('/v1/patients/{patient_id}/visits', {
          params: { path: { patient_id: patient.id }, query: { limit: 500, ...(cursor ? { cursor } : {}) } },
          signal: ctx.signal,
        }),
      ),
    );
    const latest = visits.items.reduce<(typeof visits.items)[number] | null>((a, v) => (!a || v.seq > a.seq ? v : a), null);
    const visit = seq === null ? latest : visits.items.find((v) => v.seq === seq);
    if (!visit) {
      fail(
        latest ? `${ext} has no visit ${seq} (their visits are numbered 1 to ${latest.seq}).` : `${ext} has no visits stored.`,
        latest ? visitInput : patientInput,
      );
      return null;
    }
    return { body: { visits: [{ patient_id: patient.id, visit_id: visit.id }], ...method }, label: `${ext}, visit ${visit.seq}` };
  };

  const showScore = (res: ScoreResponse, label: string) => {
    const item = res.items[0];
    if (!item) {
      scoreResult.replaceChildren(h('p', { class: 'muted' }, 'The server returned no score.'));
      return;
    }
    draw({ value: item.log_likelihood, label, percentile: item.percentile, inDistribution: item.in_distribution });
    const pairs: [string, Child][] = [
      ['Input', label],
      [
        'Log-likelihood',
        `${num(item.log_likelihood, 3)}${item.std_error !== null && item.std_error !== undefined ? ` ± ${num(item.std_error, 3)}` : ''} nats`,
      ],
      ['Bits per dimension', num(item.bits_per_dim, 4)],
      ['Percentile', `${percentileText(item.percentile)} of the training scores`],
      [
        'In distribution',
        item.in_distribution ? 'yes' : `no: below the ${percentileText(res.in_distribution_percentile)} percentile of the training scores`,
      ],
      ['Log-determinant used', `${res.logdet}${res.samples ? ` (${res.samples} estimates averaged)` : ''}`],
    ];
    if (item.unknown_codes !== null && item.unknown_codes !== undefined) {
      pairs.push(['Codes MICRON does not know', `${num(item.unknown_codes)} (ignored)`]);
    }
    scoreResult.replaceChildren(
      h('h3', null, 'Score'),
      densityCell({ ...item, model_id: res.model.id, model_version: res.model.version }),
      facts(pairs),
    );
  };

  scoreForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    scoreError.textContent = '';
    for (const el of scoreForm.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    scoreButton.disabled = true;
    scoreResult.replaceChildren(h('p', { class: 'loading', role: 'status' }, 'Scoring…'));
    try {
      const req = await buildRequest();
      if (!req) {
        scoreResult.replaceChildren();
        return;
      }
      const res = await unwrap(api.POST('/v1/density/models/{model_id}/score', { params: { path: { model_id: model.id } }, body: req.body, signal: ctx.signal }));
      showScore(res, req.label);
    } catch (err) {
      if (ctx.signal.aborted) return;
      scoreResult.replaceChildren(problemBox(err, err instanceof ApiProblem && err.status > 0 ? `The server did not score it: ${err.problem.title}` : undefined));
    } finally {
      scoreButton.disabled = false;
    }
  });

  // Marking a typed log-likelihood.
  const valueInput = h('input', { id: 'density-value', type: 'text', inputmode: 'decimal', autocomplete: 'off' });
  const valueError = h('p', { id: 'density-value-error', class: 'field-error', role: 'alert' });
  valueInput.setAttribute('aria-describedby', 'density-value-error');
  const markForm = h(
    'form',
    { class: 'search-form', novalidate: true, 'aria-label': 'Mark a log-likelihood' },
    h('div', { class: 'field' }, h('label', { for: 'density-value' }, 'Log-likelihood (nats)'), valueInput),
    h('button', { type: 'submit' }, 'Mark'),
    valueError,
  );
  markForm.addEventListener('submit', (e) => {
    e.preventDefault();
    valueError.textContent = '';
    valueInput.removeAttribute('aria-invalid');
    const typed = valueInput.value.trim();
    const v = Number(typed);
    if (!typed || !NUMBER.test(typed) || !Number.isFinite(v)) {
      valueError.textContent = 'The log-likelihood must be a number.';
      valueInput.setAttribute('aria-invalid', 'true');
      valueInput.focus();
      return;
    }
    draw({ value: v, label: 'typed log-likelihood' });
  });

  const picker = h(
    'select',
    { id: 'density-model' },
    versions.map((v) =>
      h('option', { value: v.id, selected: v.id === model.id }, `${v.version} (${v.status}${v.stale ? ', stale' : ''}; ${featureSpaceText(v.feature_space)})`),
    ),
  );
  picker.addEventListener('change', () => ctx.navigate(`/density?model=${picker.value}`));
  const table = sortableTable<DensityModelSummary>({
    caption: 'Density versions',
    rows: versions,
    initial: { column: 'created', dir: 'descending' },
    rowAttrs: (v) => ({ 'data-version': v.version, 'data-status': v.status, ...(v.id === model.id ? { 'aria-current': 'true' } : {}) }),
    columns: [
      {
        key: 'version',
        label: 'Version',
        value: (v) => v.version,
        render: (v) => h('a', { href: `/density?model=${v.id}`, 'aria-current': v.id === model.id ? 'page' : null }, v.version),
      },
      { key: 'status', label: 'Status', value: (v) => v.status, render: (v) => badge(v.status) },
      { key: 'space', label: 'Feature space', value: (v) => featureSpaceText(v.feature_space) },
      { key: 'dim', label: 'Dimension', numeric: true, value: (v) => v.dim ?? null },
      { key: 'nll', label: 'Test NLL (nats)', numeric: true, value: (v) => v.test_nll ?? null, render: (v) => num(v.test_nll, 3) },
      { key: 'bpd', label: 'Test bits/dim', numeric: true, value: (v) => v.test_bpd ?? null, render: (v) => num(v.test_bpd, 4) },
      { key: 'stale', label: 'Stale', value: (v) => (v.stale ? 'yes' : 'no') },
      { key: 'created', label: 'Created', value: (v) => v.created_at, render: (v) => dateTime(v.created_at), first: 'descending' },
    ],
  });

  mount(
    ctx.main,
    pageHeader('Density', h('div', { class: 'header-extra' }, h('div', { class: 'field inline' }, h('label', { for: 'density-model' }, 'Density version'), picker))),
    wanted && wanted !== model.id ? h('p', { class: 'muted', role: 'status' }, `There is no density version ${wanted}; showing ${model.version}.`) : null,
    h(
      'div',
      { class: 'grid-2' },
      section(`Version ${model.version}`, facts(versionFacts(model, detail))),
      section(
        'Training scores',
        chartSlot,
        markInfo,
        detail ? quantileTable(detail) : null,
      ),
    ),
    h(
      'div',
      { class: 'grid-2' },
      section(
        'Score an input',
        model.stale ? h('p', { class: 'muted' }, 'This version is stale: the server will refuse to score with it.') : null,
        scoreForm,
        scoreResult,
      ),
      section('Mark a log-likelihood', markForm),
    ),
    section(`Versions (${versions.length})`, table, truncated ? h('p', { class: 'muted' }, 'Only the newest versions are listed.') : null),
  );
  draw(null);
}
