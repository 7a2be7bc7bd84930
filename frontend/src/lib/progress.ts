// A job's progress, folded from its events (`status`, `step`, `epoch`,
// `log`): fraction done, ETA, loss and validation-metric curves.
import type { Job, JobEvent } from '../api/client';
import type { Point } from './metrics';

export type JobStatus = Job['status'];

export interface LogLine {
  id: number;
  at: string;
  kind: string;
  text: string;
}

export interface ProgressState {
  status: JobStatus;
  attempt: number;
  /** Epochs planned (from the parameters or the epoch events), when known. */
  epochs: number | null;
  epoch: number | null;
  step: number | null;
  steps: number | null;
  /** 0 to 1; null when the job gives no way to tell. */
  fraction: number | null;
  etaSecs: number | null;
  throughput: number | null;
  /** Loss per step (x: epochs done, fractional) and per epoch. */
  stepLoss: Point[];
  epochLoss: Point[];
  /** Validation metrics per epoch, by name. */
  metrics: Map<string, Point[]>;
  log: LogLine[];
  lastEventId: number;
  modelId: string | null;
  version: string | null;
  error: string | null;
}

const TERMINAL: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled']);
const LOG_LIMIT = 200;

export function isTerminal(status: string): boolean {
  return TERMINAL.has(status);
}

function num(x: unknown): number | null {
  return typeof x === 'number' && Number.isFinite(x) ? x : null;
}

/** The starting state for a job (its parameters may say how many epochs). */
export function initial(job: Pick<Job, 'status' | 'params' | 'attempts'>): ProgressState {
  return {
    status: job.status,
    attempt: job.attempts,
    epochs: num((job.params as Record<string, unknown> | undefined)?.epochs),
    epoch: null,
    step: null,
    steps: null,
    fraction: job.status === 'succeeded' ? 1 : null,
    etaSecs: null,
    throughput: null,
    stepLoss: [],
    epochLoss: [],
    metrics: new Map(),
    log: [],
    lastEventId: 0,
    modelId: null,
    version: null,
    error: null,
  };
}

function pushLog(s: ProgressState, ev: JobEvent, text: string): void {
  s.log.push({ id: ev.id, at: ev.created_at, kind: ev.kind, text });
  if (s.log.length > LOG_LIMIT) s.log.splice(0, s.log.length - LOG_LIMIT);
}

// Numbers in an epoch's metrics that are not validation metrics.
const NOT_VALIDATION = new Set(['best_epoch', 'train_loss', 'loss', 'epoch', 'epochs']);

/** Applies one event (in id order; repeated or older events are ignored). */
export function apply(s: ProgressState, ev: JobEvent): ProgressState {
  if (ev.id <= s.lastEventId) return s;
  s.lastEventId = ev.id;
  const d = ev.data;
  switch (ev.kind) {
    case 'status': {
      const status = String(d.status ?? '');
      if (status === 'running' && ev.attempt > s.attempt && s.attempt > 0) {
        // A retry starts over: its curves replace the crashed attempt's.
        s.stepLoss = [];
        s.epochLoss = [];
        s.metrics = new Map();
        s.fraction = 0;
      }
      if (ev.attempt > s.attempt) s.attempt = ev.attempt;
      if (status === 'queued' || status === 'running' || isTerminal(status)) s.status = status as JobStatus;
      if (status === 'succeeded') {
        s.fraction = 1;
        s.etaSecs = 0;
      }
      if (typeof d.model_id === 'string') s.modelId = d.model_id;
      if (typeof d.version === 'string') s.version = d.version;
      if (typeof d.error === 'string') s.error = d.error;
      const extra = typeof d.error === 'string' ? `: ${d.error}` : typeof d.reason === 'string' ? `: ${d.reason}` : '';
      const what = d.cancel_requested === true ? 'cancellation requested' : status;
      pushLog(s, ev, `${what}${ev.attempt > 0 ? ` (attempt ${ev.attempt})` : ''}${extra}`);
      break;
    }
    case 'step': {
      const epoch = num(d.epoch);
      const step = num(d.step);
      const steps = num(d.steps);
      s.epoch = epoch;
      s.step = step;
      s.steps = steps;
      s.etaSecs = num(d.eta_secs);
      s.throughput = num(d.throughput) ?? s.throughput;
      const within = step !== null && steps ? Math.min(1, step / steps) : null;
      const x = epoch !== null ? epoch - 1 + (within ?? 0) : null;
      const loss = num(d.loss);
      if (x !== null && loss !== null) s.stepLoss.push({ x, y: loss });
      if (s.epochs && x !== null) s.fraction = Math.max(s.fraction ?? 0, Math.min(1, x / s.epochs));
      else if (!s.epochs && within !== null) s.fraction = within;
      break;
    }
    case 'epoch': {
      const epoch = num(d.epoch);
      s.epochs = num(d.epochs) ?? s.epochs;
      s.epoch = epoch;
      if (s.steps !== null) s.step = s.steps; // the epoch's last steps may not have been stored
      s.etaSecs = num(d.eta_secs) ?? s.etaSecs;
      const metrics = (d.metrics ?? {}) as Record<string, unknown>;
      const loss = num(d.loss) ?? num(metrics.train_loss) ?? num(metrics.loss);
      if (epoch !== null) {
        if (loss !== null) s.epochLoss.push({ x: epoch, y: loss });
        for (const [k, v] of Object.entries(metrics)) {
          const y = num(v);
          if (y === null || NOT_VALIDATION.has(k)) continue;
          const pts = s.metrics.get(k) ?? [];
          pts.push({ x: epoch, y });
          s.metrics.set(k, pts);
        }
        if (s.epochs) s.fraction = Math.max(s.fraction ?? 0, Math.min(1, epoch / s.epochs));
      }
      const summary = Object.entries(metrics)
        .filter(([, v]) => num(v) !== null)
        .map(([k, v]) => `${k} ${(v as number).toFixed(4).replace(/\.?0+$/, '')}`)
        .join(', ');
      pushLog(s, ev, `epoch ${epoch ?? '?'}${s.epochs ? `/${s.epochs}` : ''}${summary ? `: ${summary}` : ''}`);
      break;
    }
    case 'log':
      pushLog(s, ev, String(d.message ?? ''));
      break;
    default:
      pushLog(s, ev, JSON.stringify(d));
  }
  return s;
}
