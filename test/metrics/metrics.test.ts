import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { buildConfig, ConfigError } from "../../src/config/config.ts";
import type { Dispatcher } from "../../src/dispatch/index.ts";
import { LoteMetrics } from "../../src/metrics/index.ts";
import { startSimulator, type Simulator } from "../../src/simulator/index.ts";
import { newBatchId } from "../../src/batch/ids.ts";
import { claimItems, createBatch } from "../../src/store/index.ts";
import { migrate } from "../../src/store/migrate.ts";
import { createTestDatabase, testPool, type TestDatabase } from "../support/database.ts";
import { batchServiceClient, call, chatRequest, collect } from "../support/grpc-client.ts";
import { startLoteProcess, type LoteProcess } from "../support/lote-process.ts";
import { sample, scrapeMetrics } from "../support/metrics.ts";
import { freePort } from "../support/ports.ts";
import { until } from "../support/until.ts";

describe("Prometheus metrics of a worker node (real process, scraped over HTTP)", () => {
  let db: TestDatabase;
  let sim: Simulator;
  let lote: LoteProcess;
  let client: any;
  let metricsUrl: string;

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(async () => {
    client?.close();
    await lote?.stop();
    await sim?.close();
  });
  afterAll(async () => {
    await db.drop();
  });

  async function start(extraModels: Record<string, unknown>[] = [], extraConfig: Record<string, unknown> = {}): Promise<void> {
    sim = await startSimulator({ port: 0 });
    const port = await freePort();
    lote = await startLoteProcess({
      databaseUrl: db.url,
      config: { metrics: { port }, models: [{ name: "sim-model", backend: { kind: "openai", urls: [sim.h2cUrl] }, max_concurrency: 8 },
        // Those with no backend of their own call the simulator too.
        ...extraModels.map((m) => ({ backend: { kind: "openai", urls: [sim.h2cUrl] }, ...m }))], ...extraConfig },
    });
    client = batchServiceClient(`127.0.0.1:${lote.port}`);
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
  }
  const scrape = async () => {
    const res = await fetch(metricsUrl);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    return res.text();
  };

  it("counts claimed requests and ended calls by outcome, with their durations, once a batch has run", async () => {
    await start();
    const requests = [
      ...Array.from({ length: 20 }, (_, i) => chatRequest(`ok${i}`, "sim-model", `hello ${i}`)),
      chatRequest("bad0", "sim-model", "b", { sim: { fail_first: 99, status: 400 } }),
      chatRequest("bad1", "sim-model", "b", { sim: { fail_first: 99, status: 400 } }),
    ];
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests });
    await until("batch COMPLETED", async () => ((await call(client, "getBatch", { id: batch.id })).status === "BATCH_STATUS_COMPLETED" ? true : undefined), 30_000);
    const text = await scrape();
    expect(sample(text, 'lote_claimed_items_total{model="sim-model"}')).toBe(22);
    expect(sample(text, 'lote_calls_total{model="sim-model",outcome="succeeded"}')).toBe(20);
    expect(sample(text, 'lote_calls_total{model="sim-model",outcome="failed"}')).toBe(2);
    expect(sample(text, 'lote_call_duration_seconds_count{model="sim-model",outcome="succeeded"}')).toBe(20);
    expect(sample(text, 'lote_call_duration_seconds_sum{model="sim-model",outcome="succeeded"}')).toBeGreaterThan(0);
    // Buckets up to the default per-request timeout (600 s), so calls that ran into it stand apart.
    expect(sample(text, 'lote_call_duration_seconds_bucket{le="600",model="sim-model",outcome="succeeded"}')).toBe(20);
    expect(sample(text, 'lote_claims_total{model="sim-model"}')).toBeGreaterThanOrEqual(3); // 8 slots for 22 requests
    expect(sample(text, 'lote_calls_in_flight{model="sim-model"}')).toBe(0);
    expect(sample(text, 'lote_model_max_concurrency{model="sim-model"}')).toBe(8);
    expect(sample(text, "lote_completion_backlog")).toBe(0);
    // prom-client's default process metrics come along.
    expect(sample(text, "process_cpu_user_seconds_total")).toBeGreaterThan(0);
    // Said what was written before; it is counted as each call ends, before the completion is written.
    expect(text).toContain("# HELP lote_calls_total Backend calls ended, by the call's outcome (succeeded, failed, retry (back to pending), cancelled, expired), counted when the call ends, before its completion is written");
  });

  it("counts backend errors by model and kind: the HTTP status, or the transport error when no answer came", async () => {
    // A model whose backend is down: nothing listens on its port.
    const downPort = await freePort();
    await start([{ name: "down-model", backend: { kind: "openai", urls: [`http://127.0.0.1:${downPort}`] }, max_attempts: 2 }]);
    const sim503 = { sim: { fail_first: 1, status: 503, retry_after: "0" } };
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: [
      chatRequest("ok", "sim-model", "fine"),
      chatRequest("busy", "sim-model", "busy once", sim503),
      chatRequest("bad", "sim-model", "bad", { sim: { fail_first: 99, status: 400 } }),
    ] });
    const down = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: [chatRequest("d0", "down-model", "anyone?")] });
    for (const id of [batch.id, down.id]) {
      await until(`batch ${id} COMPLETED`, async () => ((await call(client, "getBatch", { id })).status === "BATCH_STATUS_COMPLETED" ? true : undefined), 30_000);
    }
    const text = await scrape();
    // Before, a backend answering 503 or not answering at all showed only as outcome="retry" or "failed".
    expect(sample(text, 'lote_call_errors_total{model="sim-model",error="http_503"}')).toBe(1);
    expect(sample(text, 'lote_call_errors_total{model="sim-model",error="http_400"}')).toBe(1);
    expect(sample(text, 'lote_calls_total{model="sim-model",outcome="succeeded"}')).toBe(2);
    // Two attempts (max_attempts), both refused.
    expect(sample(text, 'lote_call_errors_total{model="down-model",error="connection_refused"}')).toBe(2);
    expect(text).not.toContain('lote_call_errors_total{model="sim-model",error="connection_refused"}');
  });

  it("counts the requests it rescued from a worker whose lease lapsed", async () => {
    // Three requests a worker claimed and then died with: its 1 ms lease lapses at once.
    const pool = testPool(db.url);
    const id = newBatchId();
    try {
      await migrate(pool);
      await createBatch(pool, {
        id, tenantId: "default", endpoint: "/v1/chat/completions", model: "sim-model", priority: 0, completionWindowSeconds: 3600, metadata: {},
        items: Array.from({ length: 3 }, (_, i) => ({ customId: `c${i}`, body: JSON.stringify({ model: "sim-model", messages: [] }), estTokens: 1 })),
      });
      const claimed = await claimItems(pool, {
        model: "sim-model", limit: 3, workerId: "w-dead", leaseMs: 1, maxConcurrency: 8, requestsPerMinute: 0, tokensPerMinute: 0,
      });
      expect(claimed).toHaveLength(3);
    } finally {
      await pool.end();
    }
    await start([], { worker: { maintenance_interval_ms: 100 } });
    await until("batch COMPLETED", async () => ((await call(client, "getBatch", { id })).status === "BATCH_STATUS_COMPLETED" ? true : undefined), 30_000);
    const text = await scrape();
    // Before, a rescue showed only as a log line: a worker crashing again and again went unseen by alerts.
    expect(sample(text, 'lote_rescued_items_total{model="sim-model"}')).toBe(3);
    expect(sample(text, 'lote_calls_total{model="sim-model",outcome="succeeded"}')).toBe(3);
  });

  it("shows each model's pending requests and the age of its oldest unfinished batch, fleet-wide, 0 for a model with none", async () => {
    await start([{ name: "slow-model", max_concurrency: 2 }]);
    const hang = { sim: { hang: true } };
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: Array.from({ length: 5 }, (_, i) => chatRequest(`h${i}`, "slow-model", `wait ${i}`, hang)),
    });
    await until("two calls at the backend", () => (sim.stats().inFlight === 2 ? true : undefined));
    const text = await scrape();
    // Before, nothing said how much work waited: a stuck fleet and an idle one both showed 0 calls in flight.
    expect(sample(text, 'lote_pending_requests{model="slow-model"}')).toBe(3);
    expect(sample(text, 'lote_pending_requests{model="sim-model"}')).toBe(0);
    expect(sample(text, 'lote_oldest_batch_age_seconds{model="slow-model"}')).toBeGreaterThan(0);
    expect(sample(text, 'lote_oldest_batch_age_seconds{model="sim-model"}')).toBe(0);
    await call(client, "cancelBatch", { id: batch.id });
    await until("the queue empty", async () => (sample(await scrape(), 'lote_pending_requests{model="slow-model"}') === 0 ? true : undefined));
  });

  it("shows a call in flight while the backend holds it, and answers 404 beside /metrics", async () => {
    await start();
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: [chatRequest("stuck", "sim-model", "s", { sim: { hang: true } })],
    });
    await until("the call at the backend", () => (sim.stats().inFlight === 1 ? true : undefined));
    expect(sample(await scrape(), 'lote_calls_in_flight{model="sim-model"}')).toBe(1);
    expect((await fetch(metricsUrl.replace("/metrics", "/other"))).status).toBe(404);
    await call(client, "cancelBatch", { id: batch.id });
    await until("the cancelled call counted", async () => (sample(await scrape(), 'lote_calls_total{model="sim-model",outcome="cancelled"}') === 1 ? true : undefined));
  });
});

describe("Prometheus metrics of an API node", () => {
  it("counts API calls by method and status code, a stream when it ends", async () => {
    const db = await createTestDatabase();
    const port = await freePort();
    const lote = await startLoteProcess({ databaseUrl: db.url, role: "api", config: { metrics: { port } } });
    const client = batchServiceClient(`127.0.0.1:${lote.port}`);
    try {
      const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from(JSON.stringify({ model: "lote-sentiment", input: "bom" })) }] });
      await call(client, "getBatch", { id: batch.id });
      await expect(call(client, "getBatch", { id: "batch_nope" })).rejects.toMatchObject({ code: 5 });
      // No worker runs the request: a StreamResults without follow ends at once with nothing to send.
      await collect(client.streamResults({ batchId: batch.id }));
      const text = await scrapeMetrics(port);
      expect(sample(text, 'lote_api_calls_total{method="lote.v1.BatchService/CreateBatch",code="OK"}')).toBe(1);
      expect(sample(text, 'lote_api_calls_total{method="lote.v1.BatchService/GetBatch",code="OK"}')).toBe(1);
      expect(sample(text, 'lote_api_calls_total{method="lote.v1.BatchService/GetBatch",code="NotFound"}')).toBe(1);
      expect(sample(text, 'lote_api_calls_total{method="lote.v1.BatchService/StreamResults",code="OK"}')).toBe(1);
      expect(sample(text, 'lote_api_call_duration_seconds_count{method="lote.v1.BatchService/CreateBatch",code="OK"}')).toBe(1);
      // An API node has no worker pool: no dispatch series.
      expect(text).not.toContain("lote_calls_in_flight");
    } finally {
      client.close();
      await lote.stop();
      await db.drop();
    }
  });
});

describe("Prometheus metrics of an API node whose clients leave", () => {
  it("counts a stream the client cancelled as Canceled, not OK", async () => {
    const db = await createTestDatabase();
    const port = await freePort();
    const lote = await startLoteProcess({ databaseUrl: db.url, role: "api", config: { metrics: { port } } });
    const client = batchServiceClient(`127.0.0.1:${lote.port}`);
    try {
      const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from(JSON.stringify({ model: "lote-sentiment", input: "bom" })) }] });
      // No worker runs the request: the stream stays open until the client cancels it.
      const watch = client.watchBatch({ id: batch.id });
      watch.on("error", () => {});
      await new Promise((resolve) => watch.once("data", resolve));
      watch.cancel();
      const counted = (method: string) => until(`${method} counted`, async () => {
        const text = await scrapeMetrics(port);
        const lines = text.split("\n").filter((l) => l.startsWith(`lote_api_calls_total{method="lote.v1.BatchService/${method}"`));
        return lines.length > 0 ? lines : undefined;
      });
      // Before, it was counted with code="OK".
      expect(await counted("WatchBatch")).toEqual(['lote_api_calls_total{method="lote.v1.BatchService/WatchBatch",code="Canceled"} 1']);
    } finally {
      client.close();
      await lote.stop();
      await db.drop();
    }
  });
});

describe("the queue's series while Postgres does not answer", () => {
  // The dispatcher's part is not what is tested here: a node with no models in flight.
  const idle = { state: () => ({ models: {}, backlog: 0 }) } as unknown as Dispatcher;
  const models = buildConfig({ include_builtin_models: false, models: [{ name: "m", backend: { kind: "openai", urls: ["http://127.0.0.1:9"] } }] }, {}).models;

  it("answers a scrape without them, and with every other series, when the reading fails or hangs", async () => {
    for (const readQueue of [() => Promise.reject(new Error("connection refused")), () => new Promise<never>(() => {})]) {
      const metrics = new LoteMetrics();
      metrics.watch(idle, models, readQueue);
      const started = performance.now();
      const text = await metrics.registry.metrics();
      expect(performance.now() - started).toBeLessThan(5_000);
      expect(text).not.toContain('lote_pending_requests{model="m"}');
      expect(sample(text, "lote_completion_backlog")).toBe(0);
      expect(sample(text, 'lote_model_max_concurrency{model="m"}')).toBe(64);
    }
  });
});

describe("metrics configuration", () => {
  it("serves no metrics unless a port is set, and binds them to 127.0.0.1 by default", () => {
    expect(buildConfig({}, {}).metrics).toBeUndefined();
    expect(buildConfig({ metrics: { port: 9464 } }, {}).metrics).toEqual({ port: 9464, host: "127.0.0.1" });
    expect(buildConfig({}, { LOTE_METRICS_PORT: "9100", LOTE_METRICS_HOST: "0.0.0.0" }).metrics).toEqual({ port: 9100, host: "0.0.0.0" });
  });

  it("names the key and what was expected when the metrics settings are wrong", () => {
    expect(() => buildConfig({ metrics: { port: "ninety" } }, {})).toThrow(ConfigError);
    expect(() => buildConfig({ metrics: { port: "ninety" } }, {})).toThrow("config: metrics: `port`: expected an integer from 0 to 65535, got \"ninety\"");
    expect(() => buildConfig({ metrics: { port: 9464, path: "/m" } }, {})).toThrow("config: metrics: unknown key `path`; expected port, host");
    expect(() => buildConfig({ metrics: 9464 }, {})).toThrow("config: metrics: expected a mapping with port and host, got number");
  });
});
