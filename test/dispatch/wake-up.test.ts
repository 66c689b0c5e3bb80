import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { createBackends, closeBackends } from "../../src/backends/index.ts";
import { newBatchId } from "../../src/batch/ids.ts";
import { buildConfig } from "../../src/config/config.ts";
import { Dispatcher } from "../../src/dispatch/index.ts";
import { createLogger } from "../../src/log/logger.ts";
import { startSimulator } from "../../src/simulator/index.ts";
import { cancelBatch, claimItems, completeItems, createBatch, getBatch, Notifier, type NewBatch } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { startLoteProcess } from "../support/lote-process.ts";
import { metricOf } from "../support/metrics.ts";
import { freePort } from "../support/ports.ts";
import { until } from "../support/until.ts";

const sentences = ["Eu amo estudar IA!", "Estou muito cansado hoje", "Esse filme foi terrível"];
function sentimentBatch(id: string, n: number): NewBatch {
  return {
    id, tenantId: "t1", endpoint: "/classify", model: "lote-sentiment", priority: 0, completionWindowSeconds: 3600, metadata: {},
    items: Array.from({ length: n }, (_, i) => ({
      customId: `pt-${i}`, body: JSON.stringify({ model: "lote-sentiment", input: sentences[i % 3] }), estTokens: 10,
    })),
  };
}

/**
 * The pool the dispatcher gets, with one hook: while `hold` is armed, a claim of `model` runs in Postgres as usual
 * but its answer is kept from the dispatcher until the test lets it go. That pins the one moment the race needs:
 * a claim that read an empty queue is still on its way back when a batch's notification arrives.
 */
function poolHoldingClaims(pool: pg.Pool, model: string) {
  let release: (() => void) | undefined;
  let held: Promise<void> | undefined;
  let reached: (() => void) | undefined;
  const claimHeld = new Promise<void>((resolve) => (reached = resolve));
  const gated = new Proxy(pool, {
    get(target, key, receiver) {
      if (key !== "query") return Reflect.get(target, key, receiver);
      return async (config: unknown, values?: unknown) => {
        const result = await target.query(config as pg.QueryConfig, values as unknown[]);
        const c = config as { name?: string; values?: unknown[] };
        if (held && c?.name === "lote.claim_items" && c.values?.[0] === model) {
          reached!();
          await held;
        }
        return result;
      };
    },
  });
  return {
    pool: gated,
    arm: () => (held = new Promise((resolve) => (release = resolve))),
    claimHeld,
    release: () => {
      const r = release;
      held = undefined;
      r?.();
    },
  };
}

describe("dispatcher wake-ups", () => {
  const fixture = useMigratedDatabase();
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /**
   * A dispatcher of `config`'s models on its own notifier, whose first claim of `model` is held on its way back
   * (`poolHoldingClaims`) until the test releases it. Stopped after the test.
   */
  async function startGatedDispatcher(config: ReturnType<typeof buildConfig>, model: string, workerId: string) {
    const logger = createLogger({ level: "silent" });
    const notifier = new Notifier({ connectionString: fixture.db.url, logger });
    await notifier.start();
    cleanups.push(() => notifier.close());
    const backends = await createBackends(config.models);
    cleanups.push(() => closeBackends(backends));
    const gate = poolHoldingClaims(fixture.pool, model);
    gate.arm();
    const dispatcher = new Dispatcher({
      pool: gate.pool, notifier, backends, models: config.models, worker: config.worker, workerId, logger,
    });
    dispatcher.start();
    cleanups.push(async () => {
      gate.release();
      await dispatcher.stop(1_000);
    });
    return { notifier, gate, dispatcher };
  }

  it("claims a batch whose notification arrived while a claim was in flight, without waiting for the next poll", async () => {
    // A minute between polls: if the notification is lost, nothing claims the batch within the test's 5 s.
    const config = buildConfig({ worker: { poll_interval_ms: 60_000, maintenance_interval_ms: 60_000 } }, {});
    const { notifier, gate, dispatcher } = await startGatedDispatcher(config, "lote-sentiment", "w-wake");

    // The loop's first claim found nothing and is held on its way back.
    await gate.claimHeld;
    const heard = new Promise<void>((resolve) => notifier.on("notification", (channel, payload) => {
      if (channel === "lote_work" && payload === "lote-sentiment") resolve();
    }));
    const id = newBatchId();
    await createBatch(fixture.pool, sentimentBatch(id, 3));
    // The dispatcher's listener was added first, so it has seen the notification by the time this one runs.
    await heard;
    gate.release();

    const done = await until("the batch completed", async () => {
      const b = await getBatch(fixture.pool, "t1", id);
      return b?.status === "completed" ? b : undefined;
    }, 5_000);
    expect(done.completed).toBe(3);
  });

  it("takes the model's slots another node frees by finishing its calls, though no notification says so", async () => {
    // Another node (played by this test through the store) runs all 8 of the model's slots; a second batch waits.
    const model = { name: "lote-sentiment", endpoints: ["/classify"], backend: { kind: "builtin" }, max_concurrency: 8 };
    const first = newBatchId();
    await createBatch(fixture.pool, sentimentBatch(first, 8));
    const other = await claimItems(fixture.pool, {
      model: "lote-sentiment", limit: 8, workerId: "w_other_1_x", leaseMs: 60_000, maxConcurrency: 8, requestsPerMinute: 0, tokensPerMinute: 0,
    });
    expect(other).toHaveLength(8);
    const second = newBatchId();
    await createBatch(fixture.pool, sentimentBatch(second, 6));
    // A worker that polls once a minute: the slots are all taken, so its claims come back empty.
    const metricsPort = await freePort();
    const worker = await startLoteProcess({
      databaseUrl: fixture.db.url, role: "worker",
      config: { models: [model], worker: { poll_interval_ms: 60_000 }, metrics: { port: metricsPort } },
    });
    cleanups.push(async () => void (await worker.stop()));
    // Its first claim ran (and, every slot taken, came back empty). "dispatcher started" is logged before it: a
    // completion written before that claim let the claim take the freed slots, and the test passed with the bug.
    await until("the worker's first claims", async () =>
      ((await metricOf(metricsPort, 'lote_claims_total{model="lote-sentiment"}')) ?? 0) >= 1 ? true : undefined);
    const { rows: pending } = await fixture.pool.query("SELECT count(*)::int AS n FROM lote.items WHERE batch_id = $1 AND status = 'pending'", [second]);
    expect(pending[0].n).toBe(6);
    // The other node's calls end and it writes them, as its completer does: a lote_batch notification, no lote_work.
    await completeItems(fixture.pool, other.map((c) => ({
      outcome: "succeeded" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 200, requestId: "r",
      body: '{"ok":true}', inputTokens: 1, outputTokens: 1, totalTokens: 2,
    })));
    const done = await until("the second batch completed by the worker", async () => {
      const b = await getBatch(fixture.pool, "t1", second);
      return b?.status === "completed" ? b : undefined;
    }, 5_000);
    expect(done.completed).toBe(6);
  });
  it("aborts the calls of a claim whose batch was cancelled while the claim's answer was on its way, without waiting for maintenance", async () => {
    // Calls that take a minute, and a minute between maintenance's abort checks: unless the cancel heard before
    // the claim's answer aborts the calls, the batch stays CANCELLING far past the test's 5 s.
    const sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 60_000 } });
    cleanups.push(() => sim.close());
    const config = buildConfig({
      models: [{ name: "sim-slow", backend: { kind: "openai", urls: [sim.h2cUrl] }, max_concurrency: 8, timeout_ms: 120_000 }],
      worker: { poll_interval_ms: 60_000, maintenance_interval_ms: 60_000 },
    }, {});
    const id = newBatchId();
    await createBatch(fixture.pool, {
      id, tenantId: "t1", endpoint: "/v1/chat/completions", model: "sim-slow", priority: 0, completionWindowSeconds: 3600, metadata: {},
      items: Array.from({ length: 4 }, (_, i) => ({
        customId: `c-${i}`, body: JSON.stringify({ model: "sim-slow", messages: [{ role: "user", content: `hi ${i}` }] }), estTokens: 10,
      })),
    });
    const { notifier, gate } = await startGatedDispatcher(config, "sim-slow", "w-cancel");

    // The first claim took all 4 items (they are running in Postgres) and its answer is held.
    await gate.claimHeld;
    const heard = new Promise<void>((resolve) => notifier.on("notification", (channel, payload) => {
      if (channel === "lote_status" && payload === `cancelling ${id}`) resolve();
    }));
    expect(await cancelBatch(fixture.pool, "t1", id)).toBe("cancelling");
    // The dispatcher's listener was added first: it has heard the cancel, with nothing of the batch in flight yet.
    await heard;
    gate.release();

    const done = await until("the batch cancelled", async () => {
      const b = await getBatch(fixture.pool, "t1", id);
      return b?.status === "cancelled" ? b : undefined;
    }, 5_000);
    expect(done.cancelled).toBe(4);
    expect(sim.stats().inFlight).toBe(0);
  });
});
