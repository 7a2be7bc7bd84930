// The signed-in API key, kept in session storage (gone when the tab
// closes, cleared on sign-out) and its role from GET /v1/me.
import { type ApiKey, api, setApiKey, unwrap } from './api/client';

const KEY = 'medchange.apiKey';
const ME = 'medchange.me';

export interface Session {
  key: string;
  me: ApiKey;
}

let current: Session | null = null;

export function load(): Session | null {
  try {
    const key = sessionStorage.getItem(KEY);
    const me = sessionStorage.getItem(ME);
    if (key && me) {
      current = { key, me: JSON.parse(me) as ApiKey };
      setApiKey(key);
    }
  } catch {
    current = null;
  }
  return current;
}

export function session(): Session | null {
  return current;
}

export function isAdmin(): boolean {
  return current?.me.role === 'admin';
}

/** Checks the key with the API; keeps it when it works. */
export async function signIn(key: string): Promise<Session> {
  const trimmed = key.trim();
  const me = await unwrap(api.GET('/v1/me', { headers: { Authorization: `Bearer ${trimmed}` } }));
  current = { key: trimmed, me };
  sessionStorage.setItem(KEY, trimmed);
  sessionStorage.setItem(ME, JSON.stringify(me));
  setApiKey(trimmed);
  return current;
}

export function signOut(): void {
  current = null;
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ME);
  setApiKey(null);
}
