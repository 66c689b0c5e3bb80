import * as grpc from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { claimItems, completeItems } from "../../src/store/index.ts";
import { testPool } from "../support/database.ts";
import { batchServiceClient, call } from "../support/grpc-client.ts";
import { useLoteServer } from "../support/lote-process.ts";
import { until } from "../support/until.ts";

const sentiment = (customId: string, text: string) => ({ customId, bodyJson: Buffer.from(JSON.stringify({ model: "lote-sentiment", input: text })) });

/**
 * An API node alone (no worker, no maintenance): the test plays the worker with the store's own statements, so it
 * decides when each result is written.
 */
describe("RunBatch against an API node, the test as the worker", () => {
  // Reads give up after 1 s (statement_timeout 900 ms), so a test can make one fail by holding a lock.
  const server = useLoteServer({ role: "api", config: { query_timeout_ms: 1_000 } });
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

  it("returns a result written after its last read and before its cancel, not deadline_exceeded beside a COMPLETED batch", async () => {
    const started = Date.now();
    // 10 s: RunBatch stops waiting 1 s before the deadline and answers by 500 ms before it, so the cancel, the commit
    // below and RunBatch's last read have 500 ms (the most RunBatch gives them; 300 ms with a 6 s deadline).
    const answer = call(client, "runBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("s0", "Eu amo estudar IA!")] },
      new grpc.Metadata(), { deadline: started + 10_000 });
    answer.catch(() => {});
    const [item] = await until("the RunBatch request to be claimable", async () => {
      const claimed = await claimItems(pool, {
        model: "lote-sentiment", limit: 1, workerId: "w_test", leaseMs: 60_000, maxConcurrency: 64, requestsPerMinute: 0, tokensPerMinute: 0,
      });
      return claimed.length > 0 ? claimed : undefined;
    });
    // The answer is written in a transaction that holds the batch row until RunBatch's cancel waits for it: RunBatch
    // read the results before it, and the cancel (which locks the batch row first) runs after it commits.
    const worker = await pool.connect();
    try {
      await worker.query("BEGIN");
      await completeItems(worker, [{
        outcome: "succeeded", batchId: item!.batchId, idx: 0, attempt: item!.attempt, statusCode: 200, requestId: "req-0",
        body: '{"object":"list","data":[{"label":"positive"}]}', inputTokens: 0, outputTokens: 0, totalTokens: 0,
      }]);
      await until("RunBatch's cancel to wait for the batch row", async () => {
        const { rows } = await pool.query(
          "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'SELECT status FROM lote.batches%FOR UPDATE'");
        return rows.length > 0;
      }, 15_000, 10);
      await worker.query("COMMIT");
    } finally {
      worker.release();
    }
    const ran = await answer;
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(ran.batch).toMatchObject({ id: item!.batchId, status: "BATCH_STATUS_COMPLETED", requestCounts: expect.objectContaining({ completed: "1" }) });
    expect(ran.results).toHaveLength(1);
    expect(ran.results[0]).toMatchObject({ customId: "s0", response: expect.objectContaining({ statusCode: 200, requestId: "req-0" }) });
  });

  it("reports the requests a CancelBatch cancelled as batch_cancelled, not deadline_exceeded, with or without a deadline", async () => {
    for (const deadline of [undefined, Date.now() + 60_000]) {
      const tag = deadline === undefined ? "no-deadline" : "deadline";
      const answer = call(client, "runBatch", {
        endpoint: "ENDPOINT_CLASSIFY", metadata: { case: tag }, requests: [sentiment("c0", "Eu amo estudar IA!"), sentiment("c1", "bom")],
      }, new grpc.Metadata(), deadline === undefined ? {} : { deadline });
      // No worker runs here: both requests stay pending until the user's cancel closes them.
      const batchId = await until(`the ${tag} RunBatch's batch`, async () => {
        const { rows } = await pool.query("SELECT id FROM lote.batches WHERE metadata @> $1::jsonb", [JSON.stringify({ case: tag })]);
        return rows[0]?.id as string | undefined;
      });
      const cancelled = await call(client, "cancelBatch", { id: batchId });
      expect(cancelled.status).toBe("BATCH_STATUS_CANCELLED");
      const ran = await answer;
      expect(ran.batch).toMatchObject({ id: batchId, status: "BATCH_STATUS_CANCELLED" });
      expect(ran.results.map((r: any) => [r.customId, r.error?.code, r.error?.message])).toEqual([
        ["c0", "batch_cancelled", "The batch was cancelled before this request ran."],
        ["c1", "batch_cancelled", "The batch was cancelled before this request ran."],
      ]);
    }
  });

  it("cancels its batch when a read fails and the call ends with an error, so nothing keeps running at RunBatch's priority", async () => {
    // Reading the results waits for this lock past the read's timeout: the call fails UNAVAILABLE.
    const locker = await pool.connect();
    let batchId: string | undefined;
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE lote.results IN ACCESS EXCLUSIVE MODE");
      const err = await call(client, "runBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("u0", "Estou muito cansado hoje")] })
        .then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code).toBe(grpc.status.UNAVAILABLE);
      const { rows } = await pool.query("SELECT id FROM lote.batches WHERE priority = 1000 ORDER BY seq DESC LIMIT 1");
      batchId = rows[0].id;
    } finally {
      await locker.query("ROLLBACK");
      locker.release();
    }
    // Before, the batch stayed IN_PROGRESS with its request pending, for the next worker to run at priority 1000.
    const cancelled = await until("the failed call's batch to be cancelled", async () => {
      const b = await call(client, "getBatch", { id: batchId });
      return b.status === "BATCH_STATUS_CANCELLED" ? b : undefined;
    }, 10_000);
    expect(cancelled.requestCounts).toMatchObject({ total: "1", cancelled: "1" });
  });
});
