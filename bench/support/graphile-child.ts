/**
 * The same calls as graphile-worker 0.18 jobs, for comparison: one job per request body, each job making the
 * same HTTP call through lote's own OpenAI backend (h2c, node:http2), `concurrency` jobs at once, with the
 * batched settings of graphile-worker's performance page (https://worker.graphile.org/docs/performance): a local
 * queue of 500, completeJobBatchDelay 0 and failJobBatchDelay 0. The jobs are added before the worker starts,
 * as lote's batch is committed before its dispatcher sees it.
 *
 * graphile-worker keeps nothing of a job once it succeeds (it deletes the row), while lote stores every answer
 * as a result row and counts tokens: lote does strictly more per item in Postgres.
 *
 * argv: databaseUrl simulatorUrl concurrency count bodies ("chat" | "compact"). Prints a JSON line when the jobs
 * are added and one with the timings at the end.
 */
import pg from "pg";
import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";
import { createOpenAIBackend } from "../../src/backends/openai/index.ts";
import { benchBodies, type BodyKind } from "./bench-bodies.ts";
import { monoMs } from "./clocks.ts";

const [databaseUrl, url, concurrencyText, countText, kind] = process.argv.slice(2);
const concurrency = Number(concurrencyText);
const count = Number(countText);
const bodies = benchBodies(count, "bench-chat", kind as BodyKind);
const backend = createOpenAIBackend({ name: "openai:graphile", urls: [url!], maxConcurrency: concurrency });
const signal = new AbortController().signal;
// Its per-job log lines would be part of what is timed; lote runs at log level warn.
const silent = new Logger(() => () => {});

await runMigrations({ connectionString: databaseUrl, logger: silent });
const addStarted = monoMs();
const utils = await makeWorkerUtils({ connectionString: databaseUrl, logger: silent });
for (let i = 0; i < count; i += 5_000) {
  await utils.addJobs(bodies.slice(i, i + 5_000).map((body) => ({ identifier: "call", payload: { body } })));
}
await utils.release();
const addMs = monoMs() - addStarted;
process.stdout.write(`${JSON.stringify({ added: count, addMs })}\n`);

let ok = 0;
let failed = 0;
let firstAt = 0;
let lastAt = 0;
let allAnswered: () => void;
const answered = new Promise<void>((resolve) => (allAnswered = resolve));
const startedAt = monoMs();
const runner = await run({
  connectionString: databaseUrl,
  noHandleSignals: true,
  logger: silent,
  taskList: {
    call: async (payload) => {
      const reply = await backend.infer({ endpoint: "/v1/chat/completions", body: (payload as { body: string }).body, signal });
      lastAt = monoMs();
      if (firstAt === 0) firstAt = lastAt;
      if (reply.status !== 200) {
        failed++;
        throw new Error(`HTTP ${reply.status}`);
      }
      if (++ok === count) allAnswered();
    },
  },
  preset: {
    worker: {
      concurrentJobs: concurrency,
      // lote's pool size; with the local queue one connection fetches for all jobs.
      maxPoolSize: 20,
      pollInterval: 1_000,
      localQueue: { size: 500 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  },
});

// Done when every job is gone from the table: the last completion batch committed.
await answered;
const pool = new pg.Pool({ connectionString: databaseUrl, max: 1 });
for (;;) {
  const { rows } = await pool.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
  if (rows[0].n === 0) break;
  await new Promise((r) => setTimeout(r, 2));
}
const doneAt = monoMs();
await pool.end();
await runner.stop();
await backend.close();
process.stdout.write(`${JSON.stringify({ addMs, startedAt, firstAt, lastAt, doneAt, ok, failed })}\n`);
process.exit(0);
