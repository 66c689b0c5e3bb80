import type pg from "pg";
import { afterEach, describe, expect, it, vi } from "vitest";
import { newBatchId } from "../../src/batch/ids.ts";
import { buildConfig } from "../../src/config/config.ts";
import { InFlight } from "../../src/dispatch/in-flight.ts";
import { Maintenance } from "../../src/dispatch/maintenance.ts";
import { createLogger } from "../../src/log/logger.ts";
import { claimItems, createBatch, getResults } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { until } from "../support/until.ts";

/** The pool maintenance gets, counting the searches for due batches: one per tick that ran. */
function countingTicks(pool: pg.Pool) {
  const counter = { ticks: 0 };
  const counted = new Proxy(pool, {
    get(target, key, receiver) {
      if (key !== "query") return Reflect.get(target, key, receiver);
      return (config: unknown, values?: unknown) => {
        if (typeof config === "string" && config.includes("expires_at <= now()")) counter.ticks++;
        return target.query(config as pg.QueryConfig, values as unknown[]);
      };
    },
  });
  return { pool: counted, counter };
}

/** Catches the maintenance interval (asked for with `intervalMs`) so that the test runs each tick itself. */
function catchInterval(intervalMs: number): { fire: () => void } {
  const realSetInterval = globalThis.setInterval;
  const caught: { fire: () => void } = { fire: () => { throw new Error("no interval caught"); } };
  vi.spyOn(globalThis, "setInterval").mockImplementation(((fn: () => void, ms?: number) => {
    if (ms === intervalMs) caught.fire = fn;
    return realSetInterval(() => {}, 3_600_000);
  }) as typeof setInterval);
  return caught;
}

describe("the maintenance loop", () => {
  const fixture = useMigratedDatabase();
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it("runs one tick at a time while Postgres is slow, instead of queueing every tick that came due, and stops without running them", async () => {
    // The loop's interval, caught so the test fires it itself: 50 intervals pass while the first tick is blocked.
    const interval = catchInterval(3_600_000);

    // Postgres "slow": a lock every maintenance statement on lote.batches waits for.
    const locker = await fixture.pool.connect();
    let locked = true;
    cleanups.push(async () => {
      if (locked) await locker.query("ROLLBACK");
      locker.release();
    });
    await locker.query("BEGIN");
    await locker.query("LOCK TABLE lote.batches IN ACCESS EXCLUSIVE MODE");

    const { pool, counter } = countingTicks(fixture.pool);
    const maintenance = new Maintenance({
      pool, bulkPool: fixture.pool, models: new Map(), inFlight: new InFlight(), logger: createLogger({ level: "silent" }),
      intervalMs: 3_600_000,
    });
    maintenance.start();
    interval.fire();
    await until("the first tick waiting on the lock", async () => {
      const { rows } = await fixture.pool.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%expires_at <= now()%'");
      return rows[0].n > 0;
    }, 5_000);
    for (let i = 0; i < 50; i++) interval.fire();

    maintenance.stop();
    await locker.query("COMMIT");
    locked = false;
    await maintenance.idle();
    // Before, the 50 intervals queued 50 ticks behind the blocked one, which then ran back to back (each against a
    // Postgres already slow) and held up the node's stop until the last one had run.
    expect(counter.ticks).toBe(1);
  });

  it("leaves a lapsed lease of a model it does not serve to a node that does, which applies that model's max_attempts", async () => {
    const logger = createLogger({ level: "silent" });
    const models = (m: Record<string, unknown>[]) => buildConfig({ include_builtin_models: false, models: m }, {}).models;
    const backend = { kind: "openai", urls: ["http://127.0.0.1:9"] };
    // A node of another model, and one of this model, which allows a single call per request.
    const otherNode = models([{ name: "sim-other", backend }]);
    const modelNode = models([{ name: "sim-once", backend, max_attempts: 1 }]);
    const id = newBatchId();
    await createBatch(fixture.pool, {
      id, tenantId: "t1", endpoint: "/v1/chat/completions", model: "sim-once", priority: 0, completionWindowSeconds: 3600, metadata: {},
      items: [{ customId: "c0", body: JSON.stringify({ model: "sim-once", messages: [] }), estTokens: 1 }],
    });
    // Called by a worker that then died: its 1 ms lease lapses at once.
    const [claimed] = await claimItems(fixture.pool, {
      model: "sim-once", limit: 1, workerId: "w-dead", leaseMs: 1, maxConcurrency: 10, requestsPerMinute: 0, tokensPerMinute: 0,
    });
    expect(claimed!.attempt).toBe(1);
    await until("the lease lapsed", async () => {
      const { rows } = await fixture.pool.query("SELECT lease_expires_at < now() AS lapsed FROM lote.items WHERE batch_id = $1", [id]);
      return rows[0].lapsed === true;
    }, 5_000);
    const tick = async (config: typeof otherNode) => {
      const interval = catchInterval(3_600_001);
      const maintenance = new Maintenance({ pool: fixture.pool, bulkPool: fixture.pool, models: config, inFlight: new InFlight(), logger, intervalMs: 3_600_001 });
      maintenance.start();
      interval.fire();
      maintenance.stop();
      await maintenance.idle();
      vi.restoreAllMocks();
    };
    const item = async () => (await fixture.pool.query("SELECT status, attempt FROM lote.items WHERE batch_id = $1", [id])).rows[0];

    // Before, the other model's node rescued it with the default of 5 attempts: back to pending, for a second call.
    await tick(otherNode);
    expect(await item()).toEqual({ status: "running", attempt: 1 });
    await tick(modelNode);
    expect(await item()).toEqual({ status: "failed", attempt: 1 });
    const { rows } = await getResults(fixture.pool, id, 0n, 10);
    expect(rows.map((r) => r.errorCode)).toEqual(["lease_expired"]);
  });
});
