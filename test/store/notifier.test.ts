import pino from "pino";
import { describe, expect, it } from "vitest";
import { Notifier } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { proxyTo } from "../support/tcp-proxy.ts";
import { until } from "../support/until.ts";

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
  it("leaves no LISTEN connection open when closed while a reconnect is connecting", async () => {
    const { proxy, url } = await proxyTo(fixture.db.url);
    const notifier = new Notifier({ connectionString: url, logger: pino({ level: "silent" }) });
    await notifier.start();
    let reconnected = false;
    notifier.on("reconnected", () => (reconnected = true));
    try {
      // The reconnect's connection reaches the proxy, which holds it: the Notifier is connecting when it is closed.
      proxy.hold();
      notifier.kill();
      await until("the reconnect's connection held", () => proxy.heldOpen === 1, 5_000);
      const closing = notifier.close();
      proxy.release();
      await closing;
      // Before, the connect went on after close() and kept its connection (and LISTENs) open for good.
      await until("every connection through the proxy closed", () => proxy.open === 0, 5_000);
      expect(notifier.connected).toBe(false);
      expect(reconnected).toBe(false);
    } finally {
      await notifier.close();
      await proxy.cut();
    }
  });
});
