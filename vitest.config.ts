import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/browser/global-setup.ts', 'test/kafka/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Files run in parallel processes; the 2-core CI machine is the budget.
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
  },
});
