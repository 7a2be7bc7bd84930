// The medchange dashboard: shell (header, navigation, sign-out) and routes.
import './styles.css';
import { setUnauthorizedHandler } from './api/client';
import { h } from './lib/dom';
import { densityPage } from './pages/density';
import { jobPage } from './pages/job';
import { comparePage, modelPage, modelsPage } from './pages/models';
import { overviewPage } from './pages/overview';
import { patientPage, patientsPage } from './pages/patients';
import { signInPage } from './pages/signin';
import { trainingPage } from './pages/training';
import { interceptLinks, navigate, render, setRoutes } from './router';
import { isAdmin, load, session, signOut } from './session';
import { notify } from './ui';

const NAV: { href: string; label: string; admin: boolean; match: RegExp }[] = [
  { href: '/', label: 'Overview', admin: true, match: /^\/$/ },
  { href: '/training', label: 'Training', admin: true, match: /^\/training/ },
  { href: '/models', label: 'Models', admin: true, match: /^\/models/ },
  { href: '/patients', label: 'Patients', admin: false, match: /^\/patients/ },
  { href: '/density', label: 'Density', admin: true, match: /^\/density/ },
];

function shell(): void {
  const app = document.getElementById('app')!;
  app.replaceChildren(
    h('a', { class: 'skip-link', href: '#main' }, 'Skip to content'),
    h(
      'header',
      { class: 'topbar' },
      h('a', { class: 'brand', href: '/', 'aria-label': 'medchange dashboard, start page' }, 'medchange'),
      h('nav', { 'aria-label': 'Main', id: 'nav' }),
      h('div', { class: 'who', id: 'who' }),
    ),
    h('main', { id: 'main', tabindex: '-1' }),
    h('div', { id: 'notices', class: 'notices', role: 'status', 'aria-live': 'polite' }),
  );
  // The skip link moves focus without changing the route.
  app.querySelector('.skip-link')!.addEventListener('click', (e) => {
    e.preventDefault();
    document.getElementById('main')!.focus();
  });
}

function updateChrome(path: string): void {
  const nav = document.getElementById('nav')!;
  const who = document.getElementById('who')!;
  const s = session();
  if (!s) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  nav.replaceChildren(
    h(
      'ul',
      null,
      NAV.filter((n) => !n.admin || isAdmin()).map((n) =>
        h('li', null, h('a', { href: n.href, 'aria-current': n.match.test(path) ? 'page' : null }, n.label)),
      ),
    ),
  );
  who.replaceChildren(
    h('span', { class: 'key-name', title: `key ${s.me.prefix}…` }, s.me.name),
    h('span', { class: `badge role-${s.me.role}` }, s.me.role),
    h(
      'button',
      {
        type: 'button',
        class: 'link-button',
        onclick: () => {
          signOut();
          navigate('/signin', { replace: true });
        },
      },
      'Sign out',
    ),
  );
}

shell();
load();
setUnauthorizedHandler(() => {
  if (!session()) return;
  signOut();
  notify('The API key was refused (revoked?). Please sign in again.', 'error');
  navigate(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, { replace: true });
});
setRoutes(
  [
    { pattern: /^\/signin$/, title: 'Sign in', admin: false, public: true, render: signInPage },
    { pattern: /^\/$/, title: 'Overview', admin: true, render: overviewPage },
    { pattern: /^\/training$/, title: 'Training', admin: true, render: trainingPage },
    { pattern: /^\/training\/jobs\/([^/]+)$/, title: 'Training job', admin: true, render: jobPage },
    { pattern: /^\/models$/, title: 'Models', admin: true, render: modelsPage },
    { pattern: /^\/models\/compare$/, title: 'Compare versions', admin: true, render: comparePage },
    { pattern: /^\/models\/([^/]+)$/, title: 'Model version', admin: true, render: modelPage },
    { pattern: /^\/patients$/, title: 'Patients', admin: false, render: patientsPage },
    { pattern: /^\/patients\/([^/]+)$/, title: 'Patient', admin: false, render: patientPage },
    { pattern: /^\/density$/, title: 'Density', admin: true, render: densityPage },
  ],
  updateChrome,
);
interceptLinks();
void render();
