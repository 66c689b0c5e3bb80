/**
 * `npm run bench:fleet`: how a model's calls spread over worker nodes that share one Postgres. One `lote api` node
 * takes a batch of chat requests (50 ms simulated latency, `max_concurrency` 64, so at most 1,280/s) and one, then
 * two `lote worker` nodes dispatch it, interleaved. Prints each worker's share of the claimed requests (from its
 * Prometheus `lote_claimed_items_total`), the rate from the first result to the last, and the most calls the
 * simulator saw at once (the fleet-wide limit holds: never above 64). Before worker shares (migration 005) one of two
 * workers claimed every request.
 *
 * Flags: --requests=N per batch (default 5,000), --rounds=N (default 2).
 */
import pg from "pg";
import { benchBodies } from "./support/bench-bodies.ts";
import { openBenchDatabase, freePort } from "./support/bench-postgres.ts";
import { batchClient, encodedBatch, runBatch } from "./support/lote-batches.ts";
import { startLoteServer } from "./support/lote-server.ts";
import { startSimulatorProcess } from "./support/simulator-process.ts";
import { metricOf } from "../test/support/metrics.ts";

const flag = (name: string, dflt: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split("=")[1] ?? dflt);
const requests = flag("requests", 5_000);
const rounds = flag("rounds", 2);
const maxConcurrency = 64;
const latencyMs = 50;

const db = await openBenchDatabase();
const pool = new pg.Pool({ connectionString: db.url, max: 2 });
const sim = await startSimulatorProcess(latencyMs);
const model = { name: "sim-model", backend: { kind: "openai", urls: [sim.url] }, max_concurrency: maxConcurrency };
const api = await startLoteServer({ databaseUrl: db.url, role: "api", config: { models: [model] } });
const client = batchClient(api.url);
const batch = encodedBatch(benchBodies(requests, "sim-model", "chat"));
console.log(`lote fleet benchmark, ${new Date().toISOString()}; postgres: ${db.version} (${db.source})`);
console.log(`${requests.toLocaleString("en")} chat requests per batch at ${latencyMs} ms, max_concurrency ${maxConcurrency} (at most ${maxConcurrency * 1000 / latencyMs}/s)`);

const claimedBy = async (port: number) => (await metricOf(port, 'lote_claimed_items_total{model="sim-model"}')) ?? 0;
const shares = (ports: readonly number[]) => Promise.all(ports.map((port) => metricOf(port, 'lote_model_share{model="sim-model"}')));

try {
  for (let round = 1; round <= rounds; round++) {
    for (const workers of [1, 2]) {
      const ports = await Promise.all(Array.from({ length: workers }, () => freePort()));
      const nodes = await Promise.all(ports.map((port) => startLoteServer({ databaseUrl: db.url, role: "worker", config: { models: [model], metrics: { port } } })));
      // Each worker has read the others (lote_workers notifications), so the shares are settled before the batch.
      const deadline = Date.now() + 10_000;
      while ((await shares(ports)).some((s) => s !== Math.ceil(maxConcurrency / workers))) {
        if (Date.now() > deadline) throw new Error(`shares not settled: ${await shares(ports)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await sim.mark();
      const run = await runBatch(client, pool, batch.request, 120_000);
      const window = await sim.report();
      const claimed = await Promise.all(ports.map(claimedBy));
      const rate = (run.completed + run.failed - 1) / ((run.lastResultAt - run.firstResultAt) / 1000);
      console.log(`round ${round}, ${workers} worker(s): ${Math.round(rate).toLocaleString("en")}/s = ${(rate / (maxConcurrency * 1000 / latencyMs)).toFixed(2)} of the limit's rate; ` +
        `claimed ${claimed.map((c) => `${c} (${(100 * c / requests).toFixed(0)}%)`).join(" / ")}; most calls at once ${window.maxInFlight}`);
      await Promise.all(nodes.map((n) => n.stop()));
    }
  }
} finally {
  await api.stop();
  await sim.stop();
  await pool.end();
  await db.close();
}
