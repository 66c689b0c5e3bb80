import type pg from "pg";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { newBatchId } from "../../src/batch/ids.ts";
import { Completer } from "../../src/dispatch/completer.ts";
import { claimItems, createBatch, getBatch, type Completion } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { until } from "../support/until.ts";

describe("Completer", () => {
  const fixture = useMigratedDatabase();

  /** A batch of five items, claimed by one worker. */
  async function claimedBatch(pool: pg.Pool) {
    const id = newBatchId();
    await createBatch(pool, {
      id, tenantId: "t1", endpoint: "/v1/chat/completions", model: "m-completer", priority: 0, completionWindowSeconds: 3600,
      metadata: {}, items: Array.from({ length: 5 }, (_, i) => ({ customId: `c${i}`, body: `{"model":"m-completer","n":${i}}`, estTokens: 1 })),
    });
    const claimed = await claimItems(pool, {
      model: "m-completer", limit: 5, workerId: "w-completer", leaseMs: 30_000, maxConcurrency: 100, requestsPerMinute: 0, tokensPerMinute: 0,
    });
    expect(claimed).toHaveLength(5);
    return { id, claimed };
  }
  // 1e30 tokens: JSON "1e+30", which Postgres will not take as a bigint.
  const completions = (claimed: Awaited<ReturnType<typeof claimedBatch>>["claimed"]): Completion[] => claimed.map((c) => ({
    outcome: "succeeded", batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 200, requestId: `r${c.idx}`,
    body: `{"answer":${c.idx}}`, inputTokens: c.idx === 2 ? 1e30 : 1, outputTokens: 1, totalTokens: 2,
  }));

  it("stores a completion Postgres refuses as failed with result_not_storable, and writes the others around it", async () => {
    const pool = fixture.pool;
    const { id, claimed } = await claimedBatch(pool);
    const flushed: Completion[] = [];
    const completer = new Completer({
      pool, logger: pino({ level: "silent" }), batchSize: 100, flushMs: 5, onFlushed: (_touched, rows) => flushed.push(...rows),
    });
    // Before, the flush failed and was retried with the refused row in it forever, and every completion behind it.
    for (const c of completions(claimed)) completer.push(c);
    await until("every completion written", async () => (flushed.length === 5 ? true : undefined), 10_000);
    expect(completer.backlog).toBe(0);
    const { rows } = await pool.query(
      "SELECT idx, status_code, body, error_code, error_message FROM lote.results WHERE batch_id = $1 ORDER BY idx", [id]);
    expect(rows.map((r) => [r.idx, r.error_code ?? r.body])).toEqual([
      [0, '{"answer":0}'], [1, '{"answer":1}'], [2, "result_not_storable"], [3, '{"answer":3}'], [4, '{"answer":4}'],
    ]);
    expect(rows[2].error_message).toContain("1e+30");
    expect(rows[2].status_code).toBe(200);
    const batch = await getBatch(pool, "t1", id);
    expect(batch).toMatchObject({ completed: 4, failed: 1 });
  });

  it("retries only what was not written when the connection fails part way through setting a refused row apart", async () => {
    const { id, claimed } = await claimedBatch(fixture.pool);
    // The fifth statement (the refused row's replacement, after the whole, the first half, the second half and the
    // row alone) fails as a dropped connection would.
    let statements = 0;
    const pool = Object.create(fixture.pool) as pg.Pool;
    pool.query = ((...args: Parameters<pg.Pool["query"]>) => {
      if (++statements === 5) return Promise.reject(Object.assign(new Error("Connection terminated unexpectedly"), { code: "ECONNRESET" }));
      return (fixture.pool.query as (...a: unknown[]) => unknown)(...args);
    }) as pg.Pool["query"];
    let failures = 0;
    const completer = new Completer({
      pool, logger: pino({ level: "silent" }), batchSize: 100, flushMs: 5, onFlushed: () => {}, onFailed: () => failures++,
    });
    for (const c of completions(claimed)) completer.push(c);
    await until("five results", async () => (await fixture.pool.query(
      "SELECT count(*)::int AS n FROM lote.results WHERE batch_id = $1", [id])).rows[0].n === 5 || undefined, 10_000);
    await completer.drain();
    expect(failures).toBe(1);
    // Items 0 and 1 went in before the failure and were not sent again: five rows counted, not seven.
    expect(completer.flushed).toBe(5);
    const { rows } = await fixture.pool.query("SELECT idx, error_code FROM lote.results WHERE batch_id = $1 ORDER BY idx", [id]);
    expect(rows.map((r) => r.error_code)).toEqual([null, null, "result_not_storable", null, null]);
  });
});
