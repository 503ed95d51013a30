import vue from "@vitejs/plugin-vue";
import { defineConfig } from "vite";

// Built assets are served by the REST bridge (--static-dir) on the dashboard host, same origin as
// /v1/…; `npm run dev` proxies the API and the auth service's pages to a running dev stack.
const target = process.env.AIGC_DASHBOARD_URL ?? "http://dashboard.aigc.localhost:8000";

export default defineConfig({
  plugins: [vue()],
  build: { outDir: "dist", assetsDir: "assets", sourcemap: false, target: "es2022" },
  server: {
    proxy: Object.fromEntries(["/v1", "/sign-in", "/sign-out"].map((p) => [p, { target, changeOrigin: true }])),
  },
});
