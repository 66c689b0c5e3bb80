import pino from "pino";
import { describe, expect, it } from "vitest";
import { Notifier } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { proxyTo } from "../support/tcp-proxy.ts";

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

  it("replaces a LISTEN connection that stops answering without closing, and hears notifications again", async () => {
    // Through a proxy that then freezes the connection: no data, no FIN, no RST, as when the server's host
    // vanishes. Only the ping can tell; the connection itself would wait for notifications forever.
    const { proxy, url } = await proxyTo(fixture.db.url);
    const notifier = new Notifier({ connectionString: url, logger: pino({ level: "silent" }), pingMs: 300 });
    await notifier.start();
    try {
      const reconnected = new Promise<void>((resolve) => notifier.once("reconnected", () => resolve()));
      expect(proxy.freeze()).toBe(1);
      await reconnected;
      const got = next(notifier);
      await fixture.pool.query("SELECT pg_notify('lote_work', 'model-b')");
      expect(await got).toEqual(["lote_work", "model-b"]);
    } finally {
      await notifier.close();
      await proxy.cut();
    }
  });
});
