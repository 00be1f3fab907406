/**
 * Builds the operator console into admin-ui/dist/, which the admin server serves at "/".
 * Relative asset paths (base './') keep the build working under any mount point; routing is by
 * URL hash, so the server needs no SPA fallback. `npx vite` (dev) proxies /api to a running
 * admin server named by SPOOLHOUSE_ADMIN_URL (default http://127.0.0.1:8025).
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const root = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  root,
  base: './',
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022', sourcemap: true },
  server: {
    host: '127.0.0.1',
    proxy: { '/api': { target: process.env.SPOOLHOUSE_ADMIN_URL ?? 'http://127.0.0.1:8025', changeOrigin: true } },
  },
});
