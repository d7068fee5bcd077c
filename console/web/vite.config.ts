// Builds the console into dist/: index.html and content-hashed files under assets/, which
// the nexus-console crate embeds in the binary. No source maps: the binary stays small and
// the sources are in the repository.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    sourcemap: false,
    // One bundle per build is fine for a console of this size; say so only past 1 MB.
    chunkSizeWarningLimit: 1024,
  },
});
