import type pg from "pg";
import { transitionBatch } from "./transition-batch.ts";

/**
 * Ends every item of a batch that is in one of `from` (cancel: pending; expiry: pending and running) with an error
 * result, in one statement, and adds them to the batch's counts. The caller MUST hold the batch row lock
 * (SELECT ... FOR UPDATE) so the result_seq it reads is not taken by a concurrent completer.
 *
 * An item whose earlier call failed (its `last_error`: waiting to retry after a 503, or being called again) gets
 * `error.afterError` with that error appended, as complete_items writes a retry that comes after a cancel
 * (migration 006): its result was `batch_expired` alone, and the backend's error, the reason it had not finished,
 * was lost.
 */
export async function closeItems(
  client: pg.ClientBase,
  batchId: string,
  from: readonly ("pending" | "running")[],
  to: "cancelled" | "expired",
  error: { code: string; message: string; afterError: string },
): Promise<number> {
  const { rows } = await client.query(
    `WITH closed AS (
       UPDATE lote.items SET status = $3, lease_expires_at = NULL, worker_id = NULL
        WHERE batch_id = $1 AND status = ANY($2::text[])
       RETURNING idx, custom_id, attempt, last_error
     ), base AS (SELECT result_seq FROM lote.batches WHERE id = $1)
     INSERT INTO lote.results (batch_id, seq, idx, custom_id, attempts, error_code, error_message)
     SELECT $1, base.result_seq + row_number() OVER (ORDER BY c.idx), c.idx, c.custom_id, c.attempt, $4,
            CASE WHEN c.last_error IS NULL THEN $5
                 ELSE $6 || ' (last error: ' || coalesce(c.last_error->>'code', '') || ': ' || coalesce(c.last_error->>'message', '') || ').' END
       FROM closed c, base
     RETURNING 1`,
    [batchId, from, to, error.code, error.message, error.afterError],
  );
  const n = rows.length;
  if (n > 0) {
    // `to` is one of two literals chosen by code; the count column has the same name.
    await client.query(
      `UPDATE lote.batches SET ${to} = ${to} + $2, result_seq = result_seq + $2, updated_at = now() WHERE id = $1`,
      [batchId, n],
    );
  }
  return n;
}

/** SELECT ... FOR UPDATE of one batch row; returns its status, or undefined when the tenant has no such batch. */
export async function lockBatch(client: pg.ClientBase, batchId: string, tenantId?: string): Promise<string | undefined> {
  const { rows } = tenantId === undefined
    ? await client.query("SELECT status FROM lote.batches WHERE id = $1 FOR UPDATE", [batchId])
    : await client.query("SELECT status FROM lote.batches WHERE id = $1 AND tenant_id = $2 FOR UPDATE", [batchId, tenantId]);
  return rows[0]?.status;
}

/**
 * IN_PROGRESS or FINALIZING -> COMPLETED when the batch already has every result; true if it did. For expiry and
 * cancel, which may come just after the last result was written and before maintenance finalised the batch: the
 * batch is done, and EXPIRED or CANCELLED would say a request of it was not. The caller holds the batch row lock.
 */
export async function completeIfEveryResult(client: pg.ClientBase, batchId: string, status: string): Promise<boolean> {
  if (status !== "in_progress" && status !== "finalizing") return false;
  const { rows } = await client.query(
    "SELECT completed + failed + cancelled + expired >= total AS done FROM lote.batches WHERE id = $1", [batchId]);
  if (rows[0]?.done !== true) return false;
  if (status === "in_progress") await transitionBatch(client, batchId, "finalize");
  return transitionBatch(client, batchId, "complete");
}

/**
 * Runs `work` in a transaction on a pooled client. A client whose transaction failed goes back to the pool only
 * after its ROLLBACK succeeded (see `releaseAfterRollback`).
 */
export async function inTransaction<T>(pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let out: T;
  try {
    await client.query("BEGIN");
    out = await work(client);
    await client.query("COMMIT");
  } catch (err) {
    await releaseAfterRollback(client);
    throw err;
  }
  client.release();
  return out;
}

/**
 * Rolls back a failed transaction and returns its client to the pool, or discards the client when the ROLLBACK
 * fails too. A statement that timed out on the client side (query_timeout) is still the connection's active one:
 * node-postgres queues the next statement behind it. Released as usual, a connection whose server vanished (a
 * failover) went back to the pool idle, and every call lent it waited its whole query_timeout_ms (10 s) and failed
 * UNAVAILABLE, until TCP gave the connection up ~15 minutes later; a pool.query that times out drops it at once.
 */
export async function releaseAfterRollback(client: pg.PoolClient): Promise<void> {
  let broken: Error | undefined;
  await client.query("ROLLBACK").catch((err: Error) => (broken = err));
  client.release(broken);
}
