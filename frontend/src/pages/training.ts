// Training: start a job of any kind (the form comes from the kind's
// parameter schema), and the list of jobs.
import { ApiProblem, type Job, type JobKindInfo, type ModelVersion, api, unwrap } from '../api/client';
import { h, uid, mount } from '../lib/dom';
import { dateTime, duration, pct, secondsBetween, shortId } from '../lib/format';
import { type Field, type RawValues, fieldsFromSchema, initialValues, label, serverErrors, validate } from '../lib/schemaForm';
import type { PageContext } from '../router';
import { badge, loading, pageHeader, problemBox, section, sortableTable } from '../ui';
import { every } from './util';

/** A random UUID (v4); works outside secure contexts too. */
export function uuid4(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Fraction done from a job's latest progress (`Job.progress`). */
export function jobFraction(j: Pick<Job, 'status' | 'progress' | 'params'>): number | null {
  if (j.status === 'succeeded') return 1;
  const p = j.progress as Record<string, unknown> | null | undefined;
  if (!p) return j.status === 'queued' ? 0 : null;
  const epochs = typeof p.epochs === 'number' ? p.epochs : typeof j.params?.epochs === 'number' ? (j.params.epochs as number) : null;
  const epoch = typeof p.epoch === 'number' ? p.epoch : null;
  if (epochs && epoch !== null) {
    const within = p.type === 'step' && typeof p.step === 'number' && typeof p.steps === 'number' && p.steps > 0 ? p.step / p.steps : 0;
    const done = p.type === 'epoch' ? epoch : epoch - 1 + within;
    return Math.max(0, Math.min(1, done / epochs));
  }
  return null;
}

function fieldInput(f: Field, value: string | boolean, ids: { input: string; hint: string; error: string }, models: ModelVersion[]): HTMLElement {
  const described = `${ids.hint} ${ids.error}`;
  if (f.type === 'boolean') {
    return h('input', { id: ids.input, name: f.name, type: 'checkbox', checked: value === true, 'aria-describedby': described });
  }
  if (f.type === 'enum') {
    return h(
      'select',
      { id: ids.input, name: f.name, 'aria-describedby': described, required: f.required },
      f.required ? null : h('option', { value: '' }, '(server default)'),
      f.options.map((o) => h('option', { value: o, selected: o === value }, o)),
    );
  }
  const numeric = f.type === 'integer' || f.type === 'number';
  const input = h('input', {
    id: ids.input,
    name: f.name,
    type: 'text',
    inputmode: f.type === 'integer' ? 'numeric' : f.type === 'number' ? 'decimal' : null,
    value: String(value),
    required: f.required,
    autocomplete: 'off',
    spellcheck: numeric ? 'false' : null,
    placeholder: f.example !== undefined && f.default === undefined ? `e.g. ${String(f.example)}` : null,
    'aria-describedby': described,
  });
  if (f.format === 'uuid' && /model/.test(f.name) && models.length > 0) {
    const listId = uid('models');
    input.setAttribute('list', listId);
    return h('span', null, input, h('datalist', { id: listId }, models.map((m) => h('option', { value: m.id }, `${m.kind} ${m.version} (${m.status})`))));
  }
  return input;
}

function hint(f: Field): string {
  const parts = [f.description];
  if (f.minimum !== null || f.maximum !== null) parts.push(`Range: ${f.minimum ?? '…'} to ${f.maximum ?? '…'}.`);
  if (f.default !== undefined && f.default !== null) parts.push(`Default: ${String(f.default)}.`);
  if (f.required) parts.push('Required.');
  return parts.filter(Boolean).join(' ');
}

/** The form of one kind; resolves nothing, navigates to the job on success. */
function jobForm(kind: JobKindInfo, models: ModelVersion[], ctx: PageContext): HTMLElement {
  const fields = fieldsFromSchema(kind.params_schema);
  const values: RawValues = initialValues(fields);
  const formError = h('p', { class: 'form-error', role: 'alert' });
  const serverProblem = h('div');
  const rows = new Map<string, { input: HTMLElement; error: HTMLElement; hintEl: HTMLElement }>();
  const fieldset = h('fieldset', null, h('legend', null, `Parameters of ${kind.name}`));
  if (fields.length === 0) fieldset.append(h('p', { class: 'muted' }, 'This kind takes no parameters.'));
  for (const f of fields) {
    const ids = { input: uid(`p-${f.name}`), hint: uid('hint'), error: uid('err') };
    const input = fieldInput(f, values[f.name] ?? '', ids, models);
    const error = h('p', { class: 'field-error', id: ids.error });
    const hintEl = h('p', { class: 'hint', id: ids.hint }, hint(f));
    rows.set(f.name, { input, error, hintEl });
    fieldset.append(h('div', { class: 'field' }, h('label', { for: ids.input }, label(f.name), f.required ? h('span', { 'aria-hidden': 'true' }, ' *') : null), input, hintEl, error));
  }
  const control = (name: string) => rows.get(name)!.input.querySelector('input,select') ?? rows.get(name)!.input;
  const read = (): RawValues => {
    const out: RawValues = {};
    for (const f of fields) {
      const el = control(f.name) as HTMLInputElement | HTMLSelectElement;
      out[f.name] = el instanceof HTMLInputElement && el.type === 'checkbox' ? el.checked : el.value;
    }
    return out;
  };
  const showErrors = (errors: Record<string, string>) => {
    let first: HTMLElement | null = null;
    for (const f of fields) {
      const row = rows.get(f.name)!;
      const msg = errors[f.name];
      row.error.textContent = msg ? `${label(f.name)} ${msg}.` : '';
      const el = control(f.name);
      if (msg) {
        el.setAttribute('aria-invalid', 'true');
        first ??= el as HTMLElement;
      } else el.removeAttribute('aria-invalid');
    }
    formError.textContent = errors[''] ?? '';
    serverProblem.replaceChildren();
    return first;
  };
  let idempotencyKey = uuid4();
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Start job');
  const form = h(
    'form',
    { class: 'job-form', novalidate: true, 'aria-label': `Start a ${kind.name} job` },
    h('p', { class: 'muted' }, kind.description),
    fieldset,
    formError,
    serverProblem,
    h(
      'div',
      { class: 'actions' },
      submit,
      h(
        'button',
        {
          type: 'button',
          onclick: () => {
            const init = initialValues(fields);
            for (const f of fields) {
              const el = control(f.name) as HTMLInputElement | HTMLSelectElement;
              if (el instanceof HTMLInputElement && el.type === 'checkbox') el.checked = init[f.name] === true;
              else el.value = String(init[f.name] ?? '');
            }
            showErrors({});
          },
        },
        'Reset to defaults',
      ),
    ),
  );
  // Edits make a new request: a fresh idempotency key.
  form.addEventListener('input', () => {
    idempotencyKey = uuid4();
  });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const checked = validate(fields, read());
    const first = showErrors(checked.errors);
    if (first) {
      formError.textContent = 'Please correct the highlighted fields.';
      first.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Starting…';
    try {
      const job = await unwrap(
        api.POST('/v1/jobs', {
          body: { kind: kind.name, params: checked.params },
          params: { header: { 'Idempotency-Key': idempotencyKey } },
        }),
      );
      ctx.navigate(`/training/jobs/${job.id}`);
    } catch (err) {
      submit.disabled = false;
      submit.textContent = 'Start job';
      if (err instanceof ApiProblem) {
        const mapped = serverErrors(fields, err.fieldErrors);
        const focus = showErrors(mapped);
        serverProblem.replaceChildren(problemBox(err, 'The server refused the job'));
        (focus ?? submit).focus();
      } else {
        serverProblem.replaceChildren(problemBox(err));
      }
    }
  });
  return form;
}

function jobsTable(jobs: Job[]): HTMLElement {
  return sortableTable<Job>({
    caption: 'Jobs, newest first',
    rows: jobs,
    empty: 'No jobs match.',
    columns: [
      { key: 'id', label: 'Job', value: (j) => j.id, render: (j) => h('a', { href: `/training/jobs/${j.id}` }, shortId(j.id)) },
      { key: 'kind', label: 'Kind', value: (j) => j.kind },
      { key: 'status', label: 'Status', value: (j) => j.status, render: (j) => badge(j.status) },
      {
        key: 'progress',
        label: 'Progress',
        numeric: true,
        first: 'descending',
        value: (j) => jobFraction(j),
        render: (j) => pct(jobFraction(j), 0),
      },
      { key: 'created', label: 'Created', value: (j) => j.created_at, render: (j) => dateTime(j.created_at), first: 'descending' },
      {
        key: 'ran',
        label: 'Ran for',
        numeric: true,
        value: (j) => (j.started_at ? secondsBetween(j.started_at, j.finished_at) : null),
        render: (j) => (j.started_at ? duration(secondsBetween(j.started_at, j.finished_at)) : '—'),
      },
      {
        key: 'model',
        label: 'Version',
        value: (j) => j.model_id ?? null,
        render: (j) => (j.model_id ? h('a', { href: `/models/${j.model_id}` }, shortId(j.model_id)) : '—'),
      },
    ],
  });
}

export async function trainingPage(ctx: PageContext): Promise<void> {
  const [kinds, models] = await Promise.all([
    unwrap(api.GET('/v1/job-kinds', { signal: ctx.signal })),
    unwrap(api.GET('/v1/models', { params: { query: { limit: 200 } }, signal: ctx.signal })).then((p) => p.items),
  ]);
  const available = kinds.filter((k) => k.available);
  const wanted = ctx.query.get('kind');
  const initial = available.find((k) => k.name === wanted) ?? available.find((k) => k.name === 'train_micron') ?? available[0];
  const formSlot = h('div');
  const select = h(
    'select',
    { id: 'job-kind', name: 'kind' },
    kinds.map((k) =>
      h('option', { value: k.name, disabled: !k.available, selected: k.name === initial?.name }, k.available ? k.name : `${k.name} (not available in this build)`),
    ),
  );
  const showForm = () => {
    const k = kinds.find((x) => x.name === select.value);
    formSlot.replaceChildren(k ? jobForm(k, models, ctx) : h('p', null, 'Choose a kind.'));
  };
  select.addEventListener('change', showForm);
  showForm();

  const statusFilter = h(
    'select',
    { id: 'job-status-filter' },
    h('option', { value: '' }, 'all'),
    ['queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => h('option', { value: s }, s)),
  );
  const list = h('div', null, loading());
  const loadJobs = async () => {
    const status = statusFilter.value as Job['status'] | '';
    const page = await unwrap(api.GET('/v1/jobs', { params: { query: { limit: 50, ...(status ? { status } : {}) } }, signal: ctx.signal }));
    if (!ctx.signal.aborted) list.replaceChildren(jobsTable(page.items));
  };
  statusFilter.addEventListener('change', () => void loadJobs().catch((e) => list.replaceChildren(problemBox(e))));

  mount(ctx.main, 
    pageHeader('Training'),
    h(
      'div',
      { class: 'grid-2 wide-left' },
      section('Start a job', h('div', { class: 'field' }, h('label', { for: 'job-kind' }, 'Kind'), select), formSlot),
      section('Jobs', h('div', { class: 'field inline' }, h('label', { for: 'job-status-filter' }, 'Status'), statusFilter), list),
    ),
  );
  await loadJobs().catch((e) => list.replaceChildren(problemBox(e)));
  every(ctx.signal, 5000, loadJobs);
}
