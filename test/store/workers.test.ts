import pino from "pino";
import { describe, expect, it } from "vitest";
import { markWorkerAlive, Notifier, retireWorker } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { until } from "../support/until.ts";

describe("the worker registry (lote.workers)", () => {
  const fixture = useMigratedDatabase();
  /** Capacity 10 for each model unless given as "model:capacity". */
  const alive = (workerId: string, models: string[], liveMs = 30_000) => markWorkerAlive(fixture.pool, {
    workerId, liveMs, capacities: new Map(models.map((m) => m.split(":")).map(([m, c]) => [m!, Number(c ?? 10)])),
  });

  it("answers the capacities of the other workers alive for each model, each alive for its own lease_ms", async () => {
    expect(await alive("wa", ["m1", "m2"])).toEqual(new Map([["m1", []], ["m2", []]]));
    expect(await alive("wb", ["m1:3"], 60_000)).toEqual(new Map([["m1", [10]]]));
    expect(await alive("wa", ["m1", "m2"])).toEqual(new Map([["m1", [3]], ["m2", []]]));

    // wb renewed 50 s ago with its 60 s lease still counts, whatever the lease of the worker asking; 70 s ago, not.
    await fixture.pool.query("UPDATE lote.workers SET alive_until = now() + interval '10 seconds' WHERE id = 'wb'");
    expect(await alive("wa", ["m1", "m2"], 1_000)).toEqual(new Map([["m1", [3]], ["m2", []]]));
    await fixture.pool.query("UPDATE lote.workers SET alive_until = now() - interval '10 seconds' WHERE id = 'wb'");
    expect(await alive("wa", ["m1", "m2"], 3_600_000)).toEqual(new Map([["m1", []], ["m2", []]]));
    // Renewed, with another capacity, it counts again.
    expect(await alive("wb", ["m1:7", "m2:5"])).toEqual(new Map([["m1", [10]], ["m2", [10]]]));
    expect(await alive("wa", ["m1", "m2"])).toEqual(new Map([["m1", [7]], ["m2", [5]]]));

    await retireWorker(fixture.pool, "wb");
    expect(await alive("wa", ["m1", "m2"])).toEqual(new Map([["m1", []], ["m2", []]]));
    await retireWorker(fixture.pool, "wa");
  });

  it("removes a row dead for an hour, and keeps one dead for less", async () => {
    await alive("old", ["m1"]);
    await alive("dead", ["m1"]);
    await fixture.pool.query("UPDATE lote.workers SET alive_until = now() - interval '61 minutes' WHERE id = 'old'");
    await fixture.pool.query("UPDATE lote.workers SET alive_until = now() - interval '59 minutes' WHERE id = 'dead'");
    await alive("wc", ["m1"]);
    const { rows } = await fixture.pool.query("SELECT id FROM lote.workers ORDER BY id");
    expect(rows.map((r) => r.id)).toEqual(["dead", "wc"]);
    await fixture.pool.query("DELETE FROM lote.workers");
  });

  it("notifies lote_workers when a worker first appears and when it retires, not when it renews", async () => {
    const notifier = new Notifier({ connectionString: fixture.db.url, logger: pino({ level: "silent" }) });
    await notifier.start();
    const heard: string[] = [];
    notifier.on("notification", (channel, payload) => {
      if (channel === "lote_workers") heard.push(payload);
    });
    try {
      await alive("wn", ["m1"]);
      await alive("wn", ["m1"]);
      await alive("wn", ["m1"]);
      await retireWorker(fixture.pool, "wn");
      await retireWorker(fixture.pool, "wn"); // already gone: nothing to tell
      // A marker after them all: once it is heard, everything sent before it has been.
      await fixture.pool.query("SELECT pg_notify('lote_workers', 'marker')");
      await until("the marker", async () => (heard.includes("marker") ? true : undefined), 10_000);
      expect(heard).toEqual(["wn", "wn", "marker"]);
    } finally {
      await notifier.close();
    }
  });
});
