import pino from "pino";
import { describe, expect, it } from "vitest";
import { BatchEvents } from "../../src/batch/batch-events.ts";
import { Notifier } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";

describe("BatchEvents", () => {
  const fixture = useMigratedDatabase();

  it("keeps an entry per batch only while a subscription is open, however its waits ended: a poll, an abort, a notification", async () => {
    const notifier = new Notifier({ connectionString: fixture.db.url, logger: pino({ level: "silent" }) });
    await notifier.start();
    try {
      const events = new BatchEvents(notifier);
      const a = events.subscribe("batch_a");
      const b = events.subscribe("batch_b");
      const b2 = events.subscribe("batch_b");
      expect(events.size).toBe(2);

      // A wait that ends by its poll.
      await a.wait(10);
      // A wait that ends by an abort.
      const abort = new AbortController();
      const aborted = b.wait(60_000, abort.signal);
      abort.abort();
      await aborted;
      // A wait that ends by the batch's notification, heard over LISTEN.
      const notified = b2.wait(60_000);
      await fixture.pool.query("SELECT pg_notify('lote_batch', 'batch_b')");
      await notified;
      expect(events.size).toBe(2);

      a.close();
      expect(events.size).toBe(1);
      b.close();
      // b2 still listens for batch_b.
      expect(events.size).toBe(1);
      b2.close();
      b2.close();
      expect(events.size).toBe(0);
    } finally {
      await notifier.close();
    }
  });
});
