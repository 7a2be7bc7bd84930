// The dashboard in headless Chromium against a real medchange server and
// database (scripts/e2e starts both, with synthetic patients, the shipped
// MICRON model and an admin key): sign in, train, watch, activate, look at a
// patient, score inputs against density models, and the clinical view. Screenshots of every page go to
// frontend/test-artifacts/.
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import axe from 'axe-core';
import { type Browser, type BrowserContext, type Locator, type Page, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { percentileText } from '../src/lib/format';

const BASE = (process.env.MEDCHANGE_E2E_URL ?? '').replace(/\/$/, '');
const ADMIN = process.env.MEDCHANGE_E2E_ADMIN_KEY ?? '';
const CHROMIUM = process.env.MEDCHANGE_E2E_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'test-artifacts');

if (!BASE || !ADMIN) {
  throw new Error('MEDCHANGE_E2E_URL and MEDCHANGE_E2E_ADMIN_KEY must be set: run scripts/e2e, which starts a server');
}

async function apiCall<T>(method: string, path: string, key: string, body?: unknown): Promise<T> {
  const res = await fetch(`${BASE}${path}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : null,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

let browser: Browser;
let context: BrowserContext;
let page: Page;
const problems: string[] = [];
const foreignRequests: string[] = [];
let clinicalKey = '';
let clinicalKeyId = '';
let patient: { id: string; external_id: string; source: string; visit_count: number };
let newVersion = '';
let newModelId = '';

async function shot(name: string): Promise<void> {
  // Notifications float over the content; leave them out of the pictures.
  await page.evaluate(() => document.getElementById('notices')?.replaceChildren());
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** No WCAG 2 A/AA violations that axe-core can find on the current page. */
async function accessible(what: string): Promise<void> {
  await page.evaluate(axe.source);
  const violations = await page.evaluate(async () => {
    const result = await (window as unknown as { axe: typeof axe }).axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa'] } });
    return result.violations.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | ')}`);
  });
  expect(violations, `accessibility of ${what}`).toEqual([]);
}

async function heading(name: string | RegExp): Promise<void> {
  await page.getByRole('heading', { level: 1, name }).waitFor();
}

async function textOf(l: Locator): Promise<string> {
  return (await l.textContent()) ?? '';
}

/** Rows like a lab panel (sodium, potassium, creatinine), the same every run. */
function labRows(n: number): number[][] {
  let seed = 20261204;
  const uniform = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return (seed + 0.5) / 2147483648;
  };
  const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return Array.from({ length: n }, () => [140 + 3 * normal(), 4.2 + 0.4 * normal(), 1 + 0.2 * normal()].map((x) => Math.round(x * 100) / 100));
}

/** Waits for a job to succeed and returns the version it made. */
async function trainedModel(jobId: string): Promise<string> {
  const until = Date.now() + 45_000;
  for (;;) {
    const job = await apiCall<{ status: string; model_id: string | null; error: unknown }>('GET', `/v1/jobs/${jobId}`, ADMIN);
    if (job.status === 'succeeded' && job.model_id) return job.model_id;
    if (['failed', 'cancelled'].includes(job.status)) throw new Error(`job ${jobId} ${job.status}: ${JSON.stringify(job.error)}`);
    if (Date.now() > until) throw new Error(`job ${jobId} still ${job.status} after 45 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Debian's Chromium, offline and as root: no sandbox, no background traffic.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
  context = await browser.newContext({ viewport: { width: 1366, height: 768 }, locale: 'en-GB' });
  page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of (401|403|404|422)/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => {
    const url = new URL(r.url());
    if (url.origin !== BASE && url.protocol !== 'data:') foreignRequests.push(r.url());
  });

  const created = await apiCall<{ id: string; secret: string }>('POST', '/v1/api-keys', ADMIN, { name: 'e2e clinical', role: 'clinical' });
  clinicalKey = created.secret;
  clinicalKeyId = created.id;
  const list = await apiCall<{ items: { id: string; external_id: string; source: string; visit_count: number }[] }>('GET', '/v1/patients?limit=100', ADMIN);
  const p = list.items.find((x) => x.visit_count >= 3) ?? list.items.find((x) => x.visit_count >= 2);
  if (!p) throw new Error('the e2e database needs a patient with two visits or more');
  patient = p;
});

afterAll(async () => {
  await browser?.close();
});

describe('the dashboard', () => {
  it('asks for a key, refuses a wrong one, and opens the overview for an admin', async () => {
    await page.goto(`${BASE}/`);
    await heading('Sign in to medchange');
    expect(new URL(page.url()).pathname).toBe('/signin');
    await shot('signin');
    await accessible('the sign-in page');

    await page.getByLabel('API key').fill('mck_this-is-not-a-key');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'unknown or revoked' }).waitFor();

    await page.getByLabel('API key').fill(ADMIN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await heading('Overview');
    expect(await page.evaluate(() => sessionStorage.getItem('medchange.apiKey'))).toBe(ADMIN);
    await page.getByRole('list', { name: 'Service health' }).getByText('ok').waitFor();
    await page.getByText('ready (migration').waitFor();
    await page.getByRole('article', { name: 'Active micron model' }).waitFor();
    await page.locator('figure', { hasText: 'Predictions per hour' }).locator('svg').waitFor();
    await shot('overview');
    await accessible('the overview');
  });

  it('validates the training form, shows the server’s objections, and starts a small job', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Training' }).click();
    await heading('Training');
    await page.getByLabel('Kind').selectOption('train_micron');
    const epochs = page.getByLabel('Epochs');
    expect(await epochs.inputValue()).toBe('40'); // the schema's default
    expect(await page.getByLabel('Recipe').inputValue()).toBe('faithful');
    const before = (await apiCall<{ items: unknown[] }>('GET', '/v1/jobs?limit=500', ADMIN)).items.length;

    // Checked before it is sent.
    await epochs.fill('0');
    await page.getByRole('button', { name: 'Start job' }).click();
    await page.getByText('Epochs must be from 1 to 500.').waitFor();
    expect(await epochs.getAttribute('aria-invalid')).toBe('true');
    expect(await page.evaluate(() => document.activeElement?.id)).toBe(await epochs.getAttribute('id'));

    // Refused by the server (problem+json pointers shown at the field).
    await epochs.fill('3');
    await page.getByLabel('Recipe').fill('bogus');
    await page.getByRole('button', { name: 'Start job' }).click();
    await page.getByText('The server refused the job').waitFor();
    await page.getByText(/Recipe must be `faithful` or `minibatch`/).waitFor();
    expect((await apiCall<{ items: unknown[] }>('GET', '/v1/jobs?limit=500', ADMIN)).items.length).toBe(before);
    await shot('training-form-errors');

    await page.getByLabel('Recipe').fill('faithful');
    await page.getByRole('button', { name: 'Start job' }).click();
    await page.waitForURL(/\/training\/jobs\/[0-9a-f-]{36}$/);
    await heading('Job train_micron');

    // Live progress to the end.
    const bar = page.getByRole('progressbar', { name: 'Job progress' });
    await page.waitForFunction(() => document.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow') === '100', null, { timeout: 120_000 });
    expect(await bar.getAttribute('aria-valuetext')).toBe('100 %');
    expect(await textOf(page.getByTestId('percent'))).toBe('100 %');
    await page.locator('.header-extra .badge', { hasText: 'succeeded' }).waitFor();
    // Loss and validation curves were drawn from the stream.
    const loss = page.locator('figure', { hasText: 'Training loss' });
    expect(await loss.locator('path.line').count()).toBeGreaterThanOrEqual(1);
    const val = page.locator('figure', { hasText: 'Validation metrics' });
    expect(await val.locator('[data-series=val_jaccard] circle').count()).toBe(3);
    await page.getByRole('list', { name: 'Latest events, newest first' }).getByText('epoch 3/3').waitFor();
    // The stream's events are all there, in order.
    const link = page.getByTestId('new-version');
    newVersion = (await textOf(link)).trim();
    expect(newVersion).not.toBe('');
    const jobId = page.url().split('/').pop()!;
    const job = await apiCall<{ status: string; model_id: string }>('GET', `/v1/jobs/${jobId}`, ADMIN);
    expect(job.status).toBe('succeeded');
    newModelId = job.model_id;
    await shot('training-job');
    await accessible('the job page');
  });

  it('shows the new version, compares it and activates it after confirmation', async () => {
    await page.getByTestId('new-version').click();
    await heading(new RegExp(`micron ${newVersion}`));
    await page.locator('figure', { hasText: 'Training history: train_loss' }).waitFor();
    await shot('model');

    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Models' }).click();
    await heading('Models');
    const row = page.locator(`tr[data-version="${newVersion}"]`);
    await row.waitFor();
    expect(await row.getAttribute('data-status')).toBe('ready');

    // Sorting by keyboard.
    const sortButton = page.getByRole('button', { name: /Jaccard \(val\)/ }).first();
    await sortButton.focus();
    await page.keyboard.press('Enter');
    const th = page.locator('th', { has: sortButton });
    expect(await th.getAttribute('aria-sort')).toBe('descending');
    await page.keyboard.press('Enter');
    expect(await th.getAttribute('aria-sort')).toBe('ascending');

    // Side by side with the shipped version.
    await row.getByRole('checkbox').check();
    await page.locator('tr[data-status="active"]').first().getByRole('checkbox').check();
    await page.getByRole('button', { name: 'Compare selected' }).click();
    await heading('Compare versions');
    await page.getByRole('table', { name: 'Metrics of A and B' }).getByText('Jaccard (validation)').waitFor();
    await shot('compare');
    await accessible('the comparison');

    // Activate, with confirmation (cancel first: nothing happens).
    await page.goBack();
    await heading('Models');
    await page.locator(`tr[data-version="${newVersion}"]`).getByRole('button', { name: `Activate ${newVersion}` }).click();
    const dialog = page.getByRole('dialog', { name: `Activate micron version ${newVersion}?` });
    await dialog.waitFor();
    await shot('activate-confirmation');
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'detached' });
    expect((await apiCall<{ model_id: string }[]>('GET', '/v1/models/active', ADMIN)).some((m) => m.model_id === newModelId)).toBe(false);

    await page.locator(`tr[data-version="${newVersion}"]`).getByRole('button', { name: `Activate ${newVersion}` }).click();
    await dialog.getByRole('button', { name: 'Activate' }).click();
    await page.locator(`tr[data-version="${newVersion}"][data-status="active"]`).waitFor();
    await page.getByText(`micron version ${newVersion} is now active.`).waitFor();
    const active = await apiCall<{ kind: string; model_id: string }[]>('GET', '/v1/models/active', ADMIN);
    expect(active.find((m) => m.kind === 'micron')?.model_id).toBe(newModelId);

    // The shipped version, no longer served, can be retired (after confirmation).
    const shipped = page.locator('tr[data-status="ready"]', { hasText: 'shipped' });
    const shippedVersion = (await shipped.getAttribute('data-version'))!;
    await shipped.getByRole('button', { name: `Retire ${shippedVersion}` }).click();
    const retire = page.getByRole('dialog', { name: `Retire micron version ${shippedVersion}?` });
    await retire.getByRole('button', { name: 'Retire' }).click();
    await page.locator(`tr[data-version="${shippedVersion}"][data-status="retired"]`).waitFor();
    await shot('models');
    await accessible('the models page');
  });

  it('finds a patient by external id and shows their visits with the predictions', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Patients' }).click();
    await heading('Patients');
    await page.getByLabel('External id').fill('no-such-patient');
    await page.getByRole('button', { name: 'Find' }).click();
    await page.getByText('No patient with external id “no-such-patient”').waitFor();
    await page.getByLabel('External id').fill(patient.external_id); // no source: every source is tried
    await page.getByRole('button', { name: 'Find' }).click();
    await heading(`Patient ${patient.external_id}`);
    expect(page.url()).toBe(`${BASE}/patients/${patient.id}`);

    await page.getByRole('button', { name: 'Predict the latest visit' }).click();
    await page.getByText('Prediction stored.').waitFor();
    const latest = page.locator('li.visit').first();
    await latest.getByText(`by MICRON ${newVersion}`).waitFor(); // the version just activated answered
    for (const part of ['Added (', 'Removed (', 'Kept (', 'Recorded medications (', 'Agreement with the record']) {
      await latest.getByText(part).first().waitFor();
    }
    await latest.locator('.density-cell').waitFor();
    const stored = await apiCall<{ items: { prediction: { model: { id: string } } }[] }>('GET', `/v1/patients/${patient.id}/predictions`, ADMIN);
    expect(stored.items.at(-1)?.prediction.model.id).toBe(newModelId);
    await shot('patient');
    await accessible('the patient page');

    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Patients' }).click();
    await heading('Patients');
    await shot('patients');
    await accessible('the patients page');
  });

  it('follows a running job live and cancels it after confirmation', async () => {
    const job = await apiCall<{ id: string }>('POST', '/v1/jobs', ADMIN, { kind: 'train_micron', params: { epochs: 500 } });
    await page.goto(`${BASE}/training/jobs/${job.id}`);
    await heading('Job train_micron');
    await page.getByText('● live').waitFor();
    const progress = () =>
      page.evaluate(() => Number(document.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow') ?? Number.NaN));
    // The bar moves while the job runs (fed by the event stream, not by reloading).
    await page.waitForFunction(() => Number(document.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow')) >= 1, null, { timeout: 60_000 });
    const first = await progress();
    await page.waitForFunction((v) => Number(document.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow')) > v, first, { timeout: 60_000 });
    expect(await progress()).toBeLessThan(100);
    expect(await textOf(page.locator('.facts dd').nth(1))).toMatch(/^about .+ left$/); // the ETA

    await page.getByRole('button', { name: 'Cancel job' }).click();
    const dialog = page.getByRole('dialog', { name: 'Cancel this job?' });
    await dialog.getByRole('button', { name: 'Cancel job' }).click();
    await page.locator('.header-extra .badge', { hasText: 'cancelled' }).waitFor({ timeout: 60_000 });
    await page.getByText('stream ended').waitFor();
    expect((await apiCall<{ status: string }>('GET', `/v1/jobs/${job.id}`, ADMIN)).status).toBe('cancelled');
    expect(await progress()).toBeLessThan(100);
    await shot('training-job-cancelled');
  });

  it('sums the activity up on the overview', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Overview' }).click();
    await heading('Overview');
    const jobs = page.locator('section', { hasText: 'Job queue' });
    await jobs.getByText('cancelled').first().waitFor();
    expect(await jobs.locator('tbody tr').count()).toBeGreaterThanOrEqual(2); // the trained and the cancelled job
    const predictions = page.locator('section', { hasText: 'Predictions per hour' });
    await predictions.getByText(/^[1-9]\d* predictions?$/).waitFor();
    expect(await predictions.locator('rect.bar').count()).toBeGreaterThanOrEqual(1); // drawn with the numbers
    await page.getByRole('article', { name: 'Active micron model' }).getByRole('link', { name: newVersion }).waitFor();
    await shot('overview-after-activity');
  });

  it('trains density models and scores a visit and a vector against their training scores', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Density' }).click();
    await heading('Density');
    await page.getByRole('heading', { level: 2, name: 'No density model yet' }).waitFor();

    // Two small density models through the API: one over the active MICRON
    // version's health representation, one on an uploaded dataset.
    const small = { epochs: 2, blocks: 2, hidden: 16, batch_size: 64, warmup_steps: 5 };
    const healthJob = await apiCall<{ id: string }>('POST', '/v1/jobs', ADMIN, { kind: 'train_density', params: { feature_space: 'micron_health', ...small } });
    const dataset = await apiCall<{ id: string; dim: number }>('POST', '/v1/density/datasets', ADMIN, {
      name: 'e2e labs',
      columns: ['sodium', 'potassium', 'creatinine'],
      rows: labRows(200),
    });
    expect(dataset.dim).toBe(3);
    const vectorsJob = await apiCall<{ id: string }>('POST', '/v1/jobs', ADMIN, {
      kind: 'train_density',
      params: { feature_space: 'vectors', dataset_id: dataset.id, ...small },
    });
    const healthId = await trainedModel(healthJob.id);
    const vectorsId = await trainedModel(vectorsJob.id);
    const health = await apiCall<{ version: string; stale: boolean; feature_space: { micron_version: string } }>('GET', `/v1/density/models/${healthId}`, ADMIN);
    expect(health.feature_space.micron_version).toBe(newVersion);
    expect(health.stale).toBe(false);

    // The micron_health version: its facts and the histogram of its training scores.
    await page.reload();
    await heading('Density');
    await page.getByLabel('Density version').selectOption(healthId);
    await page.waitForURL(`${BASE}/density?model=${healthId}`);
    await page.getByRole('heading', { level: 2, name: `Version ${health.version}` }).waitFor();
    const fact = (name: string) => page.locator('dl.facts dt', { hasText: new RegExp(`^${name}$`) }).locator('xpath=following-sibling::dd[1]');
    expect(await textOf(fact('MICRON version'))).toBe(newVersion);
    expect(await textOf(fact('Dimension'))).toBe('64');
    expect(await textOf(fact('Stale'))).toBe('no (its MICRON version is active)');
    expect(await textOf(fact('Validation NLL'))).toMatch(/^-?[\d.]+ ± [\d.]+ nats, -?[\d.]+ bits\/dim \(\d+ inputs\)$/);
    const chart = page.locator('figure', { hasText: `Training log-likelihoods of ${health.version}` });
    expect(await chart.locator('rect.bar').count()).toBe(30);
    await page.getByRole('table', { name: 'Quantiles of the training log-likelihoods' }).getByText('99th').waitFor();

    // A patient's latest stored visit, scored and marked.
    await page.getByLabel('Patient external id').fill(patient.external_id);
    await page.getByRole('button', { name: 'Score', exact: true }).click();
    const result = page.getByTestId('score-result');
    await result.locator('dl.facts').waitFor();
    const visitLabel = `${patient.external_id}, visit ${patient.visit_count}`;
    expect(await textOf(fact('Input'))).toBe(visitLabel);
    for (const name of ['Log-likelihood', 'Bits per dimension', 'Percentile', 'In distribution']) expect(await textOf(fact(name))).not.toBe('');
    const visits = await apiCall<{ items: { id: string; seq: number }[] }>('GET', `/v1/patients/${patient.id}/visits?limit=500`, ADMIN);
    const latest = visits.items.find((v) => v.seq === patient.visit_count)!;
    const scored = await apiCall<{ items: { log_likelihood: number; percentile: number }[] }>('POST', `/v1/density/models/${healthId}/score`, ADMIN, {
      visits: [{ patient_id: patient.id, visit_id: latest.id }],
    });
    const marker = chart.locator('.marker');
    expect(Number(await marker.getAttribute('data-value'))).toBeCloseTo(scored.items[0]!.log_likelihood, 6);
    expect(await textOf(page.getByTestId('mark-info'))).toContain(`${visitLabel}: `);
    expect(await textOf(fact('Percentile'))).toBe(`${percentileText(scored.items[0]!.percentile)} of the training scores`);
    await shot('density');
    await accessible('the density page with a scored visit');

    // A typed log-likelihood below every training score.
    await page.getByLabel('Log-likelihood (nats)').fill('-100000');
    await page.getByRole('button', { name: 'Mark' }).click();
    await page.getByTestId('mark-info').getByText('typed log-likelihood: ').waitFor();
    expect(await textOf(page.getByTestId('mark-info'))).toContain('below every training score');

    // The vectors version, from the list: the server's objection to a wrong
    // vector is shown as a problem; a right one is scored.
    await page.getByRole('table', { name: 'Density versions' }).locator(`a[href="/density?model=${vectorsId}"]`).click();
    await page.waitForURL(`${BASE}/density?model=${vectorsId}`);
    await page.getByText('e2e labs (sodium, potassium, creatinine)').waitFor();
    const vector = page.getByLabel('Vector (3 values)');
    await vector.fill('140, 4.2');
    await page.getByRole('button', { name: 'Score', exact: true }).click();
    const problem = result.locator('.problem');
    await problem.waitFor();
    expect(await textOf(problem)).toContain('/vectors/0');
    expect(await textOf(problem)).toContain("the model's dimension is 3");
    await vector.fill('200, 9, 5');
    await page.getByRole('button', { name: 'Score', exact: true }).click();
    await result.locator('dl.facts').waitFor();
    expect(await textOf(fact('Input'))).toBe('typed vector');
    expect(await textOf(fact('In distribution'))).toMatch(/^no: below the /); // far outside the data
    expect(await result.locator('.problem').count()).toBe(0);
    await page.locator('figure .marker').waitFor();
    await shot('density-vectors');
    await accessible('the density page of a vectors model');
  });

  it('loads client-side routes directly (the server answers index.html)', async () => {
    await page.goto(`${BASE}/models/compare`);
    await heading('Compare versions');
    await page.goto(`${BASE}/training`);
    await heading('Training');
    await page.goto(`${BASE}/no/such/page`);
    await heading('Page not found');
  });

  it('signs out, forgetting the key, and shows clinical keys the patients only', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await heading('Sign in to medchange');
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);

    await page.getByLabel('API key').fill(clinicalKey);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await heading('Patients');
    const nav = page.getByRole('navigation', { name: 'Main' });
    expect(await nav.getByRole('link').allTextContents()).toEqual(['Patients']);
    await page.goto(`${BASE}/models`);
    await heading('Patients');
    expect(new URL(page.url()).pathname).toBe('/patients');
    await page.goto(`${BASE}/patients/${patient.id}`);
    await heading(`Patient ${patient.external_id}`);
    await page.locator('li.visit').first().getByText('Kept (').waitFor();
    await shot('clinical-patient');

    // A key revoked meanwhile ends the session at the next call.
    await apiCall('DELETE', `/v1/api-keys/${clinicalKeyId}`, ADMIN);
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Patients' }).click();
    await heading('Sign in to medchange');
    await page.getByText('The API key was refused (revoked?). Please sign in again.').waitFor();
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    expect(new URL(page.url()).searchParams.get('next')).toBe('/patients');
  });

  it('loaded nothing from other origins and broke no rule of its content security policy', () => {
    expect(foreignRequests).toEqual([]);
    expect(problems).toEqual([]);
  });
});
