import * as grpc from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../../src/simulator/index.ts";
import { createApiKey } from "../../src/store/index.ts";
import { createTestDatabase, type TestDatabase, testPool } from "../support/database.ts";
import { batchServiceClient, call, chatRequest, collect } from "../support/grpc-client.ts";
import { startLoteProcess, type LoteProcess } from "../support/lote-process.ts";
import { metricOf, sample, scrapeMetrics } from "../support/metrics.ts";
import { freePort } from "../support/ports.ts";
import { proxyTo, type TcpProxy } from "../support/tcp-proxy.ts";
import { until } from "../support/until.ts";


function modelConfig(sim: Simulator, extra: Record<string, unknown> = {}) {
  return { name: "sim-model", backend: { kind: "openai", urls: [sim.h2cUrl] }, max_concurrency: 64, timeout_ms: 30_000, ...extra };
}

const requests = (n: number, prefix = "r", extra: Record<string, unknown> = {}) =>
  Array.from({ length: n }, (_, i) => chatRequest(`${prefix}${i}`, "sim-model", `hello ${i}`, extra));

/** Call metadata that authenticates as the tenant of `key`. */
function asTenant(key: string): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set("authorization", `Bearer ${key}`);
  return m;
}

describe("dispatch against the simulated backend (real processes, sockets and Postgres)", () => {
  let db: TestDatabase;
  let sim: Simulator;
  let pool: pg.Pool;
  const processes: LoteProcess[] = [];
  const clients: any[] = [];
  const proxies: TcpProxy[] = [];

  async function start(role: "serve" | "api" | "worker", config: Record<string, unknown>) {
    const p = await startLoteProcess({ databaseUrl: db.url, role, config });
    processes.push(p);
    return p;
  }
  function clientOf(p: LoteProcess) {
    const c = batchServiceClient(`127.0.0.1:${p.port}`);
    clients.push(c);
    return c;
  }
  async function waitForStatus(client: any, id: string, status: string, timeoutMs = 60_000) {
    return until(`batch ${id} ${status}`, async () => {
      const b = await call(client, "getBatch", { id });
      return b.status === status ? b : undefined;
    }, timeoutMs);
  }

  beforeAll(async () => {
    db = await createTestDatabase();
    pool = testPool(db.url);
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await Promise.all(processes.splice(0).map((p) => p.stop()));
    for (const p of proxies.splice(0)) await p.cut();
    await sim?.close();
  });
  afterAll(async () => {
    await pool.end();
    await db.drop();
  });

  it("completes a 10,000-request batch with exactly one result per custom_id", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", { models: [modelConfig(sim, { max_concurrency: 128 })] });
    const client = clientOf(lote);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(10_000) });
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED", 120_000);
    expect(done.requestCounts).toMatchObject({ total: "10000", completed: "10000", failed: "0" });
    expect(Number(done.usage.totalTokens)).toBeGreaterThan(0);
    const results = await collect(client.streamResults({ batchId: batch.id, rawJson: true }));
    const ids = results.map((r: any) => r.result.customId);
    expect(ids).toHaveLength(10_000);
    expect(new Set(ids).size).toBe(10_000);
    const { rows } = await pool.query("SELECT count(*)::int AS n, count(DISTINCT custom_id)::int AS d FROM lote.results WHERE batch_id = $1", [batch.id]);
    expect(rows[0]).toEqual({ n: 10_000, d: 10_000 });
  });

  it("finishes a batch with none lost and none duplicated when a worker process is SIGKILLed mid-batch", async () => {
    // 64 calls of 50 ms at a time: 2,000 requests take ~1.6 s, so the kill after 600 lands with both workers busy.
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 50 } });
    const config = { models: [modelConfig(sim, { max_concurrency: 64 })], worker: { lease_ms: 2_000, concurrency: 32, maintenance_interval_ms: 200 } };
    const api = await start("api", config);
    const [victim] = await Promise.all([start("worker", config), start("worker", config)]);
    const client = clientOf(api);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(2_000) });
    await until("a third of the batch", async () => {
      const b = await call(client, "getBatch", { id: batch.id });
      return Number(b.requestCounts.completed) > 600 ? b : undefined;
    });
    victim!.child.kill("SIGKILL");
    expect(await victim!.exited).toBe("SIGKILL");
    // What the victim held: its calls in flight and the completions it had not written yet, all lost with it.
    // Worker ids are w_<host>_<pid>_<random>, the host without underscores.
    const held = await pool.query("SELECT count(*)::int AS n FROM lote.items WHERE status = 'running' AND split_part(worker_id, '_', 3) = $1",
      [String(victim!.child.pid)]);
    expect(held.rows[0].n).toBeGreaterThanOrEqual(1);
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED", 90_000);
    expect(done.requestCounts).toMatchObject({ total: "2000", completed: "2000", failed: "0" });
    const { rows } = await pool.query("SELECT count(*)::int AS n, count(DISTINCT idx)::int AS d FROM lote.results WHERE batch_id = $1", [batch.id]);
    expect(rows[0]).toEqual({ n: 2_000, d: 2_000 });
    // Each of them was rescued when its lease ran out and run again: a second attempt.
    const rescued = await pool.query("SELECT count(*)::int AS n FROM lote.results WHERE batch_id = $1 AND attempts >= 2", [batch.id]);
    expect(rescued.rows[0].n).toBeGreaterThanOrEqual(held.rows[0].n);
  });

  it("runs the items of a claim whose answer never reached the worker: their lease runs out and they are rescued", async () => {
    // What a claim leaves when the connection drops after its COMMIT: rows running under a live worker's id that
    // it never called. Made here by hand while the worker is paused (SIGSTOP), so it cannot claim them first.
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 20 } });
    const config = { models: [modelConfig(sim)], worker: { lease_ms: 1_500, maintenance_interval_ms: 200 } };
    const api = await start("api", config);
    const worker = await start("worker", config);
    const workerId = await until("the worker registered", async () => (await pool.query(
      "SELECT id FROM lote.workers WHERE split_part(id, '_', 3) = $1", [String(worker.child.pid)])).rows[0]?.id as string | undefined);
    worker.child.kill("SIGSTOP");
    try {
      const client = clientOf(api);
      const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(30) });
      const orphaned = await pool.query(
        `UPDATE lote.items SET status = 'running', attempt = attempt + 1, worker_id = $2, lease_expires_at = now() + interval '1500 ms'
          WHERE batch_id = $1 AND idx < 5 AND status = 'pending'`, [batch.id, workerId]);
      expect(orphaned.rowCount).toBe(5);
      worker.child.kill("SIGCONT");
      // Before the fix the worker's heartbeat renewed every running row with its id, every 500 ms: these five
      // stayed running, and the batch unfinished, for as long as the worker lived.
      const done = await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED", 30_000);
      expect(done.requestCounts).toMatchObject({ total: "30", completed: "30", failed: "0" });
      const { rows } = await pool.query(
        "SELECT count(*)::int AS n, count(DISTINCT idx)::int AS d, count(*) FILTER (WHERE idx < 5 AND attempts = 2)::int AS rescued FROM lote.results WHERE batch_id = $1",
        [batch.id]);
      expect(rows[0]).toEqual({ n: 30, d: 30, rescued: 5 });
      expect(sim.stats().requests).toBe(30);
    } finally {
      worker.child.kill("SIGCONT");
    }
  });

  it("carries on over new connections when its Postgres connections go silent mid-batch, as in a failover", async () => {
    // The worker reaches Postgres through a proxy that then freezes every connection open at that moment: no data,
    // no FIN, no RST, as when the database host vanishes and its address moves to a new one. A query sent into such
    // a connection waits for TCP to give up (~15 minutes): before query timeouts the worker's claims, completions
    // and heartbeats all hung there, and so did the batch.
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 20 } });
    const { proxy, url: viaProxy } = await proxyTo(db.url);
    proxies.push(proxy);
    const model = modelConfig(sim, { max_concurrency: 16 });
    const api = await start("api", { models: [model] });
    const metricsPort = await freePort();
    const worker = await startLoteProcess({
      databaseUrl: viaProxy, role: "worker",
      config: { models: [model], query_timeout_ms: 1_000, metrics: { port: metricsPort }, worker: { lease_ms: 6_000, maintenance_interval_ms: 200 } },
    });
    processes.push(worker);
    const client = clientOf(api);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(1_500) });
    await until("a fifth of the batch", async () => {
      const b = await call(client, "getBatch", { id: batch.id });
      return Number(b.requestCounts.completed) >= 300 ? b : undefined;
    });
    expect(proxy.freeze()).toBeGreaterThanOrEqual(2);
    // A claim that committed just before the freeze, its answer lost, leaves rows running under the worker's id:
    // they wait out their 6 s lease and are rescued.
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED", 45_000);
    expect(done.requestCounts).toMatchObject({ total: "1500", completed: "1500", failed: "0" });
    const { rows } = await pool.query("SELECT count(*)::int AS n, count(DISTINCT idx)::int AS d FROM lote.results WHERE batch_id = $1", [batch.id]);
    expect(rows[0]).toEqual({ n: 1_500, d: 1_500 });
    // It noticed by itself: queries abandoned after 1 s, and the LISTEN connection replaced when its ping went unanswered.
    await until("the LISTEN connection replaced", async () => (worker.logs().includes("notification connection re-established") ? true : undefined), 10_000);
    expect(worker.logs()).toContain("Query read timeout");
    // And says so to Prometheus: at least the claims under way when the connections froze failed.
    expect(await metricOf(metricsPort, 'lote_dispatch_database_errors_total{operation="claim"}')).toBeGreaterThanOrEqual(1);
  });

  it("never exceeds max_concurrency, measured at the backend, with two worker processes", async () => {
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 30 } });
    const config = { models: [modelConfig(sim, { max_concurrency: 5 })], worker: { concurrency: 50 } };
    const api = await start("api", config);
    await Promise.all([start("worker", config), start("worker", config)]);
    const client = clientOf(api);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(300) });
    await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    expect(sim.stats().requests).toBe(300);
    expect(sim.stats().maxInFlight).toBeLessThanOrEqual(5);
    expect(sim.stats().maxInFlight).toBeGreaterThanOrEqual(3);
  });

  it("shares a model's max_concurrency between worker processes, and gives a stopped or killed worker's share back", async () => {
    // 8 slots and calls of 50 ms: 400 requests take ~2.5 s. Before worker shares, the worker whose calls ended took
    // every freed slot at once and the other found none: one claimed everything.
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 50 } });
    const model = modelConfig(sim, { max_concurrency: 8 });
    const api = await start("api", { models: [model] });
    const ports = [await freePort(), await freePort()];
    // A 2 s lease: a killed worker stops counting 2 s after its last heartbeat (every 667 ms).
    const workerConfig = (port: number) => ({ models: [model], metrics: { port }, worker: { lease_ms: 2_000 } });
    const workers = await Promise.all(ports.map((port) => start("worker", workerConfig(port))));
    const scrape = async (port: number) => {
      const text = await scrapeMetrics(port);
      return {
        workers: sample(text, 'lote_model_workers{model="sim-model"}'),
        share: sample(text, 'lote_model_share{model="sim-model"}'),
        claimed: sample(text, 'lote_claimed_items_total{model="sim-model"}') ?? 0,
      };
    };
    await until("both workers counting two workers", async () => {
      const seen = await Promise.all(ports.map(scrape));
      return seen.every((m) => m.workers === 2 && m.share === 4) ? true : undefined;
    }, 10_000);

    const client = clientOf(api);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(400) });
    await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    expect(sim.stats().requests).toBe(400);
    expect(sim.stats().maxInFlight).toBeLessThanOrEqual(8);
    const [a, b] = await Promise.all(ports.map(scrape));
    expect(a!.claimed + b!.claimed).toBe(400);
    // Each takes 4 of the 8 slots, so each runs about half.
    expect(a!.claimed).toBeGreaterThanOrEqual(150);
    expect(b!.claimed).toBeGreaterThanOrEqual(150);

    // A clean stop removes the worker from lote.workers and says so: the other takes all 8 slots at once.
    expect(await workers[1]!.stop()).toBe(0);
    // Its row went with it (no waiting for its 2 s to run out).
    const registered = await pool.query("SELECT count(*)::int AS n FROM lote.workers WHERE alive_until > now()");
    expect(registered.rows[0].n).toBe(1);
    await until("the remaining worker's share back to 8", async () => {
      const m = await scrape(ports[0]!);
      return m.workers === 1 && m.share === 8 ? true : undefined;
    }, 5_000);
    sim.resetStats();
    const second = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(40, "s") });
    await waitForStatus(client, second.id, "BATCH_STATUS_COMPLETED");
    expect(sim.stats().maxInFlight).toBe(8);

    // A worker that joins halves it again; one that is killed stops counting once its row is older than its lease.
    const victim = await start("worker", workerConfig(ports[1]!));
    await until("a share of 4 with the third worker", async () => ((await scrape(ports[0]!)).share === 4 ? true : undefined), 5_000);
    victim.child.kill("SIGKILL");
    expect(await victim.exited).toBe("SIGKILL");
    const killedAt = Date.now();
    await until("the share back to 8 after the kill", async () => ((await scrape(ports[0]!)).share === 8 ? true : undefined), 10_000);
    // Not before the victim's row went stale: 2 s after its last heartbeat, which was at most 667 ms before the kill.
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(2_000 - 700);
  });

  it("gives a worker whose worker.concurrency is small only what it can run, and the rest of the slots to the other", async () => {
    // 8 slots; one worker runs at most 2 calls. Equal shares (4 and 4) would leave 2 slots unused: 6 at once.
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 200 } });
    const model = modelConfig(sim, { max_concurrency: 8 });
    const api = await start("api", { models: [model] });
    const ports = [await freePort(), await freePort()];
    await start("worker", { models: [model], metrics: { port: ports[0] }, worker: { concurrency: 2 } });
    await start("worker", { models: [model], metrics: { port: ports[1] } });
    const share = (port: number) => metricOf(port, 'lote_model_share{model="sim-model"}');
    await until("shares of 2 and 6", async () => ((await share(ports[0]!)) === 2 && (await share(ports[1]!)) === 6 ? true : undefined), 10_000);
    const client = clientOf(api);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(48) });
    await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    expect(sim.stats().maxInFlight).toBe(8);
  });

  it.each([
    { over: "HTTP/1.1 (a socket per call)", sim: {}, url: (s: Simulator) => s.url },
    { over: "h2c to a server that allows 32 streams per connection", sim: { h2MaxConcurrentStreams: 32 }, url: (s: Simulator) => s.h2cUrl },
  ])("runs max_concurrency calls at once on a single replica over $over", async ({ sim: options, url }) => {
    // 100 slots and 300 calls of 500 ms: the first claim takes all 100, and all of them must reach the backend
    // together (500 ms leaves room for opening 100 sockets, or 4 sessions one after another, on a loaded machine).
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 500 }, ...options });
    const lote = await start("serve", { models: [modelConfig(sim, { max_concurrency: 100, backend: { kind: "openai", urls: [url(sim)] } })] });
    const client = clientOf(lote);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(300) });
    await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    expect(sim.stats().requests).toBe(300);
    expect(sim.stats().maxInFlight).toBe(100);
  });

  it("retries a 429 after the Retry-After it was given, fails a 400 at once, and bounds 5xx retries", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", { models: [modelConfig(sim, { max_attempts: 3 })] });
    const client = clientOf(lote);
    const started = Date.now();
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS",
      requests: [
        chatRequest("limited", "sim-model", "a", { sim: { fail_first: 2, status: 429, retry_after: "1" } }),
        chatRequest("bad", "sim-model", "b", { sim: { fail_first: 99, status: 400 } }),
        chatRequest("broken", "sim-model", "c", { sim: { fail_first: 99, status: 500, retry_after: "0" } }),
      ],
    });
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    const elapsed = Date.now() - started;
    expect(done.requestCounts).toMatchObject({ completed: "1", failed: "2" });
    const results = Object.fromEntries((await collect(client.streamResults({ batchId: batch.id }))).map((m: any) => [m.result.customId, m.result]));
    expect(results.limited.attempts).toBe(3);
    expect(results.limited.response.statusCode).toBe(200);
    // Two Retry-After: 1 waits happened before the third attempt.
    expect(elapsed).toBeGreaterThanOrEqual(2_000);
    expect(results.bad.attempts).toBe(1);
    expect(results.bad.error).toMatchObject({ statusCode: 400 });
    expect(results.broken.attempts).toBe(3);
    expect(results.broken.error).toMatchObject({ code: "server_error", statusCode: 500 });
  });

  it("fails an answer longer than max_response_bytes at once as response_too_large, and stores the others", async () => {
    sim = await startSimulator({ port: 0 });
    const backend = { kind: "openai", urls: [sim.h2cUrl], max_response_bytes: 100_000 };
    const lote = await start("serve", { models: [modelConfig(sim, { backend })] });
    const client = clientOf(lote);
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS",
      requests: [
        chatRequest("huge", "sim-model", "a", { sim: { answer_bytes: 5_000_000 } }),
        chatRequest("fits", "sim-model", "b", { sim: { answer_bytes: 90_000 } }),
        chatRequest("plain", "sim-model", "c"),
      ],
    });
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    expect(done.requestCounts).toMatchObject({ completed: "2", failed: "1" });
    const results = Object.fromEntries((await collect(client.streamResults({ batchId: batch.id }))).map((m: any) => [m.result.customId, m.result]));
    expect(results.huge.attempts).toBe(1);
    expect(results.huge.error).toMatchObject({ code: "response_too_large" });
    expect(results.huge.error.message).toContain("longer than 100000 bytes");
    expect(results.fits.response.statusCode).toBe(200);
    expect(sim.stats().requests).toBe(3);
  });

  it("retries a 200 answer that is not a JSON object as a protocol error, and fails it at max_attempts with what came back", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", { models: [modelConfig(sim, { max_attempts: 2 })] });
    const client = clientOf(lote);
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS",
      requests: [
        chatRequest("page", "sim-model", "a", { sim: { not_json: true } }),
        chatRequest("once", "sim-model", "b", { sim: { not_json: true, fail_first: 1 } }),
        chatRequest("plain", "sim-model", "c"),
      ],
    });
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    expect(done.requestCounts).toMatchObject({ completed: "2", failed: "1" });
    const results = Object.fromEntries((await collect(client.streamResults({ batchId: batch.id, rawJson: true }))).map((m: any) => [m.result.customId, m.result]));
    expect(results.page.attempts).toBe(2);
    expect(results.page.error.code).toBe("protocol_error");
    expect(results.page.error.message).toContain("HTTP 200 with a body that is not a JSON object");
    expect(results.page.error.message).toContain("Welcome to nginx!");
    expect(results.once.attempts).toBe(2);
    expect(JSON.parse(Buffer.from(results.once.response.bodyJson).toString()).choices).toHaveLength(1);
    expect(results.plain.attempts).toBe(1);
    expect(sim.stats().requests).toBe(5);
  });

  it("streams a batch of large answers whole, in order, a few megabytes per read", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", { models: [modelConfig(sim)] });
    const client = clientOf(lote);
    // 12 answers of 1 MB: each read of the stream stops near 4 MiB, so the stream goes on over four reads.
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(12, "big", { sim: { answer_bytes: 1_000_000 } }) });
    await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    const results = (await collect(client.streamResults({ batchId: batch.id, rawJson: true }))).map((m: any) => m.result);
    expect(results.map((r: any) => Number(Buffer.from(r.cursor, "base64url").toString().split(":").at(-1)))).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(new Set(results.map((r: any) => r.customId)).size).toBe(12);
    expect(results.every((r: any) => r.response.bodyJson.length >= 1_000_000)).toBe(true);
  });

  it("retries a connection reset and a per-request timeout, then succeeds", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", { models: [modelConfig(sim, { timeout_ms: 300 })] });
    const client = clientOf(lote);
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS",
      requests: [
        chatRequest("reset", "sim-model", "a", { sim: { fail_first: 1, reset: true } }),
        chatRequest("slow", "sim-model", "b", { sim: { fail_first: 1, hang: true } }),
      ],
    });
    await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    const results = Object.fromEntries((await collect(client.streamResults({ batchId: batch.id }))).map((m: any) => [m.result.customId, m.result]));
    expect(results.reset).toMatchObject({ attempts: 2, response: expect.objectContaining({ statusCode: 200 }) });
    expect(results.slow).toMatchObject({ attempts: 2, response: expect.objectContaining({ statusCode: 200 }) });
  });

  it("answers RunBatch inline in input order, and at the call's deadline returns what is unfinished as errors", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", { models: [modelConfig(sim)] });
    const client = clientOf(lote);
    const fast = await call(client, "runBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(20, "run") });
    expect(fast.batch.status).toBe("BATCH_STATUS_COMPLETED");
    expect(fast.results.map((r: any) => r.customId)).toEqual(Array.from({ length: 20 }, (_, i) => `run${i}`));
    expect(fast.results.every((r: any) => r.response?.statusCode === 200)).toBe(true);

    const started = Date.now();
    const slow = await call(client, "runBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS",
      requests: [chatRequest("quick", "sim-model", "q"), chatRequest("stuck", "sim-model", "s", { sim: { hang: true } })],
    }, new grpc.Metadata(), { deadline: started + 4_000 });
    expect(Date.now() - started).toBeLessThan(4_000);
    expect(slow.results[0]).toMatchObject({ customId: "quick", response: expect.objectContaining({ statusCode: 200 }) });
    expect(slow.results[1]).toMatchObject({ customId: "stuck", error: expect.objectContaining({ code: "deadline_exceeded" }) });
    // Nothing keeps running for a call nobody waits on any more.
    await waitForStatus(client, slow.batch.id, "BATCH_STATUS_CANCELLED", 10_000);
  });

  it("answers RunBatch before its deadline though cancelling the unfinished requests waits on a lock, and cancels them once it is free", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", { models: [modelConfig(sim)] });
    const client = clientOf(lote);
    const started = Date.now();
    const answer = call(client, "runBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: [chatRequest("stuck", "sim-model", "s", { sim: { hang: true } })],
    }, new grpc.Metadata(), { deadline: started + 4_000 });
    await until("the call at the backend", () => (sim.stats().inFlight === 1 ? true : undefined));
    const { rows } = await pool.query("SELECT id FROM lote.batches WHERE priority = 1000 ORDER BY created_at DESC LIMIT 1");
    // CancelBatch locks the batch row first: holding that lock stands for a commit that waits on a busy disk.
    const locker = await pool.connect();
    try {
      await locker.query("BEGIN");
      await locker.query("SELECT 1 FROM lote.batches WHERE id = $1 FOR UPDATE", [rows[0].id]);
      const slow = await answer;
      expect(Date.now() - started).toBeLessThan(4_000);
      expect(slow.batch).toMatchObject({ id: rows[0].id, status: "BATCH_STATUS_IN_PROGRESS" });
      expect(slow.results[0]).toMatchObject({ customId: "stuck", error: expect.objectContaining({ code: "deadline_exceeded" }) });
    } finally {
      await locker.query("ROLLBACK");
      locker.release();
    }
    await waitForStatus(client, rows[0].id, "BATCH_STATUS_CANCELLED", 10_000);
    await until("backend sees the abort", () => (sim.stats().inFlight === 0 ? true : undefined), 5_000);
  });

  it("cancels a running batch: pending items at once, in-flight calls aborted at the backend", async () => {
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 20_000 } });
    const lote = await start("serve", { models: [modelConfig(sim, { max_concurrency: 8 })] });
    const client = clientOf(lote);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(50) });
    await until("calls in flight", () => (sim.stats().inFlight === 8 ? true : undefined));
    const cancelling = await call(client, "cancelBatch", { id: batch.id });
    expect(cancelling.status).toBe("BATCH_STATUS_CANCELLING");
    expect(cancelling.requestCounts.cancelled).toBe("42");
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_CANCELLED", 10_000);
    expect(done.requestCounts.cancelled).toBe("50");
    await until("backend sees the aborts", () => (sim.stats().inFlight === 0 ? true : undefined), 5_000);
    const results = await collect(client.streamResults({ batchId: batch.id }));
    expect(results).toHaveLength(50);
    expect(results.every((m: any) => m.result.error.code === "batch_cancelled")).toBe(true);
  });

  it("aborts a worker node's calls when another node's API cancels their batch", async () => {
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 20_000 } });
    // Maintenance's fallback check once a minute: only the lote_status notification can reach the worker in time.
    const config = { models: [modelConfig(sim, { max_concurrency: 8 })], worker: { maintenance_interval_ms: 60_000 } };
    const api = await start("api", config);
    await start("worker", config);
    const client = clientOf(api);
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(20) });
    await until("calls in flight", () => (sim.stats().inFlight === 8 ? true : undefined));
    expect((await call(client, "cancelBatch", { id: batch.id })).status).toBe("BATCH_STATUS_CANCELLING");
    await until("backend sees the aborts", () => (sim.stats().inFlight === 0 ? true : undefined), 5_000);
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_CANCELLED", 5_000);
    expect(done.requestCounts).toMatchObject({ total: "20", cancelled: "20", completed: "0" });
  });

  it("expires a batch at expires_at: unfinished items get batch_expired, finished ones stay", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", { models: [modelConfig(sim, { max_concurrency: 4 })], worker: { maintenance_interval_ms: 100 } });
    const client = clientOf(lote);
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS",
      requests: [...requests(3, "fast"), ...requests(5, "slow", { sim: { hang: true } })],
    });
    await until("fast ones done", async () => {
      const b = await call(client, "getBatch", { id: batch.id });
      return b.requestCounts.completed === "3" ? b : undefined;
    });
    // The window is at least a minute; move the deadline instead of waiting for it.
    await pool.query("UPDATE lote.batches SET expires_at = now() WHERE id = $1", [batch.id]);
    const done = await waitForStatus(client, batch.id, "BATCH_STATUS_EXPIRED", 10_000);
    expect(done.requestCounts).toMatchObject({ completed: "3", expired: "5" });
    const results = await collect(client.streamResults({ batchId: batch.id }));
    const byId = Object.fromEntries(results.map((m: any) => [m.result.customId, m.result]));
    expect(byId.fast0.response.statusCode).toBe(200);
    expect(byId.slow0.error.code).toBe("batch_expired");
    await until("hung calls aborted", () => (sim.stats().inFlight === 0 ? true : undefined), 5_000);
  });

  it("finishes a 10-request batch submitted behind a 20,000-request one while the big one still runs", async () => {
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 10 } });
    const lote = await start("serve", { models: [modelConfig(sim, { max_concurrency: 16 })] });
    const client = clientOf(lote);
    const big = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(20_000, "big") });
    await until("big batch running", async () => {
      const b = await call(client, "getBatch", { id: big.id });
      return Number(b.requestCounts.completed) > 100 ? b : undefined;
    });
    const small = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(10, "small") });
    await waitForStatus(client, small.id, "BATCH_STATUS_COMPLETED", 10_000);
    const bigNow = await call(client, "getBatch", { id: big.id });
    expect(bigNow.status).toBe("BATCH_STATUS_IN_PROGRESS");
    expect(Number(bigNow.requestCounts.completed)).toBeLessThan(20_000);
    await call(client, "cancelBatch", { id: big.id });
  });

  /**
   * Four batches of one tenant, then one of another, all queued before a worker starts, so the order of the claims
   * alone decides who finishes first: how many of the four batches' results were written by the time the other
   * tenant's batch completed.
   */
  async function resultsOfManyWhenOneEnds(o: { latencyMs: number; maxConcurrency: number; perBatch: number; tenants: [string, string] }) {
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: o.latencyMs } });
    const config = { models: [modelConfig(sim, { max_concurrency: o.maxConcurrency })] };
    const api = await startLoteProcess({ databaseUrl: db.url, role: "api", config, env: { LOTE_AUTH_REQUIRED: "true" } });
    processes.push(api);
    const keys = { many: await createApiKey(pool, o.tenants[0]), one: await createApiKey(pool, o.tenants[1]) };
    const client = clientOf(api);
    const many = [];
    for (let b = 0; b < 4; b++) {
      many.push(await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(o.perBatch, `m${b}-`) }, asTenant(keys.many)));
    }
    const one = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(o.perBatch, "o-") }, asTenant(keys.one));
    await start("worker", config);
    await until(`batch ${one.id} completed`, async () => {
      const b = await call(client, "getBatch", { id: one.id }, asTenant(keys.one));
      return b.status === "BATCH_STATUS_COMPLETED" ? b : undefined;
    }, 60_000);
    const { rows } = await pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM lote.results WHERE batch_id = ANY($1::text[]) AND created_at <= (SELECT max(created_at) FROM lote.results WHERE batch_id = $2)",
      [many.map((b) => b.id), one.id]);
    return rows[0]!.n;
  }

  it("shares a model between tenants, not batches: one tenant's four batches do not crowd out another tenant's one", async () => {
    const n = await resultsOfManyWhenOneEnds({ latencyMs: 5, maxConcurrency: 4, perBatch: 40, tenants: ["tenant-many", "tenant-one"] });
    // Half the capacity each: tenant-many finished about 40 of its 160 by then. Shared per batch (each of the five
    // batches a fifth), it would have finished about 160, all of them.
    expect(n).toBeGreaterThanOrEqual(30);
    expect(n).toBeLessThanOrEqual(60);
  });

  it("alternates a model with one slot between tenants, not batches: one tenant's four batches take half the calls", async () => {
    // One slot: every claim comes when no call is in flight, so calls in flight never tell the tenants apart.
    const n = await resultsOfManyWhenOneEnds({ latencyMs: 2, maxConcurrency: 1, perBatch: 20, tenants: ["tenant-many-1", "tenant-one-1"] });
    // One call each in turn: tenant-many had about 20 of its 80 done when tenant-one's 20 were. Ties given to the
    // lowest position made each of the five batches advance alike, and tenant-many finished about 80, all of them.
    expect(n).toBeGreaterThanOrEqual(15);
    expect(n).toBeLessThanOrEqual(30);
  });

  it("gives two tenants half each of two workers' slots, three on each, though one tenant's batch came much later", async () => {
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 20 } });
    const config = { models: [modelConfig(sim, { max_concurrency: 6 })] };
    const api = await startLoteProcess({ databaseUrl: db.url, role: "api", config, env: { LOTE_AUTH_REQUIRED: "true" } });
    processes.push(api);
    const keys = { early: await createApiKey(pool, "tenant-early"), late: await createApiKey(pool, "tenant-late") };
    const client = clientOf(api);
    const completed = async (id: string, key: string) => Number((await call(client, "getBatch", { id }, asTenant(key))).requestCounts.completed);
    await start("worker", config);
    await start("worker", config);
    const early = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(5_000, "e") }, asTenant(keys.early));
    await until("the early batch well under way", async () => (await completed(early.id, keys.early)) >= 400 || undefined);
    const late = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(5_000, "l") }, asTenant(keys.late));
    await until("the late batch under way", async () => (await completed(late.id, keys.late)) >= 400 || undefined, 30_000);
    // Results of each tenant between the late batch's 100th and 400th: both had work all along.
    const { rows } = await pool.query<{ n: number }>(
      `WITH w AS (SELECT min(created_at) FILTER (WHERE idx >= 100) AS a, max(created_at) AS b FROM lote.results WHERE batch_id = $2 AND idx < 400)
       SELECT (SELECT count(*)::int FROM lote.results r, w WHERE r.batch_id = $1 AND r.created_at BETWEEN w.a AND w.b) AS n`,
      [early.id, late.id]);
    // ~300 each. A tie between the two tenants (on 3 slots, one holding 1 and the other 2, whenever a call of the one
    // holding 2 ended) went to the lower position, the late batch's: the late tenant held 2 slots of each worker's 3,
    // and the early one had finished ~150.
    expect(rows[0]!.n).toBeGreaterThanOrEqual(220);
    expect(rows[0]!.n).toBeLessThanOrEqual(400);
    await call(client, "cancelBatch", { id: early.id }, asTenant(keys.early));
    await call(client, "cancelBatch", { id: late.id }, asTenant(keys.late));
  });

  it("runs a higher-priority batch submitted later first, and the lower one while the higher one waits for its retries", async () => {
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 5 } });
    const lote = await start("serve", { models: [modelConfig(sim, { max_concurrency: 4 })] });
    const client = clientOf(lote);
    const completed = async (id: string) => Number((await call(client, "getBatch", { id })).requestCounts.completed);
    const low = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(5_000, "low"), priority: 0 });
    await until("the low-priority batch running", async () => (await completed(low.id)) >= 50 || undefined);
    // 40 requests of 5 ms on 4 slots: ~50 ms of calls, if they take every slot that frees.
    const high = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(40, "high"), priority: 5 });
    const lowBefore = await completed(low.id);
    await waitForStatus(client, high.id, "BATCH_STATUS_COMPLETED", 10_000);
    // The low batch's 4 calls in flight end, and a few more whose claims were on their way; not a share of the slots.
    expect((await completed(low.id)) - lowBefore).toBeLessThan(40);

    // Every request of this one is answered 429 with Retry-After: 2 once: for those 2 s the low batch has the slots.
    const waiting = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CHAT_COMPLETIONS", priority: 5,
      requests: requests(8, "wait", { sim: { fail_first: 1, status: 429, retry_after: "2" } }),
    });
    await until("the high-priority requests waiting for their retry", async () => {
      const { rows } = await pool.query("SELECT count(*)::int AS n FROM lote.items WHERE batch_id = $1 AND status = 'pending' AND attempt = 1", [waiting.id]);
      return rows[0].n === 8 || undefined;
    });
    const lowWhileWaiting = await completed(low.id);
    await until("the low-priority batch running while the high one waits", async () => (await completed(low.id)) >= lowWhileWaiting + 100 || undefined, 1_500);
    await waitForStatus(client, waiting.id, "BATCH_STATUS_COMPLETED", 10_000);
    await call(client, "cancelBatch", { id: low.id });
  });

  it("classifies the three Portuguese sentences with the built-in model", async () => {
    sim = await startSimulator({ port: 0 });
    const lote = await start("serve", {});
    const client = clientOf(lote);
    const sentences = ["Eu amo estudar IA!", "Estou muito cansado hoje", "Esse filme foi terrível"];
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY",
      requests: sentences.map((input, i) => ({ customId: `pt${i}`, bodyJson: Buffer.from(JSON.stringify({ model: "lote-sentiment", input })) })),
    });
    await waitForStatus(client, batch.id, "BATCH_STATUS_COMPLETED");
    const results = await collect(client.streamResults({ batchId: batch.id, rawJson: true }));
    const labels = Object.fromEntries(results.map((m: any) => {
      const data = JSON.parse(Buffer.from(m.result.response.bodyJson).toString()).data[0];
      expect(data.confidence).toBeGreaterThan(0.5);
      return [m.result.customId, data.label];
    }));
    expect(labels).toEqual({ pt0: "positive", pt1: "negative", pt2: "negative" });
  });

  it("keeps accepted requests when the node is stopped: SIGTERM exits 0 and a new node finishes the batch", async () => {
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 50 } });
    const config = { models: [modelConfig(sim, { max_concurrency: 8 })], shutdown_grace_ms: 200 };
    const first = await start("serve", config);
    const batch = await call(clientOf(first), "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(200) });
    await until("some progress", () => (sim.stats().requests > 20 ? true : undefined));
    expect(await first.stop()).toBe(0);
    const second = await start("serve", config);
    const done = await waitForStatus(clientOf(second), batch.id, "BATCH_STATUS_COMPLETED");
    expect(done.requestCounts.completed).toBe("200");
    const { rows } = await pool.query("SELECT count(*)::int AS n, count(DISTINCT idx)::int AS d FROM lote.results WHERE batch_id = $1", [batch.id]);
    expect(rows[0]).toEqual({ n: 200, d: 200 });
  });

  it("stops within one shutdown_grace_ms when both an API call and backend calls are still running", async () => {
    sim = await startSimulator({ port: 0 });
    const graceMs = 3_000;
    // A model of its own: the requests left pending here (they never get an answer) must not reach later tests.
    const lote = await start("serve", { models: [modelConfig(sim, { name: "grace-model" })], shutdown_grace_ms: graceMs });
    const client = clientOf(lote);
    const hanging = (id: string) => chatRequest(id, "grace-model", id, { sim: { hang: true } });
    // Backend calls that never answer, and a RunBatch (a unary API call) waiting for one of them.
    await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: ["h0", "h1", "h2"].map(hanging) });
    const running = call(client, "runBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: [hanging("run0")] },
      new grpc.Metadata(), { deadline: Date.now() + 60_000 }).catch((err: grpc.ServiceError) => err);
    await until("four calls at the backend", () => (sim.stats().inFlight === 4 ? true : undefined));
    const started = Date.now();
    expect(await lote.stop()).toBe(0);
    const took = Date.now() - started;
    // Before, the API's grace ran out first and then the workers' (6 s and more).
    expect(took).toBeGreaterThanOrEqual(graceMs);
    expect(took).toBeLessThan(1.75 * graceMs);
    await running;
  });

  it("holds the leases of its calls in flight while it stops, so no other node calls them again", async () => {
    // Calls of 4 s against leases of 1.5 s: the stopping worker's grace period outlasts its leases twice over.
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 4_000 } });
    const config = {
      models: [modelConfig(sim, { max_concurrency: 2 })], shutdown_grace_ms: 20_000,
      worker: { lease_ms: 1_500, maintenance_interval_ms: 200 },
    };
    const api = await start("api", config);
    const stopping = await start("worker", config);
    const batch = await call(clientOf(api), "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: requests(2) });
    await until("both calls at the backend", () => (sim.stats().requests === 2 ? true : undefined));
    // Another node, whose rescuer looks for lapsed leases every 200 ms.
    await start("worker", config);
    expect(await stopping.stop()).toBe(0);
    const done = await waitForStatus(clientOf(api), batch.id, "BATCH_STATUS_COMPLETED", 30_000);
    expect(done.requestCounts).toMatchObject({ total: "2", completed: "2", failed: "0" });
    const { rows } = await pool.query("SELECT idx, attempts FROM lote.results WHERE batch_id = $1 ORDER BY idx", [batch.id]);
    // Before, the heartbeat stopped with the claims: both leases lapsed during the stop, the other node ran both
    // requests again (attempts 2, four calls), and the stopping node's answers were fenced out.
    expect(rows).toEqual([{ idx: 0, attempts: 1 }, { idx: 1, attempts: 1 }]);
    expect(sim.stats().requests).toBe(2);
  });
});
