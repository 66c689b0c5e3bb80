import pino from "pino";
import { describe, expect, it } from "vitest";
import { Notifier } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";

describe("Notifier", () => {
  const fixture = useMigratedDatabase();

  const next = (n: Notifier) => new Promise<[string, string]>((resolve) => n.once("notification", (c, p) => resolve([c, p])));

  it("delivers notifications, and re-listens after the server drops its connection", async () => {
    const notifier = new Notifier({ connectionString: fixture.db.url, logger: pino({ level: "silent" }) });
    await notifier.start();
    try {
      let got = next(notifier);
      await fixture.pool.query("SELECT pg_notify('lote_work', 'model-a')");
      expect(await got).toEqual(["lote_work", "model-a"]);

      const reconnected = new Promise<void>((resolve) => notifier.once("reconnected", () => resolve()));
      const { rowCount } = await fixture.pool.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'lote-listener' AND datname = current_database()");
      expect(rowCount).toBe(1);
      await reconnected;
      expect(notifier.connected).toBe(true);

      got = next(notifier);
      await fixture.pool.query("SELECT pg_notify('lote_batch', 'batch_x')");
      expect(await got).toEqual(["lote_batch", "batch_x"]);
    } finally {
      await notifier.close();
    }
  });
});
