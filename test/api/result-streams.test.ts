import type * as grpc from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { claimItems, completeItems, finishBatches } from "../../src/store/index.ts";
import { testPool } from "../support/database.ts";
import { batchServiceClient, call, collect } from "../support/grpc-client.ts";
import { useLoteServer } from "../support/lote-process.ts";
import { until } from "../support/until.ts";

const sentiment = (customId: string, text: string) => ({ customId, bodyJson: Buffer.from(JSON.stringify({ model: "lote-sentiment", input: text })) });

/**
 * An API node alone (no worker, no maintenance): the test plays the worker with the store's own statements, so it
 * decides when each result is written and when the batch moves on.
 */
describe("StreamResults and WatchBatch against an API node, the test as the worker", () => {
  // A poll of 30 s: a stream that missed a notification ends only when its poll comes round, far from any bound
  // a slow machine could reach by being slow.
  const server = useLoteServer({ role: "api", config: { worker: { poll_interval_ms: 30_000 } } });
  let client: any;
  let pool: pg.Pool;

  beforeAll(() => {
    client = batchServiceClient(`127.0.0.1:${server.lote.port}`);
    pool = testPool(server.db.url);
  });
  afterAll(async () => {
    client?.close();
    await pool?.end();
  });

  /** A one-request batch whose request the test claimed and answered: IN_PROGRESS with every result. */
  async function answeredBatch(): Promise<string> {
    const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("s0", "Eu amo estudar IA!")] });
    const [item] = await claimItems(pool, {
      model: "lote-sentiment", limit: 1, workerId: "w_test", leaseMs: 60_000, maxConcurrency: 64, requestsPerMinute: 0, tokensPerMinute: 0,
    });
    expect(item?.batchId).toBe(batch.id);
    await completeItems(pool, [{
      outcome: "succeeded", batchId: batch.id, idx: 0, attempt: item!.attempt, statusCode: 200, requestId: "req-0",
      body: '{"object":"list","data":[]}', inputTokens: 0, outputTokens: 0, totalTokens: 0,
    }]);
    return batch.id;
  }

  it("ends a following StreamResults as soon as its batch completes, though COMPLETED was announced while the stream was reading", async () => {
    const batchId = await answeredBatch();
    // A watcher of the same batch on the same node: its COMPLETED message shows that the node heard the notification.
    const watch = client.watchBatch({ id: batchId });
    const watched: any[] = [];
    const completedSeen = new Promise<void>((resolve, reject) => {
      watch.on("data", (m: any) => {
        watched.push(m.batch.status);
        if (m.batch.status === "BATCH_STATUS_COMPLETED") resolve();
      });
      watch.on("error", (err: grpc.ServiceError) => reject(err));
    });
    await until("the watcher's first message", () => watched.length > 0);

    // Hold the stream inside its read of the results (it has read the batch IN_PROGRESS just before).
    const locker = await pool.connect();
    let stream: Promise<any[]> | undefined;
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE lote.results IN ACCESS EXCLUSIVE MODE");
      stream = collect(client.streamResults({ batchId, follow: true }));
      stream.catch(() => {});
      await until("the stream to wait for the results table", async () => {
        const { rows } = await pool.query("SELECT 1 FROM pg_locks WHERE relation = 'lote.results'::regclass AND NOT granted");
        return rows.length > 0;
      });
      // The batch completes (and says so on lote_batch) while the stream is reading.
      expect(await finishBatches(pool, [batchId])).toEqual([batchId]);
      await completedSeen;
    } finally {
      await locker.query("ROLLBACK");
      locker.release();
    }
    const released = Date.now();
    const results = await stream;
    // Before, the notification was lost and the stream slept its whole poll (30 s here) before it saw the batch done.
    expect(Date.now() - released).toBeLessThan(10_000);
    expect(results.map((m) => m.result.customId)).toEqual(["s0"]);
    expect(watched.at(-1)).toBe("BATCH_STATUS_COMPLETED");
  });
});
