// Patients: search by external id, the list, and one patient's timeline of
// visits with the predictions made for them.
import { ApiProblem, type AuditEntry, type Patient, type Visit, api, unwrap } from '../api/client';
import { type Child, h, mount } from '../lib/dom';
import { date, dateTime, num, pct } from '../lib/format';
import { type Change, type TimelineRow, confirmed, timeline } from '../lib/timeline';
import type { PageContext } from '../router';
import { chips, facts, notify, pageHeader, problemBox, section, sortableTable } from '../ui';
import { densityCell } from './densityCell';
import { allPages } from './util';

/**
 * A patient by external id. Without a source, tries the server's default and
 * then every source in `known`; null when none has it.
 */
export async function lookupPatient(externalId: string, source: string, known: string[], signal: AbortSignal): Promise<Patient | null> {
  const sources = source ? [source] : ['', ...known.filter((s) => s !== 'default')];
  for (const s of sources) {
    try {
      return await unwrap(
        api.GET('/v1/patients/lookup', { params: { query: { external_id: externalId, ...(s ? { source: s } : {}) } }, signal }),
      );
    } catch (e) {
      if (!(e instanceof ApiProblem && e.status === 404)) throw e;
    }
  }
  return null;
}

export async function patientsPage(ctx: PageContext): Promise<void> {
  const cursor = ctx.query.get('cursor') ?? undefined;
  const page = await unwrap(api.GET('/v1/patients', { params: { query: { limit: 25, ...(cursor ? { cursor } : {}) } }, signal: ctx.signal }));
  const sources = [...new Set(page.items.map((p) => p.source))].sort();
  const idInput = h('input', { id: 'external-id', name: 'external_id', type: 'search', required: true, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'search-error' });
  const sourceInput = h('input', { id: 'source', name: 'source', type: 'text', list: 'sources', autocomplete: 'off', placeholder: 'any', 'aria-describedby': 'source-hint' });
  const error = h('p', { id: 'search-error', class: 'field-error', role: 'alert' });
  const form = h(
    'form',
    { class: 'search-form', role: 'search', 'aria-label': 'Find a patient', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'external-id' }, 'External id'), idInput),
    h(
      'div',
      { class: 'field' },
      h('label', { for: 'source' }, 'Source system'),
      sourceInput,
      h('datalist', { id: 'sources' }, sources.map((s) => h('option', { value: s }))),
    ),
    h('button', { type: 'submit', class: 'primary' }, 'Find'),
    h('p', { id: 'source-hint', class: 'hint' }, 'Leave the source empty to search every source seen.'),
    error,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const id = idInput.value.trim();
    if (!id) {
      error.textContent = 'Enter an external id.';
      idInput.setAttribute('aria-invalid', 'true');
      idInput.focus();
      return;
    }
    idInput.removeAttribute('aria-invalid');
    try {
      const p = await lookupPatient(id, sourceInput.value.trim(), sources, ctx.signal);
      if (p) ctx.navigate(`/patients/${p.id}`);
      else {
        error.textContent = `No patient with external id “${id}”${sourceInput.value.trim() ? ` in ${sourceInput.value.trim()}` : ''}.`;
        idInput.focus();
      }
    } catch (err) {
      error.textContent = err instanceof Error ? err.message : String(err);
    }
  });
  const table = sortableTable<Patient>({
    caption: 'Patients',
    rows: page.items,
    empty: 'No patients stored yet.',
    columns: [
      { key: 'external', label: 'External id', value: (p) => p.external_id, render: (p) => h('a', { href: `/patients/${p.id}` }, p.external_id) },
      { key: 'source', label: 'Source', value: (p) => p.source },
      { key: 'visits', label: 'Visits', numeric: true, first: 'descending', value: (p) => p.visit_count },
      { key: 'created', label: 'Stored', value: (p) => p.created_at, render: (p) => dateTime(p.created_at), first: 'descending' },
    ],
  });
  mount(ctx.main, 
    pageHeader('Patients'),
    section('Find a patient', form),
    section(
      'Patients',
      table,
      h(
        'nav',
        { class: 'pager', 'aria-label': 'Pages of patients' },
        cursor ? h('a', { href: '/patients' }, 'First page') : null,
        page.next_cursor ? h('a', { href: `/patients?cursor=${encodeURIComponent(page.next_cursor)}` }, 'Next page') : null,
      ),
    ),
  );
  idInput.focus();
}

function changeList(title: string, change: Change, items: { code: string; probability: number }[], recorded: string[] | null | undefined): HTMLElement {
  const symbol = change === 'added' ? '+' : change === 'removed' ? '−' : '=';
  return h(
    'div',
    { class: `change change-${change}` },
    h('h4', null, `${title} (${items.length})`),
    items.length === 0
      ? h('p', { class: 'muted' }, 'none')
      : h(
          'ul',
          { class: 'chips' },
          items.map((c) => {
            const ok = confirmed(change, c.code, recorded);
            const verdict = ok === null ? '' : ok ? 'matches the record' : 'differs from the record';
            return h(
              'li',
              { class: `chip ${change} ${ok === null ? '' : ok ? 'confirmed' : 'contradicted'}`, title: `${c.code}: probability ${num(c.probability)}${verdict ? `, ${verdict}` : ''}` },
              h('span', { 'aria-hidden': 'true' }, `${symbol} `),
              c.code,
              h('span', { class: 'prob' }, ` ${pct(c.probability, 0)}`),
              ok === null ? null : h('span', { class: 'mark', 'aria-hidden': 'true' }, ok ? ' ✓' : ' ✗'),
              verdict ? h('span', { class: 'sr-only' }, `, ${verdict}`) : null,
            );
          }),
        ),
  );
}

function codes(title: string, list: string[] | null | undefined, highlight?: Set<string>, collapse = true): HTMLElement {
  if (list === null || list === undefined) return h('div', { class: 'codes' }, h('h4', null, title), h('p', { class: 'muted' }, 'not recorded'));
  const body =
    list.length === 0
      ? h('p', { class: 'muted' }, 'none')
      : h(
          'ul',
          { class: 'chips' },
          list.map((c) => h('li', { class: `chip ${highlight?.has(c) ? 'predicted' : ''}` }, c, highlight?.has(c) ? h('span', { class: 'sr-only' }, ' (predicted)') : null)),
        );
  return h('div', { class: 'codes' }, h('h4', null, `${title} (${list.length})`), collapse && list.length > 16 ? h('details', null, h('summary', null, `show ${list.length} codes`), body) : body);
}

function predictionBlock(row: TimelineRow): Child {
  const e: AuditEntry | null = row.prediction;
  if (!e) {
    return h('p', { class: 'muted' }, row.visit.seq === 1 ? 'No prediction: MICRON predicts from the second visit on.' : 'No prediction stored for this visit.');
  }
  const p = e.prediction;
  const recorded = row.visit.medications;
  const a = row.agreement;
  return h(
    'div',
    { class: 'prediction' },
    h(
      'p',
      { class: 'muted small' },
      `Predicted ${dateTime(e.created_at)} by MICRON ${p.model.version}; from the ${p.previous.source} previous set`,
      row.earlier > 0 ? ` (${row.earlier} earlier prediction${row.earlier > 1 ? 's' : ''} for this visit)` : '',
      '.',
    ),
    h(
      'div',
      { class: 'changes' },
      changeList('Added', 'added', p.added, recorded),
      changeList('Removed', 'removed', p.removed, recorded),
      changeList('Kept', 'kept', p.kept, recorded),
    ),
    a
      ? h(
          'p',
          { class: 'agreement' },
          h('strong', null, `Agreement with the record: Jaccard ${num(a.jaccard)}`),
          `; predicted but not recorded: ${a.predictedOnly.join(', ') || 'none'}; recorded but not predicted: ${a.recordedOnly.join(', ') || 'none'}.`,
        )
      : h('p', { class: 'muted' }, 'The medications of this visit are not recorded, so the prediction cannot be checked.'),
    p.interaction_warning
      ? h(
          'div',
          { class: 'warning', role: 'note', 'aria-label': 'Interaction warning' },
          h('strong', null, `⚠ ${p.interactions.length} interacting pair${p.interactions.length === 1 ? '' : 's'} in the predicted set: `),
          p.interactions.map((i) => `${i.a} + ${i.b}`).join(', '),
        )
      : h('p', { class: 'muted small' }, 'No known interactions in the predicted set.'),
    densityCell(p.density),
  );
}

function visitItem(row: TimelineRow): HTMLElement {
  const v: Visit = row.visit;
  const predicted = row.prediction ? new Set(row.prediction.prediction.predicted) : undefined;
  return h(
    'li',
    { class: 'visit', 'data-seq': v.seq },
    h('h3', null, `Visit ${v.seq}`, h('span', { class: 'muted' }, ` · ${date(v.occurred_at)}`)),
    h('div', { class: 'visit-grid' }, codes('Diagnoses', v.diagnoses), codes('Procedures', v.procedures), codes('Recorded medications', v.medications, predicted, false)),
    predictionBlock(row),
  );
}

export async function patientPage(ctx: PageContext): Promise<void> {
  const id = ctx.params[0]!;
  const path = { patient_id: id };
  const [patient, visits, predictions] = await Promise.all([
    unwrap(api.GET('/v1/patients/{patient_id}', { params: { path }, signal: ctx.signal })),
    allPages((cursor) => unwrap(api.GET('/v1/patients/{patient_id}/visits', { params: { path, query: { limit: 500, ...(cursor ? { cursor } : {}) } }, signal: ctx.signal }))),
    allPages((cursor) => unwrap(api.GET('/v1/patients/{patient_id}/predictions', { params: { path, query: { limit: 500, ...(cursor ? { cursor } : {}) } }, signal: ctx.signal }))),
  ]);
  const rows = timeline(visits.items, predictions.items);
  const predictBtn = h('button', { type: 'button', class: 'primary' }, 'Predict the latest visit');
  const status = h('div', { 'aria-live': 'polite' });
  predictBtn.addEventListener('click', async () => {
    predictBtn.disabled = true;
    status.replaceChildren();
    try {
      await unwrap(api.POST('/v1/patients/{patient_id}/predictions', { params: { path } }));
      notify('Prediction stored.');
      await patientPage(ctx);
    } catch (e) {
      predictBtn.disabled = false;
      status.replaceChildren(problemBox(e, 'No prediction'));
    }
  });
  const withWarnings = rows.filter((r) => r.prediction?.prediction.interaction_warning).length;
  mount(ctx.main, 
    pageHeader(`Patient ${patient.external_id}`, h('div', { class: 'header-extra' }, predictBtn)),
    status,
    section(
      'Patient',
      facts([
        ['Source', patient.source],
        ['Visits', String(patient.visit_count)],
        ['Predictions', `${predictions.items.length}${withWarnings ? `, ${withWarnings} visit${withWarnings === 1 ? '' : 's'} with interaction warnings` : ''}`],
        ['Stored', dateTime(patient.created_at)],
        ['Id', h('code', null, patient.id)],
      ]),
      visits.truncated ? h('p', { class: 'muted' }, 'Only the first visits are shown.') : null,
    ),
    section(
      'Timeline (newest first)',
      h('p', { class: 'muted small legend-line' }, '+ added, − removed, = kept; ✓ the record agrees, ✗ it does not; highlighted recorded medications were predicted.'),
      rows.length === 0 ? h('p', { class: 'muted' }, 'No visits stored.') : h('ol', { class: 'timeline', 'aria-label': 'Visits, newest first' }, rows.map(visitItem)),
    ),
  );
}
