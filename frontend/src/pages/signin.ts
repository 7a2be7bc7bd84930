import { ApiProblem } from '../api/client';
import { h, mount } from '../lib/dom';
import { type PageContext, home } from '../router';
import { session, signIn } from '../session';

export function signInPage(ctx: PageContext): void {
  const next = ctx.query.get('next');
  const safeNext = next && next.startsWith('/') && !next.startsWith('//') && !next.startsWith('/signin') ? next : null;
  if (session()) {
    ctx.navigate(safeNext ?? home(), { replace: true });
    return;
  }
  const input = h('input', {
    id: 'api-key',
    name: 'api-key',
    type: 'password',
    autocomplete: 'off',
    spellcheck: 'false',
    required: true,
    'aria-describedby': 'api-key-hint',
  });
  const error = h('div', { id: 'signin-error', role: 'alert', class: 'field-error' });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h(
    'form',
    { class: 'signin card', novalidate: true },
    h('label', { for: 'api-key' }, 'API key'),
    input,
    h(
      'p',
      { id: 'api-key-hint', class: 'hint' },
      'An admin or clinical key (mck_…). The first start of the server prints an admin key. It stays in this tab only and is forgotten when you sign out or close the tab.',
    ),
    error,
    button,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    if (!input.value.trim()) {
      error.textContent = 'Enter an API key.';
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    button.disabled = true;
    button.textContent = 'Signing in…';
    try {
      await signIn(input.value);
      ctx.navigate(safeNext ?? home(), { replace: true });
    } catch (err) {
      input.setAttribute('aria-invalid', 'true');
      error.textContent =
        err instanceof ApiProblem && err.status === 401
          ? 'This key is unknown or revoked.'
          : `Could not sign in: ${err instanceof Error ? err.message : String(err)}`;
      button.disabled = false;
      button.textContent = 'Sign in';
      input.focus();
    }
  });
  mount(ctx.main, 
    h(
      'div',
      { class: 'signin-wrap' },
      h('h1', { tabindex: '-1' }, 'Sign in to medchange'),
      h('p', { class: 'lede' }, 'Retrain and promote models, follow training live, and review patients with the predictions made for them.'),
      form,
    ),
  );
  input.focus();
}
