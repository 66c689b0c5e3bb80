import { afterEach, describe, expect, it } from "vitest";
import { closeBackends, createBackends } from "../../src/backends/index.ts";
import { newBatchId } from "../../src/batch/ids.ts";
import { buildConfig } from "../../src/config/config.ts";
import { CallErrorLog, callErrorKind } from "../../src/dispatch/call-errors.ts";
import { Dispatcher } from "../../src/dispatch/index.ts";
import { createLogger } from "../../src/log/logger.ts";
import { createBatch, getBatch, Notifier, type Completion } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { freePort } from "../support/ports.ts";
import { until } from "../support/until.ts";

/** A logger whose JSON lines land in `lines`. */
function capturingLogger() {
  const lines: Record<string, any>[] = [];
  const logger = createLogger({ level: "info", destination: { write: (line: string) => void lines.push(JSON.parse(line)) } });
  return { logger, lines };
}

describe("logging backend call failures", () => {
  const fixture = useMigratedDatabase();
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it("logs a backend that refuses every call once, naming the model and the kind, not once per call", async () => {
    const downPort = await freePort(); // nothing listens there
    const config = buildConfig({
      include_builtin_models: false,
      models: [{ name: "sim-down", backend: { kind: "openai", urls: [`http://127.0.0.1:${downPort}`] }, max_attempts: 1, max_concurrency: 32 }],
      worker: { maintenance_interval_ms: 60_000 },
    }, {});
    const { logger, lines } = capturingLogger();
    const notifier = new Notifier({ connectionString: fixture.db.url, logger: createLogger({ level: "silent" }) });
    await notifier.start();
    cleanups.push(() => notifier.close());
    const backends = await createBackends(config.models);
    cleanups.push(() => closeBackends(backends));
    const dispatcher = new Dispatcher({ pool: fixture.pool, notifier, backends, models: config.models, worker: config.worker, workerId: "w-down", logger });
    const id = newBatchId();
    await createBatch(fixture.pool, {
      id, tenantId: "t1", endpoint: "/v1/chat/completions", model: "sim-down", priority: 0, completionWindowSeconds: 3600, metadata: {},
      items: Array.from({ length: 300 }, (_, i) => ({ customId: `c${i}`, body: JSON.stringify({ model: "sim-down", messages: [] }), estTokens: 1 })),
    });
    dispatcher.start();
    cleanups.push(() => dispatcher.stop(1_000));
    const done = await until("every request failed", async () => {
      const b = await getBatch(fixture.pool, "t1", id);
      return b?.status === "completed" ? b : undefined;
    }, 30_000);
    expect(done.failed).toBe(300);
    const failing = lines.filter((l) => l.msg === "backend calls failing");
    // Before, no line at all told of 300 failed calls; one per call would have been 300 lines.
    expect(failing).toHaveLength(1);
    expect(failing[0]).toMatchObject({ level: 40, model: "sim-down", workerId: "w-down", failures: 1, errors: { connection_refused: 1 }, lastBatchId: id });
  });
});

describe("CallErrorLog", () => {
  const failed = (statusCode: number, errorCode: string): Completion =>
    ({ outcome: "failed", batchId: "batch_x", idx: 0, attempt: 1, statusCode, requestId: "", errorCode, errorMessage: "m" });

  it("writes the first failure at once, then one line per model every 10 s counting the failures since by kind", () => {
    const { logger, lines } = capturingLogger();
    let now = 0;
    const log = new CallErrorLog(logger, () => now);
    log.record("m", "http_503", failed(503, "server_error"));
    for (let i = 0; i < 999; i++) log.record("m", "http_503", failed(503, "server_error"));
    log.record("other", "timeout", failed(0, "timeout"));
    now = 9_999;
    log.record("m", "timeout", failed(0, "timeout"));
    expect(lines.map((l) => [l.model, l.failures])).toEqual([["m", 1], ["other", 1]]);
    now = 10_000;
    log.record("m", "timeout", failed(0, "timeout"));
    expect(lines).toHaveLength(3);
    expect(lines[2]).toMatchObject({ model: "m", failures: 1001, errors: { http_503: 999, timeout: 2 }, sinceMs: 10_000, lastErrorCode: "timeout" });
  });

  it("labels an error by HTTP status or transport error, and leaves out what is not the backend's failure", () => {
    expect(callErrorKind(failed(429, "rate_limit_exceeded"))).toBe("http_429");
    expect(callErrorKind(failed(0, "connection_reset"))).toBe("connection_reset");
    expect(callErrorKind({ outcome: "retry", batchId: "b", idx: 0, attempt: 1, statusCode: 0, errorCode: "worker_shutdown", errorMessage: "", retryDelayMs: 0 })).toBeUndefined();
    expect(callErrorKind({ ...failed(0, "batch_cancelled"), outcome: "cancelled" } as Completion)).toBeUndefined();
    expect(callErrorKind(undefined)).toBeUndefined();
  });
});
