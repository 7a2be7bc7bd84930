// The API client: openapi-fetch over the types generated from
// openapi/openapi.json (src/api/schema.d.ts, written by `npm run gen`), so a
// change of the spec that breaks the dashboard fails its type check.
import createClient, { type Middleware } from 'openapi-fetch';
import type { components, paths } from './schema';

export type { paths } from './schema';
export type Schemas = components['schemas'];
export type Problem = Schemas['Problem'];
export type Job = Schemas['Job'];
export type JobEvent = Schemas['JobEvent'];
export type JobKindInfo = Schemas['JobKindInfo'];
export type Progress = Schemas['Progress'];
export type ModelVersion = Schemas['ModelVersion'];
export type ServedModel = Schemas['ServedModel'];
export type Comparison = Schemas['Comparison'];
export type Patient = Schemas['Patient'];
export type Visit = Schemas['Visit'];
export type AuditEntry = Schemas['AuditEntry'];
export type MedicationChange = Schemas['MedicationChange'];
export type DensityFields = Schemas['DensityFields'];
export type DensityModelSummary = Schemas['DensityModelSummary'];
export type DensityModelDetail = Schemas['DensityModelDetail'];
export type FeatureSpace = Schemas['FeatureSpace'];
export type LogDetMethod = Schemas['LogDetMethod'];
export type ScoreRequest = Schemas['ScoreRequest'];
export type ScoreResponse = Schemas['ScoreResponse'];
export type ScoredInput = Schemas['ScoredInput'];
export type ApiKey = Schemas['ApiKey'];
export type Role = Schemas['Role'];
export type PredictionStats = Schemas['PredictionStats'];

/** An error answer of the API (problem+json), or a failure to reach it. */
export class ApiProblem extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem,
  ) {
    super(problem.detail || problem.title);
    this.name = 'ApiProblem';
  }

  /** Field errors by JSON pointer. */
  get fieldErrors(): Schemas['FieldError'][] {
    return this.problem.errors ?? [];
  }
}

function isProblem(x: unknown): x is Problem {
  return typeof x === 'object' && x !== null && typeof (x as Problem).type === 'string' && typeof (x as Problem).status === 'number';
}

/** Turns any error body into a problem (the API's are problem+json already). */
export function toProblem(status: number, body: unknown): ApiProblem {
  if (isProblem(body)) return new ApiProblem(status, body);
  return new ApiProblem(status, {
    type: 'about:blank',
    title: `HTTP ${status}`,
    status,
    detail: typeof body === 'string' && body ? body.slice(0, 300) : `the server answered ${status}`,
  });
}

let apiKey: string | null = null;
let onUnauthorized: (() => void) | null = null;

/** The key sent as `Authorization: Bearer` (kept by the session module). */
export function setApiKey(key: string | null): void {
  apiKey = key;
}

export function currentApiKey(): string | null {
  return apiKey;
}

/** Called when the API refuses the key (401): the session ends. */
export function setUnauthorizedHandler(f: (() => void) | null): void {
  onUnauthorized = f;
}

const auth: Middleware = {
  onRequest({ request }) {
    if (apiKey && !request.headers.has('Authorization')) request.headers.set('Authorization', `Bearer ${apiKey}`);
    return request;
  },
  onResponse({ response }) {
    if (response.status === 401 && onUnauthorized) onUnauthorized();
    return response;
  },
};

export const api = createClient<paths>({ baseUrl: globalThis.location?.origin ?? '' });
api.use(auth);

interface Answer<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/**
 * The data of an answer, or throws its problem. Network failures become a
 * problem too (status 0), so callers handle one kind of error.
 */
export async function unwrap<T>(call: Promise<Answer<T>>): Promise<T> {
  let answer: Answer<T>;
  try {
    answer = await call;
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiProblem(0, {
      type: 'about:blank',
      title: 'Network error',
      status: 0,
      detail: `the server could not be reached (${e instanceof Error ? e.message : String(e)})`,
    });
  }
  if (answer.error !== undefined || !answer.response.ok) throw toProblem(answer.response.status, answer.error);
  return answer.data as T;
}
