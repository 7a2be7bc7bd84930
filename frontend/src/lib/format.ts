// Formatting of numbers, durations and times for display.

/** A number with `digits` significant decimals; '—' for missing values. */
export function num(x: number | null | undefined, digits = 3): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '—';
  if (Number.isInteger(x) && Math.abs(x) < 1e6) return x.toLocaleString('en-US');
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return x.toExponential(2);
  return x.toFixed(digits);
}

/** A signed difference, e.g. `+0.012`. */
export function signed(x: number | null | undefined, digits = 3): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '—';
  const s = num(x, digits);
  return x > 0 ? `+${s}` : s;
}

/** `0.4213` → `42.1 %`. */
export function pct(fraction: number | null | undefined, digits = 1): string {
  if (fraction === null || fraction === undefined || !Number.isFinite(fraction)) return '—';
  return `${(fraction * 100).toFixed(digits)} %`;
}

/** A percentile (0 to 100) to one decimal as an ordinal: `44.8th`, `1st`, `100th`. */
export function percentileText(p: number): string {
  if (!Number.isFinite(p)) return '—';
  const r = Math.round(p * 10) / 10;
  if (!Number.isInteger(r)) return `${r.toFixed(1)}th`;
  const tens = Math.abs(r) % 100;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : r % 10 === 1 ? 'st' : r % 10 === 2 ? 'nd' : r % 10 === 3 ? 'rd' : 'th';
  return `${r}${suffix}`;
}

/** Seconds as `1 h 2 min`, `3 min 20 s`, `12 s`, `0.4 s`. */
export function duration(secs: number | null | undefined): string {
  if (secs === null || secs === undefined || !Number.isFinite(secs) || secs < 0) return '—';
  if (secs < 1) return `${secs.toFixed(1)} s`;
  const s = Math.round(secs);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min ${r} s`;
  return `${r} s`;
}

function pad(n: number): string {
  return String(n).padStart(2, '0');
}

/** An ISO time as `2026-12-04 06:42` (local time). */
export function dateTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** An ISO time as a date only. */
export function date(iso: string | null | undefined): string {
  return dateTime(iso).slice(0, 10);
}

/** Seconds between two ISO times (to now when `to` is missing). */
export function secondsBetween(from: string | null | undefined, to?: string | null): number | null {
  if (!from) return null;
  const a = new Date(from).getTime();
  const b = to ? new Date(to).getTime() : Date.now();
  return Number.isNaN(a) || Number.isNaN(b) ? null : (b - a) / 1000;
}

/** The first characters of an id, for tables. */
export function shortId(id: string | null | undefined): string {
  return id ? id.slice(0, 8) : '—';
}
