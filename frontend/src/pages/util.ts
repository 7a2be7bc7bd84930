/** Runs `fn` every `ms` (never two at once) until `signal` aborts; skips while the tab is hidden. */
export function every(signal: AbortSignal, ms: number, fn: () => Promise<void>): void {
  let busy = false;
  const t = setInterval(async () => {
    if (busy || signal.aborted || document.hidden) return;
    busy = true;
    try {
      await fn();
    } catch {
      // the page shows its own errors
    } finally {
      busy = false;
    }
  }, ms);
  signal.addEventListener('abort', () => clearInterval(t));
}

/** Reads every page of a cursor-paginated listing, up to `max` items. */
export async function allPages<T>(
  fetchPage: (cursor: string | undefined) => Promise<{ items: T[]; next_cursor?: string | null }>,
  max = 2000,
): Promise<{ items: T[]; truncated: boolean }> {
  const items: T[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await fetchPage(cursor);
    items.push(...page.items);
    if (!page.next_cursor) return { items, truncated: false };
    if (items.length >= max) return { items, truncated: true };
    cursor = page.next_cursor;
  }
}
