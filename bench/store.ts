/**
 * `npm run bench:store`: what Postgres spends on lote's dispatch hot path alone, per item: claims
 * (lote.claim_items) and completions (lote.complete_items) of a 50,000-request batch of the dispatch benchmark's
 * chat bodies with ~600-byte answers, one claim and then its completion at a time, no HTTP, nothing else running.
 * The claimer and the completer have a connection each, so each statement's CPU (user + system of its backend,
 * /proc/<pid>/stat) and shared-buffer reads (auto_explain on that connection, `Buffers: shared hit`) are its own.
 * Buffer reads are the same on any machine for the same code and data; CPU shows what they cost on this one.
 *
 * Why it exists: bench/dispatch.ts (a) runs lote, Postgres and the simulator on the same two cores, and its
 * budget line says how many µs per item lote and Postgres together may spend for 0.75 of the bare client. This
 * says how much of that Postgres takes by itself, at several claim sizes (the dispatch benchmark's claims carry
 * 10-40 items), without the noise of the other processes.
 *
 * Flags: --items=N (default 50,000), --sizes=10,40,120 (items per claim, and per completion). Environment:
 * LOTE_BENCH_DATABASE_URL (see support/bench-postgres.ts).
 */
import { readFileSync } from "node:fs";
import pg from "pg";
import { claimItems, completeItems, createBatch, migrate, type ClaimedItem, type Completion } from "../src/store/index.ts";
import { openBenchDatabase } from "./support/bench-postgres.ts";
import { chatRequests } from "./support/chat-requests.ts";

const flag = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
const items = Number(flag("items") ?? 50_000);
const sizes = (flag("sizes") ?? "10,40,120").split(",").map(Number);
const model = "bench-chat";

/** CPU ticks (1/100 s) of a process so far: utime + stime, fields 14 and 15 of /proc/<pid>/stat. */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

/** A connection of its own, with its backend's pid, and (`metered`) the shared buffers its top-level statements read. */
async function backendClient(url: string, metered: boolean): Promise<{ client: pg.Client; pid: number; buffers: () => number }> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  let hits = 0;
  // auto_explain reports each top-level statement as a LOG message, which reaches this client as a notice.
  client.on("notice", (n) => {
    const m = /^duration: [\d.]+ ms {2}plan:\n[\s\S]*?Buffers: shared hit=(\d+)/.exec(n.message ?? "");
    if (m) hits += Number(m[1]);
  });
  if (metered) await client.query(`LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;
    SET auto_explain.log_buffers = on; SET auto_explain.log_timing = off; SET client_min_messages = log`);
  const pid = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
  return { client, pid, buffers: () => hits };
}

const answer = JSON.stringify({
  id: "chatcmpl-bench", object: "chat.completion", created: 1, model,
  choices: [{ index: 0, message: { role: "assistant", content: "x".repeat(420) }, finish_reason: "stop" }],
  usage: { prompt_tokens: 100, completion_tokens: 100, total_tokens: 200 },
});
const succeeded = (it: ClaimedItem): Completion => ({
  outcome: "succeeded", batchId: it.batchId, idx: it.idx, attempt: it.attempt, statusCode: 200, requestId: "r", body: answer,
  inputTokens: 100, outputTokens: 100, totalTokens: 200,
});

/** Claims and completes a fresh batch of `items`, `size` at a time; with `metered`, auto_explain counts buffers. */
async function run(size: number, metered: boolean) {
  const id = `b_store_${size}_${metered ? "metered" : "plain"}`;
  await createBatch(pool, {
    id, tenantId: "bench", endpoint: "/v1/chat/completions", model, priority: 0,
    completionWindowSeconds: 86_400, metadata: {}, items: bodies.map((body, i) => ({ customId: `r${i}`, body, estTokens: 300 })),
  });
  // As the dispatcher leaves it (vacuumItems every 50,000 claimed items): a fresh start for each run.
  await pool.query("VACUUM ANALYZE lote.items");
  const claimer = await backendClient(db.url, metered);
  const completer = await backendClient(db.url, metered);
  const at = { claim: cpuTicks(claimer.pid), complete: cpuTicks(completer.pid) };
  const started = performance.now();
  let done = 0;
  let claims = 0;
  for (;;) {
    const claimed = await claimItems(claimer.client, {
      model, limit: size, workerId: "bench-worker", leaseMs: 600_000, maxConcurrency: 1_000_000,
      requestsPerMinute: 0, tokensPerMinute: 0, ownCalls: 0, tenantCalls: new Map(),
    });
    if (claimed.length === 0) break;
    claims++;
    await completeItems(completer.client, claimed.map(succeeded));
    done += claimed.length;
  }
  const seconds = (performance.now() - started) / 1000;
  if (done !== items) throw new Error(`Expected ${items} items claimed and completed, got ${done}`);
  const figures = {
    claims, rate: done / seconds,
    claimUs: ((cpuTicks(claimer.pid) - at.claim) * 10_000) / done,
    completeUs: ((cpuTicks(completer.pid) - at.complete) * 10_000) / done,
    claimBuffers: claimer.buffers() / done,
    completeBuffers: completer.buffers() / done,
  };
  await claimer.client.end();
  await completer.client.end();
  return figures;
}

const db = await openBenchDatabase();
const pool = new pg.Pool({ connectionString: db.url, max: 2 });
const bodies = chatRequests(items, model).map((r) => JSON.stringify(r.body));
console.log(`lote store benchmark, ${new Date().toISOString()}; ${db.version.split(" on ")[0]} (${db.source}); ` +
  `${items.toLocaleString("en")} items per size, one claim and its completion at a time`);
try {
  await migrate(pool);
  for (const size of sizes) {
    // Twice: auto_explain's instrumentation costs CPU, so the CPU figures come from a pass without it.
    const plain = await run(size, false);
    const metered = await run(size, true);
    const total = plain.claimUs + plain.completeUs;
    console.log(`  ${String(size).padStart(4)} per claim: Postgres CPU per item: claim ${plain.claimUs.toFixed(1)} µs + completion ` +
      `${plain.completeUs.toFixed(1)} µs = ${total.toFixed(1)} µs; shared buffers per item: claim ${metered.claimBuffers.toFixed(1)}, ` +
      `completion ${metered.completeBuffers.toFixed(1)}; ${plain.claims} claims, ${Math.round(plain.rate).toLocaleString("en")} items/s`);
  }
} finally {
  await pool.end();
  await db.close();
}
