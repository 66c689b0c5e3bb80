import pg from "pg";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, Notifier } from "../../src/store/index.ts";
import { createTestDatabase, type TestDatabase } from "../support/database.ts";

describe("Notifier", () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  beforeAll(async () => {
    db = await createTestDatabase();
    pool = new pg.Pool({ connectionString: db.url });
    await migrate(pool);
  });
  afterAll(async () => {
    await pool.end();
    await db.drop();
  });

  const next = (n: Notifier) => new Promise<[string, string]>((resolve) => n.once("notification", (c, p) => resolve([c, p])));

  it("delivers notifications, and re-listens after the server drops its connection", async () => {
    const notifier = new Notifier({ connectionString: db.url, logger: pino({ level: "silent" }) });
    await notifier.start();
    try {
      let got = next(notifier);
      await pool.query("SELECT pg_notify('lote_work', 'model-a')");
      expect(await got).toEqual(["lote_work", "model-a"]);

      const reconnected = new Promise<void>((resolve) => notifier.once("reconnected", () => resolve()));
      const { rowCount } = await pool.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'lote-listener' AND datname = current_database()");
      expect(rowCount).toBe(1);
      await reconnected;
      expect(notifier.connected).toBe(true);

      got = next(notifier);
      await pool.query("SELECT pg_notify('lote_batch', 'batch_x')");
      expect(await got).toEqual(["lote_batch", "batch_x"]);
    } finally {
      await notifier.close();
    }
  });
});
