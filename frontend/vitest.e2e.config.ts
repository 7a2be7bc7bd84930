import { defineConfig } from 'vitest/config';

// End-to-end tests in headless Chromium against a running server
// (scripts/e2e starts one with a scratch database and sets MEDCHANGE_E2E_*).
export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.ts'],
    environment: 'node',
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['verbose'],
  },
});
