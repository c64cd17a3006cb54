// Builds the demo into web/dist (checked in: `concord serve` embeds it). `--check` builds into
// a temporary directory and fails if web/dist differs, so a stale build cannot be committed.
import { build } from "esbuild";
import { mkdtempSync, readFileSync, copyFileSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const check = process.argv.includes("--check");
const out = check ? mkdtempSync(join(tmpdir(), "concord-web-")) : join(here, "dist");
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, "src/app.ts"), join(here, "src/app.css")],
  outdir: out,
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022"],
  legalComments: "none",
  logLevel: "warning",
  entryNames: "[name]",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));

if (check) {
  const stale = ["index.html", "app.js", "app.css"].filter(
    (f) => !readFileSync(join(out, f)).equals(readFileSync(join(here, "dist", f), { flag: "r" })),
  );
  rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`web/dist is stale (${stale.join(", ")}): run \`npm run build -w web\` and commit web/dist`);
    process.exit(1);
  }
  console.log("web/dist is current");
}
