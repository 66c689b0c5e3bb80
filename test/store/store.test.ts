import pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";
import { newBatchId } from "../../src/batch/ids.ts";
import {
  cancelBatch, claimItems, completeItems, createBatch, isBoundedBatch, expireDueBatches, findExpiredLeases, finishBatches, getBatch, getResults, heartbeat,
  listBatches, migrate,
} from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { proxyTo } from "../support/tcp-proxy.ts";
import { until } from "../support/until.ts";

function newBatch(n: number, overrides: Partial<Parameters<typeof createBatch>[1]> = {}) {
  return {
    id: newBatchId(), tenantId: "t1", endpoint: "/v1/chat/completions" as const, model: "m1", priority: 0,
    completionWindowSeconds: 3600, metadata: { team: "a" },
    items: Array.from({ length: n }, (_, i) => ({ customId: `c${i}`, body: `{"model":"m1","x":"\\t${i}"}`, estTokens: 10 })),
    ...overrides,
  };
}
const claim = (pool: pg.Pool, limit: number, maxConcurrency = 1000, workerId = "w1") =>
  claimItems(pool, { model: "m1", limit, workerId, leaseMs: 30_000, maxConcurrency, requestsPerMinute: 0, tokensPerMinute: 0 });

describe("store", () => {
  const fixture = useMigratedDatabase();
  let pool: pg.Pool;
  beforeAll(() => {
    pool = fixture.pool;
  });

  it("applies migrations once even when several nodes start together", async () => {
    const results = await Promise.all([migrate(pool), migrate(pool), migrate(pool)]);
    expect(results.flatMap((r) => r.applied)).toEqual([]);
  });

  it("stores a batch with every item byte for byte and starts it", async () => {
    const { batch, created } = await createBatch(pool, newBatch(1000));
    expect(created).toBe(true);
    expect(batch.status).toBe("in_progress");
    expect(batch.total).toBe(1000);
    const { rows } = await pool.query("SELECT body, custom_id FROM lote.items WHERE batch_id = $1 AND idx = 7", [batch.id]);
    expect(rows[0]).toEqual({ body: '{"model":"m1","x":"\\t7"}', custom_id: "c7" });
  });

  it("counts a small batch's bound in bytes: 1,000 bodies of 5,000 two-byte characters are not small", () => {
    const bodies = (text: string) => Array.from({ length: 1_000 }, () => ({ body: JSON.stringify({ input: text }) }));
    expect(isBoundedBatch(bodies("e".repeat(5_000)))).toBe(true);
    expect(isBoundedBatch(bodies("é".repeat(5_000)))).toBe(false);
    expect(isBoundedBatch([...bodies("e"), { body: "{}" }])).toBe(false);
  });

  it("returns the first batch again for a repeated request_id", async () => {
    const first = await createBatch(pool, newBatch(3, { requestId: "r-1" }));
    const second = await createBatch(pool, newBatch(3, { requestId: "r-1" }));
    expect(second.created).toBe(false);
    expect(second.batch.id).toBe(first.batch.id);
  });

  it("claims no more than the fleet-wide concurrency allows and completes with one result each", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status = 'pending'");
    const { batch } = await createBatch(pool, newBatch(10));
    const claimed = await claim(pool, 100, 4);
    expect(claimed).toHaveLength(4);
    expect(await claim(pool, 100, 4)).toHaveLength(0);
    const done = await completeItems(pool, claimed.map((c) => ({
      outcome: "succeeded" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 200, requestId: "r",
      body: '{"ok":true}', inputTokens: 1, outputTokens: 2, totalTokens: 3,
    })));
    expect(done).toEqual([{ batchId: batch.id, finished: false }]);
    // A stale completion of the same attempt is fenced out: still four results.
    await completeItems(pool, claimed.map((c) => ({
      outcome: "failed" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 500, requestId: "r",
      errorCode: "x", errorMessage: "y",
    })));
    const { rows: results } = await getResults(pool, batch.id, 0n, 100);
    expect(results.map((r) => r.seq)).toEqual([1n, 2n, 3n, 4n]);
    expect(results.every((r) => r.errorCode === null)).toBe(true);
    const after = await getBatch(pool, "t1", batch.id);
    expect(after?.completed).toBe(4);
    expect(after?.totalTokens).toBe(12);
  });

  it("retries without a result, then finishes and completes the batch", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const { batch } = await createBatch(pool, newBatch(2));
    const first = await claim(pool, 10);
    await completeItems(pool, first.map((c) => ({ outcome: "retry" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt,
      statusCode: 429, errorCode: "rate_limited", errorMessage: "slow down", retryDelayMs: 0 })));
    const second = await claim(pool, 10);
    expect(second.map((c) => c.attempt)).toEqual([2, 2]);
    const done = await completeItems(pool, second.map((c) => ({ outcome: "failed" as const, batchId: c.batchId, idx: c.idx,
      attempt: c.attempt, statusCode: 400, requestId: "", errorCode: "http_400", errorMessage: "bad" })));
    expect(done).toEqual([{ batchId: batch.id, finished: true }]);
    expect(await finishBatches(pool, [batch.id])).toEqual([batch.id]);
    const after = await getBatch(pool, "t1", batch.id);
    expect(after?.status).toBe("completed");
    expect(after?.failed).toBe(2);
    expect(after?.finalizingAt).not.toBeNull();
  });

  it("cancels pending items at once and refuses to cancel a terminal batch", async () => {
    const { batch } = await createBatch(pool, newBatch(5));
    expect(await cancelBatch(pool, "t1", batch.id)).toBe("cancelled");
    expect(await cancelBatch(pool, "t1", batch.id)).toEqual({ terminal: "cancelled" });
    expect(await cancelBatch(pool, "t2", batch.id)).toBe("not_found");
    const { rows: results } = await getResults(pool, batch.id, 0n, 100);
    expect(results.map((r) => r.errorCode)).toEqual(Array(5).fill("batch_cancelled"));
  });

  it("expires a batch past its window, giving unfinished items batch_expired", async () => {
    const { batch } = await createBatch(pool, newBatch(3));
    await pool.query("UPDATE lote.batches SET expires_at = now() - interval '1 second' WHERE id = $1", [batch.id]);
    expect(await expireDueBatches(pool)).toContain(batch.id);
    const after = await getBatch(pool, "t1", batch.id);
    expect(after?.status).toBe("expired");
    expect(after?.expired).toBe(3);
  });

  it("keeps the last backend error of a request that was waiting to retry when its batch expires or is cancelled", async () => {
    for (const close of ["expire", "cancel"] as const) {
      await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
      const { batch } = await createBatch(pool, newBatch(3));
      const first = await claim(pool, 10);
      // c0 waits a minute for its retry after a 503; c1 failed once and is being called again; c2 never failed.
      await completeItems(pool, first.slice(0, 2).map((c) => ({ outcome: "retry" as const, batchId: c.batchId, idx: c.idx,
        attempt: c.attempt, statusCode: 503, errorCode: "server_error", errorMessage: "HTTP 503 from the backend",
        retryDelayMs: c.idx === 0 ? 60_000 : 0 })));
      expect((await claim(pool, 10)).map((c) => [c.idx, c.attempt])).toEqual([[1, 2]]);
      if (close === "expire") {
        await pool.query("UPDATE lote.batches SET expires_at = now() - interval '1 second' WHERE id = $1", [batch.id]);
        expect(await expireDueBatches(pool)).toContain(batch.id);
      } else {
        expect(await cancelBatch(pool, "t1", batch.id)).toBe("cancelling");
      }
      const { rows: results } = await getResults(pool, batch.id, 0n, 100);
      const code = close === "expire" ? "batch_expired" : "batch_cancelled";
      const waited = results.find((r) => r.idx === 0)!;
      expect(waited).toMatchObject({ errorCode: code, attempts: 1 });
      expect(waited.errorMessage).toContain("(last error: server_error: HTTP 503 from the backend)");
      if (close === "expire") {
        // The running ones are closed too: c1 with the error of its first attempt, c2 with none to tell.
        const byIdx = new Map(results.map((r) => [r.idx, r.errorMessage]));
        expect(byIdx.get(1)).toContain("(last error: server_error: HTTP 503 from the backend)");
        expect(byIdx.get(2)).toBe("This request could not be executed before the completion window expired.");
      }
    }
  });

  it("completes, not expires, a batch past its window that already has every result", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const { batch } = await createBatch(pool, newBatch(2));
    const claimed = await claim(pool, 10);
    const done = await completeItems(pool, claimed.map((c) => ({
      outcome: "succeeded" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 200, requestId: "r",
      body: '{"ok":true}', inputTokens: 1, outputTokens: 1, totalTokens: 2,
    })));
    expect(done).toEqual([{ batchId: batch.id, finished: true }]);
    // The window ends before maintenance finalises it; a second batch was left FINALIZING by a crash.
    const { batch: left } = await createBatch(pool, newBatch(1));
    const [only] = await claim(pool, 10);
    await completeItems(pool, [{ outcome: "failed", batchId: only!.batchId, idx: only!.idx, attempt: only!.attempt, statusCode: 400,
      requestId: "", errorCode: "http_400", errorMessage: "bad" }]);
    await pool.query("UPDATE lote.batches SET status = 'finalizing', finalizing_at = now() WHERE id = $1", [left.id]);
    await pool.query("UPDATE lote.batches SET expires_at = now() - interval '1 second' WHERE id = ANY($1)", [[batch.id, left.id]]);
    expect(await expireDueBatches(pool)).not.toContain(batch.id);
    for (const [id, counts] of [[batch.id, { completed: 2, failed: 0 }], [left.id, { completed: 0, failed: 1 }]] as const) {
      const after = await getBatch(pool, "t1", id);
      expect(after).toMatchObject({ status: "completed", expired: 0, ...counts });
      expect(after?.expiredAt).toBeNull();
    }
  });

  it("completes, not cancels, a batch whose every request has a result when the cancel comes", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const { batch } = await createBatch(pool, newBatch(2));
    const claimed = await claim(pool, 10);
    await completeItems(pool, claimed.map((c) => ({
      outcome: "succeeded" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 200, requestId: "r",
      body: '{"ok":true}', inputTokens: 1, outputTokens: 1, totalTokens: 2,
    })));
    // The last result is in; maintenance has not finalised the batch yet.
    expect((await getBatch(pool, "t1", batch.id))?.status).toBe("in_progress");
    expect(await cancelBatch(pool, "t1", batch.id)).toEqual({ terminal: "completed" });
    expect(await getBatch(pool, "t1", batch.id)).toMatchObject({ status: "completed", completed: 2, cancelled: 0, cancellingAt: null });
  });

  it("cancels, not re-queues, a request whose retry is written after its batch was cancelled", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const { batch } = await createBatch(pool, newBatch(3));
    const claimed = await claim(pool, 10);
    await completeItems(pool, claimed.slice(0, 2).map((c) => ({
      outcome: "succeeded" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 200, requestId: "r",
      body: '{"ok":true}', inputTokens: 1, outputTokens: 1, totalTokens: 2,
    })));
    expect(await cancelBatch(pool, "t1", batch.id)).toBe("cancelling");
    // The third call failed with a 429 just as the cancel committed: its completion asks for a retry.
    const last = claimed[2]!;
    const done = await completeItems(pool, [{ outcome: "retry", batchId: last.batchId, idx: last.idx, attempt: last.attempt,
      statusCode: 429, errorCode: "rate_limited", errorMessage: "slow down", retryDelayMs: 0 }]);
    expect(done).toEqual([{ batchId: batch.id, finished: true }]);
    expect(await claim(pool, 10)).toEqual([]);
    expect(await finishBatches(pool, [batch.id])).toEqual([batch.id]);
    const after = await getBatch(pool, "t1", batch.id);
    expect(after).toMatchObject({ status: "cancelled", completed: 2, cancelled: 1, failed: 0 });
    const { rows: results } = await getResults(pool, batch.id, 0n, 100);
    expect(results.map((r) => [r.idx, r.errorCode])).toEqual([[0, null], [1, null], [2, "batch_cancelled"]]);
    expect(results[2]!.errorMessage).toContain("rate_limited");
  });

  it("writes a lease rescue only while the lease is still lapsed: a late heartbeat keeps the item with its worker", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const { batch } = await createBatch(pool, newBatch(2));
    const claimed = await claim(pool, 10);
    await pool.query("UPDATE lote.items SET lease_expires_at = now() - interval '1 second' WHERE batch_id = $1", [batch.id]);
    const lapsed = await findExpiredLeases(pool, 10, ["m1"]);
    expect(lapsed.filter((l) => l.batchId === batch.id)).toHaveLength(2);
    // Between the rescuer's read and its write, the worker's heartbeat renews item 0's lease (not item 1's).
    expect(await heartbeat(pool, "w1", [claimed[0]!], 30_000)).toBe(1);
    const rescue = (c: (typeof claimed)[number]) => ({
      outcome: "retry" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 0, errorCode: "lease_expired",
      errorMessage: "lapsed", retryDelayMs: 0, rescue: true as const,
    });
    await completeItems(pool, claimed.map(rescue));
    const { rows } = await pool.query("SELECT idx, status, attempt, worker_id FROM lote.items WHERE batch_id = $1 ORDER BY idx", [batch.id]);
    expect(rows).toEqual([
      { idx: 0, status: "running", attempt: 1, worker_id: "w1" },
      { idx: 1, status: "pending", attempt: 1, worker_id: null },
    ]);
  });

  it("reads a page of results only up to its byte budget, always at least one row", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const { batch } = await createBatch(pool, newBatch(6));
    const claimed = await claim(pool, 10);
    const answer = (mib: number) => JSON.stringify({ pad: "x".repeat(Math.round(mib * 1024 * 1024)) });
    await completeItems(pool, claimed.map((c) => ({
      outcome: "succeeded" as const, batchId: c.batchId, idx: c.idx, attempt: c.attempt, statusCode: 200, requestId: "r",
      body: answer(c.idx === 3 ? 5 : 1.5), inputTokens: 1, outputTokens: 1, totalTokens: 2,
    })));
    // 4 MiB per page: three answers of 1.5 MiB start under it (0, 1.5 and 3 MiB read before them), the fourth not.
    const first = await getResults(pool, batch.id, 0n, 100);
    expect(first.rows.map((r) => r.seq)).toEqual([1n, 2n, 3n]);
    expect(first.cutByBytes).toBe(true);
    // A 5 MiB answer alone is over the budget, and still comes: a page never stalls on one large row.
    const second = await getResults(pool, batch.id, 3n, 100);
    expect(second.rows.map((r) => [r.seq, r.body?.length])).toEqual([[4n, answer(5).length]]);
    expect(second.cutByBytes).toBe(true);
    const third = await getResults(pool, batch.id, 4n, 100);
    expect(third.rows.map((r) => r.seq)).toEqual([5n, 6n]);
    expect(third.cutByBytes).toBe(false);
  });

  it("counts every claim of the last 60 seconds against requests_per_minute, the end of a second's bucket too", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    await createBatch(pool, newBatch(3));
    const limited = () => claimItems(pool, { model: "m1", limit: 10, workerId: "w1", leaseMs: 30_000, maxConcurrency: 1000, requestsPerMinute: 100, tokensPerMinute: 0 });
    // The whole minute's budget claimed in the second that started 60 s ago: some of it less than 60 s ago.
    await pool.query("DELETE FROM lote.model_usage");
    await pool.query("INSERT INTO lote.model_usage (model, second, requests) VALUES ('m1', date_trunc('second', now()) - interval '60 seconds', 100)");
    expect(await limited()).toEqual([]);
    // A bucket over 61 s old no longer counts.
    await pool.query("UPDATE lote.model_usage SET second = second - interval '2 seconds'");
    expect(await limited()).toHaveLength(3);
    await pool.query("DELETE FROM lote.model_usage");
  });

  it("claims a higher-priority batch's items first", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const low = await createBatch(pool, newBatch(3, { priority: 0 }));
    const high = await createBatch(pool, newBatch(3, { priority: 5 }));
    const claimed = await claim(pool, 3);
    expect(claimed.map((c) => c.batchId)).toEqual([high.batch.id, high.batch.id, high.batch.id]);
    expect((await claim(pool, 3)).map((c) => c.batchId)).toEqual([low.batch.id, low.batch.id, low.batch.id]);
  });

  it("splits a claim evenly between tenants, however many batches each has, and round-robins each tenant's batches", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const many = await Promise.all(Array.from({ length: 4 }, () => createBatch(pool, newBatch(10, { tenantId: "tenant-many" }))));
    const one = await createBatch(pool, newBatch(10, { tenantId: "tenant-one" }));
    const tenantOf = new Map([...many.map((b) => [b.batch.id, "tenant-many"] as const), [one.batch.id, "tenant-one"]]);
    const shares = (claimed: { batchId: string }[]) => {
      const out: Record<string, number> = {};
      for (const c of claimed) out[tenantOf.get(c.batchId)!] = (out[tenantOf.get(c.batchId)!] ?? 0) + 1;
      return out;
    };
    const first = await claim(pool, 8);
    expect(shares(first)).toEqual({ "tenant-many": 4, "tenant-one": 4 });
    // Within a tenant, item 0 of each of its batches before any item 1.
    expect(new Set(first.filter((c) => tenantOf.get(c.batchId) === "tenant-many").map((c) => c.batchId)).size).toBe(4);
    expect(shares(await claim(pool, 8))).toEqual({ "tenant-many": 4, "tenant-one": 4 });
    // tenant-one has 2 left: the rest of the claim goes to tenant-many (max-min fair, nothing left unused).
    expect(shares(await claim(pool, 8))).toEqual({ "tenant-many": 6, "tenant-one": 2 });
    expect(shares(await claim(pool, 100))).toEqual({ "tenant-many": 26 });
  });

  it("gives each free slot to the tenant with the fewest calls in flight on the claiming node", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const a = await createBatch(pool, newBatch(10, { tenantId: "tenant-a" }));
    const b = await createBatch(pool, newBatch(10, { tenantId: "tenant-b" }));
    const claimWith = (limit: number, tenantCalls: Record<string, number>) => claimItems(pool, {
      model: "m1", limit, workerId: "w1", leaseMs: 30_000, maxConcurrency: 1000, requestsPerMinute: 0, tokensPerMinute: 0,
      ownCalls: 0, tenantCalls: new Map(Object.entries(tenantCalls)),
    });
    expect((await claimWith(1, { "tenant-a": 3, "tenant-b": 2 })).map((c) => c.batchId)).toEqual([b.batch.id]);
    expect((await claimWith(1, { "tenant-b": 3 })).map((c) => [c.batchId, c.tenantId])).toEqual([[a.batch.id, "tenant-a"]]);
    // 5 free slots, a holding 4 and b none: b is lifted to 4 first, then one more each would tie at 5, and the tie
    // goes to b, which the node has not served lately (not in its list): b gets all 5, a none.
    const claimed = await claimWith(5, { "tenant-a": 4 });
    expect(claimed.filter((c) => c.batchId === b.batch.id)).toHaveLength(5);
    expect(claimed.filter((c) => c.batchId === a.batch.id)).toHaveLength(0);
  });

  it("gives a slot two tenants tie for to the one the node served longest ago, so one slot alternates between tenants, not batches", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const many = await Promise.all(Array.from({ length: 4 }, () => createBatch(pool, newBatch(10, { tenantId: "tenant-many" }))));
    await createBatch(pool, newBatch(10, { tenantId: "tenant-one" }));
    // A model with one slot (max_concurrency 1): every claim comes when no call is in flight, so the calls in flight
    // never tell the tenants apart. The node passes its tenants least recently served first, as the dispatcher does.
    const turns = new Map<string, number>();
    const served: string[] = [];
    for (let i = 0; i < 10; i++) {
      const [item] = await claimItems(pool, {
        model: "m1", limit: 1, workerId: "w1", leaseMs: 30_000, maxConcurrency: 1, requestsPerMinute: 0, tokensPerMinute: 0,
        ownCalls: 0, tenantCalls: turns,
      });
      served.push(item!.tenantId);
      turns.delete(item!.tenantId);
      turns.set(item!.tenantId, 0);
      await completeItems(pool, [{ outcome: "succeeded", batchId: item!.batchId, idx: item!.idx, attempt: item!.attempt, statusCode: 200, requestId: "", body: "{}", inputTokens: 0, outputTokens: 0, totalTokens: 0 }]);
    }
    // Tied, the slot went to the item with the lowest position: every batch advanced alike, and tenant-many's four
    // batches took 8 of the 10 calls.
    expect(served.filter((t) => t === "tenant-one")).toHaveLength(5);
    expect(served.slice(1).every((t, i) => t !== served[i])).toBe(true);
    // Within tenant-many, its batches still take turns.
    const { rows } = await pool.query("SELECT count(DISTINCT batch_id)::int AS n FROM lote.results WHERE batch_id = ANY($1::text[])", [many.map((b) => b.batch.id)]);
    expect(rows[0].n).toBe(4);
  });

  it("gives a tenant's share to the others while its items wait for a retry, and a higher priority first across tenants", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const waiting = await createBatch(pool, newBatch(5, { tenantId: "tenant-waiting" }));
    await pool.query("UPDATE lote.items SET run_at = now() + interval '1 hour' WHERE batch_id = $1", [waiting.batch.id]);
    const ready = await createBatch(pool, newBatch(5, { tenantId: "tenant-ready" }));
    expect((await claim(pool, 4)).map((c) => c.batchId)).toEqual(Array(4).fill(ready.batch.id));

    const low = await createBatch(pool, newBatch(5, { tenantId: "tenant-low", priority: 0 }));
    const high = await createBatch(pool, newBatch(3, { tenantId: "tenant-high", priority: 5 }));
    const claimed = await claim(pool, 6);
    const count = (id: string) => claimed.filter((c) => c.batchId === id).length;
    // All 3 high-priority items, then the lower level shares what is left: 1 of tenant-ready's, 2 of tenant-low's.
    expect([count(high.batch.id), count(ready.batch.id), count(low.batch.id)]).toEqual([3, 1, 2]);
  });

  it("holds requests_per_minute and tokens_per_minute across claims within the window", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    await createBatch(pool, newBatch(20));
    const limited = (limit: number, rpm: number, tpm: number) => claimItems(pool, {
      model: "m1", limit, workerId: "w", leaseMs: 30_000, maxConcurrency: 1000, requestsPerMinute: rpm, tokensPerMinute: tpm,
    });
    expect(await limited(4, 6, 0)).toHaveLength(4);
    expect(await limited(4, 6, 0)).toHaveLength(2);
    expect(await limited(4, 6, 0)).toHaveLength(0);
    // Each item is estimated at 10 tokens; 6 items (60 tokens) already started this minute.
    expect(await limited(10, 0, 90)).toHaveLength(3);
    expect(await limited(10, 0, 90)).toHaveLength(0);
  });

  it("lists newest first, filtered by status and metadata", async () => {
    const page = await listBatches(pool, { tenantId: "t1", limit: 2 });
    expect(page).toHaveLength(2);
    expect(page[0]!.seq > page[1]!.seq).toBe(true);
    const next = await listBatches(pool, { tenantId: "t1", limit: 100, beforeSeq: page[1]!.seq });
    expect(next.every((b) => b.seq < page[1]!.seq)).toBe(true);
    expect((await listBatches(pool, { tenantId: "t1", limit: 100, status: "expired" })).every((b) => b.status === "expired")).toBe(true);
    expect(await listBatches(pool, { tenantId: "t1", limit: 100, metadataKey: "team", metadataValue: "zzz" })).toEqual([]);
  });

  it("deletes a succeeded item and writes its one result when a heartbeat renewed the lease while the completion waited", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const { batch } = await createBatch(pool, newBatch(1));
    const [item] = await claim(pool, 1);
    // A heartbeat's renewal, held open: the completion's fence has to wait for its row lock.
    const heartbeat = await pool.connect();
    try {
      await heartbeat.query("BEGIN");
      await heartbeat.query("UPDATE lote.items SET lease_expires_at = now() + interval '1 minute' WHERE batch_id = $1", [batch.id]);
      const completing = completeItems(pool, [{
        outcome: "succeeded", batchId: item!.batchId, idx: item!.idx, attempt: item!.attempt, statusCode: 200, requestId: "r",
        body: '{"ok":true}', inputTokens: 1, outputTokens: 1, totalTokens: 2,
      }]);
      await until("the completion to wait for the heartbeat's row lock", async () => (await pool.query(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%complete_items%'")).rowCount === 1);
      await heartbeat.query("COMMIT");
      expect(await completing).toEqual([{ batchId: batch.id, finished: true }]);
    } finally {
      heartbeat.release();
    }
    expect((await pool.query("SELECT count(*)::int AS n FROM lote.items WHERE batch_id = $1", [batch.id])).rows[0].n).toBe(0);
    expect((await getResults(pool, batch.id, 0n, 10)).rows.map((r) => r.customId)).toEqual(["c0"]);
  });

  it("renews the leases of the items a worker names, not other rows running under its id", async () => {
    await pool.query("UPDATE lote.items SET status = 'cancelled' WHERE status IN ('pending', 'running')");
    const { batch } = await createBatch(pool, newBatch(4));
    const claimed = await claim(pool, 4, 1000, "w-beat");
    expect(claimed).toHaveLength(4);
    // Leases about to run out; the worker names two of its items, a third with a stale attempt, and not the fourth
    // (a claim whose answer it never got).
    await pool.query("UPDATE lote.items SET lease_expires_at = now() + interval '1 second' WHERE batch_id = $1", [batch.id]);
    const [a, b, c] = claimed;
    const renewed = await heartbeat(pool, "w-beat", [a!, b!, { ...c!, attempt: c!.attempt - 1 }], 60_000);
    expect(renewed).toBe(2);
    const { rows } = await pool.query(
      "SELECT idx, lease_expires_at > now() + interval '30 seconds' AS renewed FROM lote.items WHERE batch_id = $1 ORDER BY idx", [batch.id]);
    const byIdx = new Map(rows.map((r) => [r.idx, r.renewed]));
    expect([byIdx.get(a!.idx), byIdx.get(b!.idx), byIdx.get(c!.idx), byIdx.get(claimed[3]!.idx)]).toEqual([true, true, false, false]);
    // Another worker naming the same items renews nothing: the rows are not its.
    expect(await heartbeat(pool, "w-other", [a!, b!], 60_000)).toBe(0);
    expect(await heartbeat(pool, "w-beat", [], 60_000)).toBe(0);
  });

  it("discards a pooled connection whose transaction timed out on a silent server, so the next statement gets a live one", async () => {
    // The API's pool (query_timeout_ms) reached through a proxy that can go silent as a vanished server does.
    const { proxy, url } = await proxyTo(fixture.db.url);
    const timed = new pg.Pool({ connectionString: url, max: 1, query_timeout: 300 });
    timed.on("error", () => {});
    try {
      const { batch } = await createBatch(pool, newBatch(2, { model: "m-silent", tenantId: "t-silent" }));
      await timed.query("SELECT 1");
      expect(proxy.freeze()).toBe(1);
      // RunBatch cancels over this pool: the transaction times out, and so does its ROLLBACK.
      await expect(cancelBatch(timed, "t-silent", batch.id)).rejects.toThrow(/timeout/i);
      // New connections reach the server (a failover done). The pool's one connection was the silent one, and lent
      // out again each statement waited behind the one that never answered.
      expect((await timed.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
      expect(await cancelBatch(timed, "t-silent", batch.id)).toBe("cancelled");
    } finally {
      await proxy.cut();
      await timed.end();
    }
  });
});
