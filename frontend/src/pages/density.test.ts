// @vitest-environment happy-dom
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

// The API client keeps the fetch it was created with: replace it before the
// page (and the client) is imported. Each test sets the answers.
type Route = (req: { method: string; path: string; query: URLSearchParams; body: unknown }) => { status?: number; body: unknown } | undefined;
const server = vi.hoisted(() => {
  const state = {
    route: ((): undefined => undefined) as Route,
    requests: [] as { method: string; path: string; query: URLSearchParams; body: unknown }[],
  };
  globalThis.fetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
    const req = input instanceof Request ? input : new Request(input, init);
    const url = new URL(req.url);
    const text = req.method === 'GET' ? '' : await req.text();
    const r = { method: req.method, path: url.pathname, query: url.searchParams, body: text ? JSON.parse(text) : undefined };
    state.requests.push(r);
    const answer = state.route(r) ?? {
      status: 404,
      body: { type: '/problems/not-found', title: 'Not found', status: 404, detail: `no route for ${r.method} ${r.path}` },
    };
    const status = answer.status ?? 200;
    return new Response(JSON.stringify(answer.body), {
      status,
      headers: { 'Content-Type': status >= 400 ? 'application/problem+json' : 'application/json' },
    });
  }) as typeof fetch;
  return state;
});

import type { DensityModelDetail, DensityModelSummary } from '../api/client';
import type { PageContext } from '../router';
import {
  defaultVersion,
  densityPage,
  featureSpaceText,
  histogramOf,
  nllText,
  parseCodes,
  parseVector,
  versionFacts,
} from './density';
import { percentileText } from '../lib/format';

const MICRON_ID = '01a240a2-ea26-706b-9a90-4ea01e8febea';
const HEALTH: DensityModelSummary = {
  id: '01a240a3-1f45-7781-9ac2-b62cd9253e2d',
  version: '20261204T103921Z-d9253e2d',
  status: 'active',
  scope: `micron_health:${MICRON_ID}`,
  feature_space: { type: 'micron_health', micron_model_id: MICRON_ID, micron_version: 'shipped-1e8febea' },
  dim: 64,
  stale: false,
  test_nll: 9.8164,
  test_bpd: 0.2213,
  job_id: '01a240a3-1e9a-73c2-b507-df28a9460588',
  created_at: '2026-12-04T10:39:21Z',
  activated_at: '2026-12-04T10:40:00Z',
};
const VECTORS: DensityModelSummary = {
  id: '01a240a3-54fc-7707-aa98-bfeefeaf0e7b',
  version: '20261204T103935Z-feaf0e7b',
  status: 'ready',
  scope: 'vectors:01a240a3-540b-7089-a133-ab6d12ebc3d1',
  feature_space: { type: 'vectors', dataset_id: '01a240a3-540b-7089-a133-ab6d12ebc3d1', dataset_name: 'labs', columns: ['sodium', 'potassium'] },
  dim: 2,
  stale: false,
  test_nll: 1.967,
  test_bpd: 1.419,
  job_id: null,
  created_at: '2026-12-04T10:41:00Z',
};

function detailOf(s: DensityModelSummary): DensityModelDetail {
  return {
    ...s,
    architecture: { dim: s.dim, blocks: 2, hidden: 32, coeff: 0.9 },
    score_logdet: 'exact',
    in_distribution_percentile: 1,
    metrics: {
      val: { n: 70, nll: 21.2093, nll_se: 4.5433, bpd: 0.4781 },
      test: { n: 54, nll: 9.8164, nll_se: 3.8754, bpd: 0.2213 },
      gaussian_baseline_test: { n: 54, nll: 9.8168, nll_se: 3.87, bpd: 0.2213 },
      train_logdet: 'estimate',
      best_epoch: 2,
      spectral_norm: { max: 0.9, coeff: 0.9 },
      inversion: { inputs: 54, max_abs_error: 5.9e-10, all_converged: true },
      training_seconds: 0.08,
    },
    training_scores: {
      n: 172,
      mean: 14.17,
      quantiles: [
        { percentile: 1, log_likelihood: -5.36 },
        { percentile: 50, log_likelihood: 14.44 },
        { percentile: 99, log_likelihood: 33.88 },
      ],
      histogram: { edges: [-10, 0, 10, 20, 30, 40], counts: [5, 30, 60, 50, 27] },
      in_distribution_cut: -5.36,
    },
  };
}

const PATIENT = { id: '01a240a2-e9f4-75f2-baca-53173e4cb0ba', external_id: 'synth-000002', source: 'synth', visit_count: 2, created_at: '2026-12-04T10:39:08Z' };
const VISITS = [1, 2].map((seq) => ({
  id: `00000000-0000-4000-8000-00000000000${seq}`,
  patient_id: PATIENT.id,
  seq,
  occurred_at: '2026-01-0' + seq + 'T00:00:00Z',
  diagnoses: ['4019'],
  procedures: [],
  created_at: '2026-12-04T10:39:08Z',
}));

function scoreAnswer(s: DensityModelSummary, item: Record<string, unknown>) {
  return {
    model: { id: s.id, version: s.version, feature_space: s.feature_space, dim: s.dim, stale: s.stale },
    logdet: 'exact',
    in_distribution_percentile: 1,
    items: [item],
  };
}

/** The usual answers: both versions, their details, one patient with two visits. */
function api(overrides: Route = () => undefined): Route {
  return (r) => {
    const o = overrides(r);
    if (o) return o;
    if (r.method === 'GET' && r.path === '/v1/density/models') return { body: { items: [VECTORS, HEALTH] } };
    for (const s of [HEALTH, VECTORS]) {
      if (r.method === 'GET' && r.path === `/v1/density/models/${s.id}`) return { body: detailOf(s) };
    }
    if (r.method === 'GET' && r.path === '/v1/patients') return { body: { items: [PATIENT] } };
    if (r.method === 'GET' && r.path === '/v1/patients/lookup') {
      return r.query.get('external_id') === PATIENT.external_id && r.query.get('source') === 'synth'
        ? { body: PATIENT }
        : { status: 404, body: { type: '/problems/not-found', title: 'Not found', status: 404, detail: 'no such patient' } };
    }
    if (r.method === 'GET' && r.path === `/v1/patients/${PATIENT.id}/visits`) return { body: { items: VISITS } };
    return undefined;
  };
}

let main: HTMLElement;
let navigated: string[];

async function open(query = ''): Promise<void> {
  navigated = [];
  const ctx: PageContext = {
    main,
    signal: new AbortController().signal,
    params: [],
    query: new URLSearchParams(query),
    navigate: (to) => navigated.push(to),
  };
  await densityPage(ctx);
}

function byLabel<T extends HTMLElement>(label: string): T {
  const l = [...main.querySelectorAll('label')].find((x) => x.textContent === label);
  if (!l) throw new Error(`no label “${label}”`);
  const el = main.querySelector<T>(`#${l.getAttribute('for')}`);
  if (!el) throw new Error(`label “${label}” names no element`);
  return el;
}

function fact(name: string): string {
  const dt = [...main.querySelectorAll('dt')].find((x) => x.textContent === name);
  return dt?.nextElementSibling?.textContent ?? '';
}

async function submit(form: string): Promise<void> {
  const f = main.querySelector<HTMLFormElement>(`form[aria-label="${form}"]`)!;
  f.dispatchEvent(new Event('submit', { cancelable: true }));
  // Let the requests and their answers run: the form is busy until it has an answer.
  const busy = () => f.querySelector<HTMLButtonElement>('button[type=submit]')!.disabled || main.querySelector('.loading') !== null;
  for (let i = 0; i < 500 && busy(); i++) await new Promise((r) => setTimeout(r, 0));
  expect(busy()).toBe(false);
}

beforeEach(() => {
  server.requests.length = 0;
  server.route = api();
  main = document.createElement('main');
  document.body.replaceChildren(main);
});

afterEach(() => {
  document.body.replaceChildren();
});

describe('density helpers', () => {
  it('takes the histogram from the detail’s training scores, and only a drawable one', () => {
    expect(histogramOf(detailOf(HEALTH))).toEqual({ edges: [-10, 0, 10, 20, 30, 40], counts: [5, 30, 60, 50, 27] });
    const empty = detailOf(HEALTH);
    empty.training_scores.histogram = { edges: [0], counts: [] };
    expect(histogramOf(empty)).toBeNull();
    expect(histogramOf(null)).toBeNull();
  });

  it('reads typed vectors and codes', () => {
    expect(parseVector('1, -2.5,3e2 ; .5')).toEqual({ values: [1, -2.5, 300, 0.5] });
    expect(parseVector('  ')).toEqual({ error: 'Enter the vector’s values, separated by commas.' });
    expect(parseVector('1, two')).toEqual({ error: 'Value 2 (“two”) is not a number.' });
    expect(parseVector('0x10')).toHaveProperty('error');
    expect(parseVector('1e999')).toHaveProperty('error');
    expect(parseCodes(' 4019, 25000 4019;3893 ')).toEqual(['4019', '25000', '3893']);
    expect(parseCodes('')).toEqual([]);
  });

  it('words feature spaces, NLLs and percentiles', () => {
    expect(featureSpaceText(HEALTH.feature_space)).toBe('MICRON health representation (MICRON shipped-1e8febea)');
    expect(featureSpaceText(VECTORS.feature_space)).toBe('vectors of dataset “labs”');
    expect(featureSpaceText(null)).toBe('unknown');
    expect(nllText({ n: 70, nll: 21.2093, nll_se: 4.5433, bpd: 0.4781 })).toBe('21.209 ± 4.543 nats, 0.4781 bits/dim (70 inputs)');
    expect(nllText({ nll: 1.5 })).toBe('1.500 nats');
    expect(nllText({})).toBeNull();
    expect(nllText(undefined)).toBeNull();
    expect([1, 2, 3, 4, 11, 12, 13, 21, 22, 50, 100, 44.8, 44.767, 99.97, 0, 0.04, 111].map(percentileText)).toEqual([
      '1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '50th', '100th', '44.8th', '44.8th', '100th', '0th', '0th', '111th',
    ]);
    expect(percentileText(Number.NaN)).toBe('—');
  });

  it('shows the served version by default', () => {
    const staleActive = { ...HEALTH, id: 'a', stale: true };
    expect(defaultVersion([VECTORS, staleActive, HEALTH])?.id).toBe(HEALTH.id);
    expect(defaultVersion([staleActive, VECTORS])?.id).toBe('a');
    expect(defaultVersion([{ ...VECTORS, status: 'failed' }, VECTORS])?.id).toBe(VECTORS.id);
    expect(defaultVersion([])).toBeUndefined();
  });

  it('lists a version’s facts from the detail, and the summary’s without it', () => {
    main.append(...versionFacts(HEALTH, detailOf(HEALTH)).flatMap(([k, v]) => [Object.assign(document.createElement('dt'), { textContent: k }), wrap(v)]));
    expect(fact('MICRON version')).toBe('shipped-1e8febea');
    expect(main.querySelector(`a[href="/models/${MICRON_ID}"]`)).not.toBeNull();
    expect(fact('Dimension')).toBe('64');
    expect(fact('Stale')).toBe('no (its MICRON version is active)');
    expect(fact('Log-determinant')).toBe('exact when scoring, estimate in training');
    expect(fact('In-distribution cut')).toBe('at or above the 1st percentile of the training scores (log-likelihood ≥ -5.36 nats)');
    expect(fact('Validation NLL')).toBe('21.209 ± 4.543 nats, 0.4781 bits/dim (70 inputs)');
    expect(fact('Test NLL')).toBe('9.816 ± 3.875 nats, 0.2213 bits/dim (54 inputs)');
    expect(fact('Architecture')).toBe('2 residual blocks × 32 hidden units, spectral bound c = 0.90');
    expect(fact('Inversion check')).toBe('54 test inputs, largest error 5.90e-10, all converged');
    expect(fact('Training scores')).toBe('172 inputs, mean log-likelihood 14.17 nats');

    main.replaceChildren();
    const stale = { ...HEALTH, stale: true, stale_reason: 'MICRON shipped-1e8febea is not active' };
    main.append(...versionFacts(stale, null).flatMap(([k, v]) => [Object.assign(document.createElement('dt'), { textContent: k }), wrap(v)]));
    expect(fact('Stale')).toBe('stale MICRON shipped-1e8febea is not active: the server refuses to score with it.');
    expect(fact('Test NLL')).toBe('9.816 nats, 0.2213 bits/dim');
    expect(fact('Validation NLL')).toBe('—');

    main.replaceChildren();
    main.append(...versionFacts(VECTORS, null).flatMap(([k, v]) => [Object.assign(document.createElement('dt'), { textContent: k }), wrap(v)]));
    expect(fact('Dataset')).toBe('labs (sodium, potassium)');
    expect(fact('Stale')).toBe('no');
  });
});

function wrap(v: unknown): HTMLElement {
  const dd = document.createElement('dd');
  const add = (c: unknown): void => {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) c.forEach(add);
    else if (c instanceof Node) dd.append(c);
    else dd.append(String(c));
  };
  add(v);
  return dd;
}

describe('the density page', () => {
  it('asks for a density model when there is none', async () => {
    server.route = api((r) => (r.path === '/v1/density/models' ? { body: { items: [] } } : undefined));
    await open();
    expect(main.textContent).toContain('No density model yet');
    expect(main.querySelector('a[href="/training"]')).not.toBeNull();
  });

  it('shows the served version: its facts, the histogram from the detail endpoint and the quantiles', async () => {
    await open();
    expect(server.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['GET /v1/density/models', `GET /v1/density/models/${HEALTH.id}`]);
    expect(main.querySelector('h2')?.textContent).toBe(`Version ${HEALTH.version}`);
    expect(fact('MICRON version')).toBe('shipped-1e8febea');
    expect(fact('Dimension')).toBe('64');
    const figure = main.querySelector('figure')!;
    expect(figure.textContent).toContain(`Training log-likelihoods of ${HEALTH.version}`);
    expect(figure.querySelectorAll('rect.bar')).toHaveLength(5);
    expect(figure.querySelector('.marker')).toBeNull();
    const quantiles = main.querySelector('table.mini')!;
    expect(quantiles.querySelector('caption')?.textContent).toBe('Quantiles of the training log-likelihoods');
    expect(quantiles.querySelectorAll('tbody tr')).toHaveLength(3);
    // Both versions listed; the picker and the table lead to the other.
    expect(main.querySelectorAll('tr[data-version]')).toHaveLength(2);
    expect(main.querySelector(`tr[data-version="${HEALTH.version}"]`)?.getAttribute('aria-current')).toBe('true');
    const picker = byLabel<HTMLSelectElement>('Density version');
    expect(picker.value).toBe(HEALTH.id);
    picker.value = VECTORS.id;
    picker.dispatchEvent(new Event('change'));
    expect(navigated).toEqual([`/density?model=${VECTORS.id}`]);
    // Stored visit or codes for a micron_health model; no vector field.
    expect(byLabel('Patient external id')).toBeTruthy();
    expect(byLabel('Diagnosis codes')).toBeTruthy();
    expect(main.querySelector('#density-vector')).toBeNull();
  });

  it('scores a patient’s latest stored visit and marks it on the histogram', async () => {
    server.route = api((r) =>
      r.method === 'POST' && r.path === `/v1/density/models/${HEALTH.id}/score`
        ? { body: scoreAnswer(HEALTH, { log_likelihood: 12.659, bits_per_dim: -0.2854, percentile: 44.767, in_distribution: true, unknown_codes: 0 }) }
        : undefined,
    );
    await open();
    byLabel<HTMLInputElement>('Patient external id').value = PATIENT.external_id;
    await submit('Score an input');
    const post = server.requests.find((r) => r.method === 'POST')!;
    expect(post.body).toEqual({ visits: [{ patient_id: PATIENT.id, visit_id: VISITS[1]!.id }] });
    expect(fact('Input')).toBe('synth-000002, visit 2');
    expect(fact('Log-likelihood')).toBe('12.659 nats');
    expect(fact('Bits per dimension')).toBe('-0.2854');
    expect(fact('Percentile')).toBe('44.8th of the training scores');
    expect(fact('In distribution')).toBe('yes');
    expect(fact('Codes MICRON does not know')).toBe('0 (ignored)');
    expect(main.querySelector('.density-cell .badge')?.textContent).toBe('typical');
    const marker = main.querySelector('figure .marker')!;
    expect(Number(marker.getAttribute('data-value'))).toBeCloseTo(12.659);
    expect(marker.getAttribute('data-bin')).toBe('2');
    expect(main.querySelector('[data-testid=mark-info]')?.textContent).toBe(
      'synth-000002, visit 2: 12.66 nats, at the 44.8th percentile of the training scores (in distribution).',
    );
  });

  it('scores a chosen visit or inline codes with the chosen log-determinant, and says what is missing', async () => {
    server.route = api((r) =>
      r.method === 'POST'
        ? { body: { ...scoreAnswer(HEALTH, { log_likelihood: -40, bits_per_dim: 0.9, percentile: 0, in_distribution: false, std_error: 0.12, unknown_codes: 2 }), logdet: 'estimate', samples: 8 } }
        : undefined,
    );
    await open();
    const patient = byLabel<HTMLInputElement>('Patient external id');
    const visit = byLabel<HTMLInputElement>('Visit number');
    const error = () => main.querySelector('#density-score-error')?.textContent;

    await submit('Score an input');
    expect(error()).toBe('Enter a patient’s external id, or a visit’s diagnosis codes.');
    expect(patient.getAttribute('aria-invalid')).toBe('true');

    patient.value = 'nobody';
    await submit('Score an input');
    expect(error()).toBe('No patient with external id “nobody”.');

    patient.value = PATIENT.external_id;
    visit.value = '7';
    await submit('Score an input');
    expect(error()).toBe('synth-000002 has no visit 7 (their visits are numbered 1 to 2).');
    expect(visit.getAttribute('aria-invalid')).toBe('true');
    visit.value = '1.5';
    await submit('Score an input');
    expect(error()).toBe('The visit number must be a whole number from 1.');
    visit.value = '1';
    byLabel<HTMLSelectElement>('Log-determinant').value = 'estimate';
    await submit('Score an input');
    expect(error()).toBe('');
    expect(visit.hasAttribute('aria-invalid')).toBe(false);
    expect(server.requests.filter((r) => r.method === 'POST').at(-1)?.body).toEqual({
      visits: [{ patient_id: PATIENT.id, visit_id: VISITS[0]!.id }],
      logdet: 'estimate',
    });

    byLabel<HTMLInputElement>('Diagnosis codes').value = '4019, 25000';
    await submit('Score an input');
    expect(error()).toBe('Give either a stored visit or codes, not both.');
    patient.value = '';
    byLabel<HTMLInputElement>('Procedure codes').value = '3893';
    await submit('Score an input');
    expect(server.requests.filter((r) => r.method === 'POST').at(-1)?.body).toEqual({
      visits: [{ diagnoses: ['4019', '25000'], procedures: ['3893'] }],
      logdet: 'estimate',
    });
    expect(fact('Log-likelihood')).toBe('-40 ± 0.120 nats');
    expect(fact('In distribution')).toBe('no: below the 1st percentile of the training scores');
    expect(fact('Log-determinant used')).toBe('estimate (8 estimates averaged)');
    expect(fact('Codes MICRON does not know')).toBe('2 (ignored)');
    expect(main.querySelector('.density-cell .badge')?.textContent).toBe('unusual');
    expect(main.querySelector('[data-testid=mark-info]')?.textContent).toBe(
      'typed codes: -40 nats, at the 0th percentile of the training scores (out of distribution).',
    );
  });

  it('scores a typed vector with a vectors model, and shows the server’s problem', async () => {
    server.route = api((r) => {
      if (r.method !== 'POST') return undefined;
      const v = (r.body as { vectors: number[][] }).vectors[0]!;
      if (v.length !== 2) {
        return {
          status: 422,
          body: {
            type: '/problems/validation',
            title: 'Request validation failed',
            status: 422,
            detail: `1 invalid field: has ${v.length} values; the model's dimension is 2 at /vectors/0`,
            errors: [{ pointer: '/vectors/0', detail: `has ${v.length} values; the model's dimension is 2` }],
          },
        };
      }
      return { body: scoreAnswer(VECTORS, { log_likelihood: -1.045, bits_per_dim: 0.7538, percentile: 100, in_distribution: true }) };
    });
    await open(`model=${VECTORS.id}`);
    expect(main.querySelector('#density-patient')).toBeNull();
    const vector = byLabel<HTMLInputElement>('Vector (2 values)');
    expect(main.querySelector(`#${vector.getAttribute('aria-describedby')}`)?.textContent).toBe('Numbers separated by commas, in the order sodium, potassium.');
    expect(fact('Dataset')).toBe('labs (sodium, potassium)');

    vector.value = '1, x';
    await submit('Score an input');
    expect(main.querySelector('#density-score-error')?.textContent).toBe('Value 2 (“x”) is not a number.');
    expect(server.requests.some((r) => r.method === 'POST')).toBe(false);

    vector.value = '1, 2, 3';
    await submit('Score an input');
    const problem = main.querySelector('[data-testid=score-result] .problem')!;
    expect(problem.getAttribute('role')).toBe('alert');
    expect(problem.querySelector('strong')?.textContent).toBe('The server did not score it: Request validation failed');
    expect(problem.querySelector('li')?.textContent).toBe("/vectors/0 has 3 values; the model's dimension is 2");

    vector.value = '139, 4.1';
    await submit('Score an input');
    expect(server.requests.filter((r) => r.method === 'POST').at(-1)?.body).toEqual({ vectors: [[139, 4.1]] });
    expect(fact('Input')).toBe('typed vector');
    expect(fact('Percentile')).toBe('100th of the training scores');
    expect(main.querySelector('figure .marker')).not.toBeNull();
  });

  it('marks a typed log-likelihood', async () => {
    await open();
    const value = byLabel<HTMLInputElement>('Log-likelihood (nats)');
    value.value = 'abc';
    await submit('Mark a log-likelihood');
    expect(main.querySelector('#density-value-error')?.textContent).toBe('The log-likelihood must be a number.');
    expect(value.getAttribute('aria-invalid')).toBe('true');
    value.value = '-20';
    await submit('Mark a log-likelihood');
    expect(main.querySelector('#density-value-error')?.textContent).toBe('');
    expect(main.querySelector('figure .marker')?.getAttribute('data-bin')).toBe('-1');
    expect(main.querySelector('[data-testid=mark-info]')?.textContent).toBe('typed log-likelihood: -20 nats, below every training score.');
    value.value = '15';
    await submit('Mark a log-likelihood');
    expect(main.querySelector('[data-testid=mark-info]')?.textContent).toBe('typed log-likelihood: 15 nats, above 37.8 % of the training scores.');
  });

  it('shows the problem when the detail cannot be loaded, and the summary’s facts', async () => {
    server.route = api((r) =>
      r.path === `/v1/density/models/${HEALTH.id}`
        ? { status: 500, body: { type: '/problems/internal', title: 'Internal error', status: 500, detail: 'details are logged' } }
        : undefined,
    );
    await open();
    expect(main.querySelector('.problem strong')?.textContent).toBe('The training scores could not be loaded');
    expect(fact('Test NLL')).toBe('9.816 nats, 0.2213 bits/dim');
    expect(main.querySelector('figure')).toBeNull();
  });

  it('names a version that is not there, and does not load scores of a failed one', async () => {
    server.route = api((r) => (r.path === '/v1/density/models' ? { body: { items: [{ ...VECTORS, status: 'failed' }] } } : undefined));
    await open('model=nope');
    expect(main.textContent).toContain(`There is no density version nope; showing ${VECTORS.version}.`);
    expect(main.textContent).toContain('This version is failed: it has no training scores.');
    expect(server.requests.map((r) => r.path)).toEqual(['/v1/density/models']);
  });
});
