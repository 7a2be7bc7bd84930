// Server-Sent Events over fetch. EventSource cannot send an Authorization
// header, and API keys must not travel in URLs (they would be logged), so
// the job event stream is read with fetch and parsed here, resuming with
// `Last-Event-ID` when the connection drops.
import type { JobEvent, paths } from './client';
import { api, currentApiKey, toProblem, unwrap } from './client';

export interface SseMessage {
  id: string | null;
  event: string;
  data: string;
}

/**
 * An incremental parser of the text/event-stream format (WHATWG HTML
 * "server-sent events"): feed it chunks as they arrive, get whole messages.
 */
export class SseParser {
  private buffer = '';
  private data: string[] = [];
  private event = '';
  private id: string | null = null;
  /** The id of the last message (kept across messages, as the spec says). */
  lastEventId: string | null = null;
  /** A `retry:` field's reconnection delay in ms, when the server sent one. */
  retry: number | null = null;

  feed(chunk: string): SseMessage[] {
    this.buffer += chunk;
    const out: SseMessage[] = [];
    // Lines end with CRLF, LF or CR; a CR at the very end may be half a CRLF.
    for (;;) {
      const m = /\r\n|\n|\r/.exec(this.buffer);
      if (!m) break;
      if (m[0] === '\r' && m.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, m.index);
      this.buffer = this.buffer.slice(m.index + m[0].length);
      const msg = this.line(line);
      if (msg) out.push(msg);
    }
    return out;
  }

  private line(line: string): SseMessage | null {
    if (line === '') {
      const had = this.data.length > 0;
      const msg: SseMessage = { id: this.lastEventId, event: this.event || 'message', data: this.data.join('\n') };
      this.data = [];
      this.event = '';
      return had ? msg : null;
    }
    if (line.startsWith(':')) return null; // a comment (keep-alive)
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        break;
      case 'event':
        this.event = value;
        break;
      case 'id':
        if (!value.includes('\0')) {
          this.id = value;
          this.lastEventId = value;
        }
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
    return null;
  }
}

const STREAM: keyof paths = '/v1/jobs/{job_id}/events/stream';
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

export interface FollowOptions {
  /** Resume after this event id (0: from the start). */
  after?: number;
  signal: AbortSignal;
  onEvent: (ev: JobEvent) => void;
  /** Connection state changes, for the "live" indicator. */
  onState?: (state: 'connecting' | 'live' | 'reconnecting' | 'ended', detail?: string) => void;
}

function terminalStatus(ev: JobEvent): boolean {
  return ev.kind === 'status' && TERMINAL.has(String(ev.data.status));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/**
 * Follows a job's events until it has ended (its final status event was
 * received) or `signal` aborts. Reconnects after dropped connections,
 * resuming after the last event received.
 */
export async function followJob(jobId: string, opts: FollowOptions): Promise<void> {
  let after = opts.after ?? 0;
  let delay = 500;
  const url = `${globalThis.location?.origin ?? ''}${STREAM.replace('{job_id}', encodeURIComponent(jobId))}`;
  while (!opts.signal.aborted) {
    opts.onState?.(after === (opts.after ?? 0) ? 'connecting' : 'reconnecting');
    let ended = false;
    try {
      const headers: Record<string, string> = { Accept: 'text/event-stream', 'Last-Event-ID': String(after) };
      const key = currentApiKey();
      if (key) headers.Authorization = `Bearer ${key}`;
      const res = await fetch(url, { headers, signal: opts.signal, cache: 'no-store' });
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        const problem = toProblem(res.status, body);
        if (res.status >= 400 && res.status < 500) {
          opts.onState?.('ended', problem.message);
          return; // not found, not allowed: retrying will not help
        }
        throw problem;
      }
      opts.onState?.('live');
      delay = 500;
      const parser = new SseParser();
      const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const msg of parser.feed(value)) {
          let ev: JobEvent;
          try {
            ev = JSON.parse(msg.data) as JobEvent;
          } catch {
            continue; // not an event (e.g. a comment the server could not serialize)
          }
          if (typeof ev.id === 'number') after = Math.max(after, ev.id);
          opts.onEvent(ev);
          if (terminalStatus(ev)) ended = true;
        }
      }
    } catch (e) {
      if (opts.signal.aborted) return;
      opts.onState?.('reconnecting', e instanceof Error ? e.message : String(e));
    }
    if (!ended && !opts.signal.aborted) {
      // The stream closed before the job's final event reached us: ask
      // whether the job has ended (then every event was sent) or resume.
      try {
        const job = await unwrap(api.GET('/v1/jobs/{job_id}', { params: { path: { job_id: jobId } }, signal: opts.signal }));
        ended = TERMINAL.has(job.status) && job.last_event_id <= after;
      } catch {
        // unreachable: retry below
      }
    }
    if (ended) {
      opts.onState?.('ended');
      return;
    }
    // The stream ended without the job's end (server restart, network): resume.
    await sleep(delay, opts.signal);
    delay = Math.min(delay * 2, 10_000);
  }
}
