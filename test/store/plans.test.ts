import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newBatchId } from "../../src/batch/ids.ts";
import { claimItems, completeItems, createBatch } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";

/**
 * The claim and completion functions cache one generic plan per connection. A plan made while lote.items looked
 * empty (its statistics after a VACUUM between batches, when every item had succeeded and was deleted) must still
 * be right once 20,000 items are pending: no step may read lote.items beyond the rows it claims or completes.
 * auto_explain sends every plan inside the functions back to this client, with the rows each node produced.
 */
describe("claim and completion plans", () => {
  const fixture = useMigratedDatabase();
  let client: pg.Client;
  const plans: string[] = [];

  beforeAll(async () => {
    client = new pg.Client({ connectionString: fixture.db.url });
    await client.connect();
    client.on("notice", (n) => plans.push(n.message ?? ""));
  });
  afterAll(async () => {
    await client?.end();
  });

  /**
   * The most rows any plan node over lote.items produced (rows × loops), or any node read and dropped (Rows Removed
   * by Filter), in the plans collected since `from`.
   */
  const mostRowsRead = (from: number) => {
    let most = 0;
    for (const plan of plans.slice(from)) {
      for (const m of plan.matchAll(/ on items \w+.*\(actual time=[\d.]+\.\.[\d.]+ rows=([\d.]+) loops=(\d+)\)/g)) {
        most = Math.max(most, Number(m[1]) * Number(m[2]));
      }
      for (const m of plan.matchAll(/Rows Removed by (?:Join )?Filter: (\d+)/g)) most = Math.max(most, Number(m[1]));
    }
    return most;
  };

  it("reads only the rows it touches when lote.items' statistics say it is empty", async () => {
    // Statistics that say the table is empty, and one pending item: the claim below then plans every statement of its
    // pick (a claim that finds nothing plans none of them) while the table looks empty. A pick whose tenant read matched
    // the primary key that way read and sorted every pending item, spilling to disk, once 50,000 were pending.
    await fixture.pool.query("VACUUM (ANALYZE) lote.items");
    await createBatch(fixture.pool, {
      id: newBatchId(), tenantId: "t1", endpoint: "/v1/chat/completions", model: "m1", priority: 0, completionWindowSeconds: 3600,
      metadata: {}, items: [{ customId: "first", body: '{"model":"m1"}', estTokens: 1 }],
    });
    const claim = (limit: number) => claimItems(client, {
      model: "m1", limit, workerId: "w1", leaseMs: 30_000, maxConcurrency: 1000, requestsPerMinute: 0, tokensPerMinute: 0,
    });
    // Plans are made (and cached for this connection) while the statistics say the table is empty.
    const [first] = await claim(10);
    expect(first?.customId).toBe("first");
    await completeItems(client, [{ outcome: "succeeded", batchId: first!.batchId, idx: 0, attempt: 1, statusCode: 200, requestId: "", body: "{}", inputTokens: 0, outputTokens: 0, totalTokens: 0 }]);

    await createBatch(fixture.pool, {
      id: newBatchId(), tenantId: "t1", endpoint: "/v1/chat/completions", model: "m1", priority: 0, completionWindowSeconds: 3600,
      metadata: {}, items: Array.from({ length: 20_000 }, (_, i) => ({ customId: `c${i}`, body: '{"model":"m1"}', estTokens: 1 })),
    });
    await client.query("LOAD 'auto_explain'");
    await client.query(`SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;
      SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice; SET client_min_messages = notice`);
    const from = plans.length;
    const claimed = await claim(10);
    expect(claimed).toHaveLength(10);
    const touched = await completeItems(client, claimed.map((c, i) => i % 2 === 0
      ? { outcome: "succeeded" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 200, requestId: "r", body: "{}", inputTokens: 1, outputTokens: 1, totalTokens: 2 }
      : { outcome: "retry" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 429, errorCode: "rate_limit_exceeded", errorMessage: "slow down", retryDelayMs: 0 }));
    expect(touched).toEqual([{ batchId: claimed[0]!.batchId, finished: false }]);
    expect(plans.length).toBeGreaterThan(from);
    // The plan this replaced scanned all 20,000 items for every claim.
    expect(mostRowsRead(from)).toBeLessThanOrEqual(20);
    const { rows } = await fixture.pool.query("SELECT status, count(*)::int AS n FROM lote.items GROUP BY status ORDER BY status");
    expect(rows).toEqual([{ status: "pending", n: 19_995 }]);
  });
});
