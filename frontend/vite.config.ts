/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API like `splitgpt ui` does, so the page is
// same-origin in development too (SPLITGPT_API_URL moves the API).
const api = process.env.SPLITGPT_API_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  server: {
    host: "127.0.0.1",
    port: 5173,
    strictPort: true,
    proxy: {
      "/api": api,
      "/docs": api,
      "/openapi.json": api,
    },
  },
  build: {
    outDir: "dist",
    sourcemap: false,
  },
  test: {
    // Plain modules test under Node; component tests ask for jsdom in their first line.
    environment: "node",
    globals: true,
    setupFiles: ["src/test/setup.ts"],
    include: ["src/**/*.test.{ts,tsx}"],
  },
});
