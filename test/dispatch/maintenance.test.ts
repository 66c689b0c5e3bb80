import type pg from "pg";
import { afterEach, describe, expect, it, vi } from "vitest";
import { InFlight } from "../../src/dispatch/in-flight.ts";
import { Maintenance } from "../../src/dispatch/maintenance.ts";
import { createLogger } from "../../src/log/logger.ts";
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

describe("the maintenance loop", () => {
  const fixture = useMigratedDatabase();
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it("runs one tick at a time while Postgres is slow, instead of queueing every tick that came due, and stops without running them", async () => {
    // The loop's interval, caught so the test fires it itself: 50 intervals pass while the first tick is blocked.
    const realSetInterval = globalThis.setInterval;
    let fire: (() => void) | undefined;
    vi.spyOn(globalThis, "setInterval").mockImplementation(((fn: () => void, ms?: number) => {
      if (ms === 3_600_000) fire = fn;
      return realSetInterval(() => {}, 3_600_000);
    }) as typeof setInterval);

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
    expect(fire).toBeDefined();
    fire!();
    await until("the first tick waiting on the lock", async () => {
      const { rows } = await fixture.pool.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%expires_at <= now()%'");
      return rows[0].n > 0;
    }, 5_000);
    for (let i = 0; i < 50; i++) fire!();

    maintenance.stop();
    await locker.query("COMMIT");
    locked = false;
    await maintenance.idle();
    // Before, the 50 intervals queued 50 ticks behind the blocked one, which then ran back to back (each against a
    // Postgres already slow) and held up the node's stop until the last one had run.
    expect(counter.ticks).toBe(1);
  });
});
