// Prints the size of the browser bundle of the client (esbuild, minified, gzip -9), the number
// stated in README.md. `--max=BYTES` fails above a bound.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const out = await build({
  entryPoints: [new URL("../src/index.ts", import.meta.url).pathname],
  bundle: true, minify: true, format: "esm", target: "es2022", write: false, legalComments: "none",
});
const code = out.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 }).length;
console.log(`@concord/client: ${(code.length / 1024).toFixed(1)} KB minified, ${(gz / 1024).toFixed(1)} KB min+gzip`);
const max = process.argv.find((a) => a.startsWith("--max="));
if (max && gz > Number(max.slice(6))) {
  console.error(`larger than ${max.slice(6)} bytes gzipped`);
  process.exit(1);
}
