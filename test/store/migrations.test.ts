import type pg from "pg";
import { describe, expect, it } from "vitest";
import { newBatchId } from "../../src/batch/ids.ts";
import { claimItems, migrate } from "../../src/store/index.ts";
import { createTestDatabase, testPool } from "../support/database.ts";

describe("upgrading a database that holds live work", () => {
  it("gives every item its batch's tenant when migration 004 runs, keeps running items running, and claims the rest fairly", async () => {
    const db = await createTestDatabase();
    const pool = testPool(db.url);
    try {
      expect((await migrate(pool, { through: 3 })).applied).toEqual(["001_init.sql", "002_functions.sql", "003_dispatch_hot_path.sql"]);
      // What lote before 004 left: two tenants' batches in progress, items without a tenant, one of them running.
      const batches = { "tenant-a": newBatchId(), "tenant-b": newBatchId() };
      for (const [tenant, id] of Object.entries(batches)) {
        await pool.query(
          `INSERT INTO lote.batches (id, tenant_id, endpoint, model, status, completion_window_seconds, total, expires_at, in_progress_at)
           VALUES ($1, $2, '/v1/chat/completions', 'm1', 'in_progress', 3600, 6, now() + interval '1 hour', now())`,
          [id, tenant],
        );
        await pool.query(
          `INSERT INTO lote.items (batch_id, idx, custom_id, model, priority, body)
           SELECT $1, i, 'c' || i, 'm1', 0, '{"model":"m1"}' FROM generate_series(0, 5) AS i`,
          [id],
        );
      }
      await pool.query(
        `UPDATE lote.items SET status = 'running', attempt = 1, worker_id = 'old-node', lease_expires_at = now() + interval '30 seconds'
          WHERE batch_id = $1 AND idx = 0`,
        [batches["tenant-a"]],
      );

      expect((await migrate(pool)).applied).toEqual(["004_tenant_fair_claims.sql", "005_worker_registry.sql", "006_fences_and_rate_window.sql", "007_request_digest.sql", "008_tenant_turns.sql"]);

      const { rows } = await pool.query<{ batch_id: string; tenant_id: string; status: string; n: number }>(
        "SELECT batch_id, tenant_id, status, count(*)::int AS n FROM lote.items GROUP BY 1, 2, 3 ORDER BY 2, 3",
      );
      expect(rows).toEqual([
        { batch_id: batches["tenant-a"], tenant_id: "tenant-a", status: "pending", n: 5 },
        { batch_id: batches["tenant-a"], tenant_id: "tenant-a", status: "running", n: 1 },
        { batch_id: batches["tenant-b"], tenant_id: "tenant-b", status: "pending", n: 6 },
      ]);
      // An item without a tenant can no longer be written.
      await expect(pool.query(
        "INSERT INTO lote.items (batch_id, idx, custom_id, model, priority, body) VALUES ($1, 99, 'x', 'm1', 0, '{}')", [batches["tenant-b"]],
      )).rejects.toMatchObject({ code: "23502", column: "tenant_id" });

      // tenant-a already holds a call on this node, so of 5 free slots tenant-b gets 3 and tenant-a 2.
      const claimed = await claimItems(pool, {
        model: "m1", limit: 5, workerId: "new-node", leaseMs: 30_000, maxConcurrency: 100, requestsPerMinute: 0, tokensPerMinute: 0,
        ownCalls: 1, tenantCalls: new Map([["tenant-a", 1]]),
      });
      expect(claimed.map((c) => c.tenantId).sort()).toEqual(["tenant-a", "tenant-a", "tenant-b", "tenant-b", "tenant-b"]);
      expect(claimed.every((c) => c.batchId === batches[c.tenantId as keyof typeof batches])).toBe(true);
    } finally {
      await pool.end();
      await db.drop();
    }
  });
});

describe("the migration lock", () => {
  it("is let go when its unlock fails, so the next node to start does not wait for it forever", async () => {
    const db = await createTestDatabase();
    const pool = testPool(db.url);
    const other = testPool(db.url);
    try {
      // The unlock fails as it would when it timed out or met an aborted transaction; the connection itself lives on.
      pool.on("connect", (client: pg.PoolClient) => {
        const query = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
        (client as unknown as { query: unknown }).query = (text: unknown, ...rest: unknown[]) =>
          typeof text === "string" && text.includes("pg_advisory_unlock") ? Promise.reject(new Error("Query read timeout")) : query(text, ...rest);
      });
      expect((await migrate(pool)).applied).toContain("001_init.sql");
      // Another node starting takes the same lock. Before, the connection went back to `pool` idle, still holding
      // the session lock, and the other node's migrate waited as long as this pool lived.
      let timer: NodeJS.Timeout | undefined;
      const waited = await Promise.race([
        migrate(other).then(({ applied }) => applied),
        new Promise<string>((resolve) => (timer = setTimeout(() => resolve("still waiting for the lock after 5 s"), 5_000))),
      ]);
      clearTimeout(timer);
      expect(waited).toEqual([]);
    } finally {
      await pool.end();
      await other.end();
      await db.drop();
    }
  });
});
