/// <reference types="vitest/config" />
import { defineConfig } from 'vite';

// The dashboard is served by the medchange server at `/` (see
// src/http/dashboard.rs): hashed files under assets/ are cached as
// immutable, index.html is revalidated. `npm run dev` proxies the API to a
// server on :8080.
const api = process.env.MEDCHANGE_API ?? 'http://127.0.0.1:8080';

export default defineConfig({
  build: {
    target: 'es2022',
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    sourcemap: false,
    modulePreload: { polyfill: false },
  },
  server: {
    proxy: Object.fromEntries(['/v1', '/healthz', '/readyz', '/openapi.json', '/docs'].map((p) => [p, api])),
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
