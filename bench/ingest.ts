/**
 * `npm run bench:ingest`: how fast CreateBatch takes a 50,000-request batch into Postgres, over real gRPC (HTTP/2)
 * against the real server (`lote api`: the API without workers, so nothing consumes items meanwhile), compared
 * with a raw binary COPY of the same rows from a prepared buffer into a table shaped like lote.items.
 *
 * Environment: LOTE_BENCH_DATABASE_URL (see support/bench-postgres.ts), LOTE_BENCH_REQUESTS (default 50,000),
 * LOTE_BENCH_RUNS (timed runs per variant, default 5, after 1 warm-up), LOTE_BENCH_CPU_PROF (a directory: run
 * the server under --cpu-prof and leave the profile there).
 *
 * Every run starts from empty tables and a CHECKPOINT, so no run pays for an earlier run's dirty pages or a
 * bigger index. Variants are interleaved run by run, so drift (other load on the machine) spreads over all.
 */
import { cpus, loadavg, totalmem } from "node:os";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { Endpoint } from "../gen/lote/v1/batch_pb.ts";
import { BatchService, CreateBatchRequestSchema, EstimateBatchRequestSchema } from "../gen/lote/v1/batch_service_pb.ts";
import { estimateTokens } from "../src/batch/estimate-tokens.ts";
import { openBenchDatabase } from "./support/bench-postgres.ts";
import { chatRequests } from "./support/chat-requests.ts";
import { mib, startLoteServer } from "./support/lote-server.ts";
import { createRawTable, rawCopyChunks, timeRawCopy } from "./support/raw-copy.ts";
import { sendAsIs, summarise } from "./support/timing.ts";

const count = Number(process.env.LOTE_BENCH_REQUESTS ?? 50_000);
const runs = Number(process.env.LOTE_BENCH_RUNS ?? 5);
const model = "bench-chat";
const load = () => loadavg().map((l) => l.toFixed(2)).join(" ");
const rawBatchId = "b_bench_raw";

/**
 * The request bytes and the raw COPY data, built once. Only bytes are kept (outside the JS heap), so the 50,000
 * request objects are garbage before timing starts and the client's collections during timed calls stay small.
 */
function buildInputs() {
  const requests = chatRequests(count, model);
  // Encoded once; sendAsIs() makes the client send these bytes as they are, so client-side encoding (tens to
  // hundreds of ms for Struct bodies) is not what is timed. The client still copies them into a gRPC envelope.
  const jsonBytes = toBinary(CreateBatchRequestSchema, create(CreateBatchRequestSchema, {
    endpoint: Endpoint.CHAT_COMPLETIONS,
    requests: requests.map((r) => ({ customId: r.customId, bodyJson: Buffer.from(JSON.stringify(r.body)) })),
  }));
  const structBytes = toBinary(CreateBatchRequestSchema, create(CreateBatchRequestSchema, {
    endpoint: Endpoint.CHAT_COMPLETIONS,
    requests: requests.map((r) => ({ customId: r.customId, body: r.body as never })),
  }));
  const rawChunks = rawCopyChunks(rawBatchId, model, 0, requests.map((r) => {
    const est = estimateTokens(r.body as never, "/v1/chat/completions", 1024);
    return { customId: r.customId, body: JSON.stringify(r.body), estTokens: est.input + est.output };
  }));
  return { jsonBytes, structBytes, rawChunks };
}

const db = await openBenchDatabase();
const server = await startLoteServer({
  databaseUrl: db.url,
  role: "api",
  // Port 9 (discard) is never called: the api role starts no workers. The model only has to be known.
  config: { models: [{ name: model, backend: { kind: "openai", urls: ["http://127.0.0.1:9"] } }] },
  cpuProfDir: process.env.LOTE_BENCH_CPU_PROF,
});
const pool = new pg.Pool({ connectionString: db.url, max: 1 });
try {
  const startupRss = server.peakRss();
  const { jsonBytes, structBytes, rawChunks } = buildInputs();
  const client = createClient(BatchService, createGrpcTransport({ baseUrl: server.url }));
  const admin = await pool.connect();
  const rawTable = await createRawTable(admin, true);
  const rawTableNoFk = await createRawTable(admin, false);
  const timed = async (fn: () => Promise<unknown>) => {
    const started = performance.now();
    await fn();
    return performance.now() - started;
  };
  const createBatch = (bytes: Uint8Array) => {
    const req = sendAsIs(CreateBatchRequestSchema, bytes);
    return () => timed(async () => {
      const batch = await client.createBatch(req);
      if (batch.requestCounts?.total !== BigInt(count)) throw new Error(`expected a batch of ${count}, got ${batch.requestCounts?.total}`);
    });
  };
  const estimate = sendAsIs(EstimateBatchRequestSchema, jsonBytes); // same field numbers, same bytes
  const rawCopy = (table: string) => async () => {
    await admin.query(`INSERT INTO lote.batches (id, tenant_id, endpoint, model, status, completion_window_seconds, total, expires_at)
      VALUES ($1, 'bench', '/v1/chat/completions', $2, 'in_progress', 86400, $3, now() + interval '1 day')`, [rawBatchId, model, count]);
    return timeRawCopy(admin, table, rawChunks);
  };
  const variants = [
    { name: "CreateBatch, body_json", run: createBatch(jsonBytes), rss: true },
    { name: "CreateBatch, body (Struct)", run: createBatch(structBytes), rss: true },
    // lote.items has no foreign key (migration 001 says why), so the reference has none either.
    { name: "raw COPY, same table", run: rawCopy(rawTableNoFk), rss: false },
    { name: "raw COPY, with a foreign key (info)", run: rawCopy(rawTable), rss: false },
    { name: "EstimateBatch, body_json (info: no DB)", run: () => timed(() => client.estimateBatch(estimate)), rss: false },
  ].map((v) => ({ ...v, ms: [] as number[], peakRss: 0 }));

  console.log(`lote ingest benchmark: ${count.toLocaleString("en")} chat-completions requests, ${runs} runs after 1 warm-up`);
  console.log(`machine: ${cpus().length} × ${cpus()[0]?.model.trim()}, ${mib(totalmem())} RAM; node ${process.version}; load average ${load()}`);
  console.log(`postgres: ${db.version.split(" on ")[0]} (${db.source})`);
  console.log(`CreateBatchRequest: body_json ${(jsonBytes.length / 1e6).toFixed(1)} MB, body (Struct) ${(structBytes.length / 1e6).toFixed(1)} MB; COPY data ${(rawChunks.reduce((n, c) => n + c.length, 0) / 1e6).toFixed(1)} MB`);
  let rssWindowed = true; // VmHWM reset before every CreateBatch; else it is the peak since the server started
  for (let round = 0; round <= runs; round++) {
    for (const v of variants) {
      // CASCADE empties bench_raw.items (foreign key to lote.batches) too.
      await admin.query("TRUNCATE lote.batches, lote.items, bench_raw.items_nofk CASCADE");
      await admin.query("CHECKPOINT");
      if (v.rss) rssWindowed = server.resetPeakRss() && rssWindowed;
      const ms = await v.run();
      if (round === 0) continue; // warm-up
      v.ms.push(ms);
      if (v.rss) v.peakRss = Math.max(v.peakRss, server.peakRss());
    }
  }
  admin.release();

  const rows = variants.map((v) => ({ name: v.name, s: summarise(v.ms, count), peakRss: v.peakRss }));
  const fmt = (n: number) => Math.round(n).toLocaleString("en").padStart(9);
  console.log(`\nrequests/s: min / median / max (median wall time); load average now ${load()}`);
  for (const r of rows) console.log(`  ${r.name.padEnd(40)} ${fmt(r.s.min)} / ${fmt(r.s.median)} / ${fmt(r.s.max)}   (${r.s.medianMs.toFixed(0)} ms)`);
  const ratio = (i: number) => Number((rows[i]!.s.median / rows[2]!.s.median).toFixed(2));
  console.log(`\nratio lote / raw COPY, medians (target ≥ 0.5, goal 0.8): body_json ${ratio(0)}, body (Struct) ${ratio(1)}`);
  const rssWhen = rssWindowed ? "during a CreateBatch" : "since start (clear_refs refused)";
  console.log(`server peak RSS (VmHWM) ${rssWhen}: body_json ${mib(rows[0]!.peakRss)}, body (Struct) ${mib(rows[1]!.peakRss)}; after start-up ${mib(startupRss)}`);
  console.log(JSON.stringify({
    requests: count, runs, postgres: db.version.split(" on ")[0], date: new Date().toISOString(),
    results: Object.fromEntries(rows.map((r) => [r.name, { ...r.s, peakRssBytes: r.peakRss || undefined }])),
    ratio: { bodyJson: ratio(0), body: ratio(1) }, startupRssBytes: startupRss,
  }));
} finally {
  await pool.end();
  await server.stop();
  await db.close();
}
