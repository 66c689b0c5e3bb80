import type pg from "pg";
import { runningItemsOf } from "./batch-row.ts";
import { closeItems, completeIfEveryResult, inTransaction, lockBatch } from "./close-items.ts";
import { transitionBatch } from "./transition-batch.ts";

/**
 * IN_PROGRESS (or VALIDATING/FINALIZING) batches past expires_at -> EXPIRED. Every unfinished item, pending or
 * running, gets a `batch_expired` result in the same transaction; a worker still calling the backend for one of
 * them is fenced out (its completion matches no running row) and aborts on the `lote_status` notification.
 * A batch that already has every result completes instead, under the same lock: its last result may have been
 * written just before expires_at (expiry runs before finalisation in a maintenance tick), or a crash may have
 * left it FINALIZING; either way nothing of it expired, and EXPIRED would say otherwise.
 * `bulkPool` runs those transactions (a whole batch's items: no query timeout there); `pool` the search for due
 * batches, which runs every maintenance tick.
 */
export async function expireDueBatches(pool: pg.Pool, bulkPool: pg.Pool = pool, limit = 100): Promise<string[]> {
  const { rows } = await pool.query(
    `SELECT id FROM lote.batches WHERE status IN ('validating', 'in_progress', 'finalizing') AND expires_at <= now()
      ORDER BY expires_at LIMIT $1`, [limit]);
  const expired: string[] = [];
  for (const { id } of rows) {
    const done = await inTransaction(bulkPool, async (client) => {
      const status = await lockBatch(client, id);
      if (!status) return false;
      if (await completeIfEveryResult(client, id, status)) return false;
      if (!(await transitionBatch(client, id, "expire"))) return false;
      await closeItems(client, id, ["pending", "running"], "expired", {
        code: "batch_expired",
        message: "This request could not be executed before the completion window expired.",
        afterError: "This request could not be completed before the completion window expired",
      });
      return true;
    });
    if (done) expired.push(id);
  }
  return expired;
}

/**
 * Moves batches whose every item has a result on: IN_PROGRESS -> FINALIZING -> COMPLETED, and CANCELLING ->
 * CANCELLED once no item is running. Safe to run on every node at once: each move is a fenced transition.
 */
export async function finishBatches(pool: pg.Pool, candidates?: readonly string[]): Promise<string[]> {
  const { rows } = await pool.query(
    `SELECT b.id, b.status FROM lote.batches b
      WHERE ($1::text[] IS NULL OR b.id = ANY($1::text[]))
        AND ((b.status IN ('in_progress', 'finalizing') AND b.completed + b.failed + b.cancelled + b.expired >= b.total)
          OR (b.status = 'cancelling' AND NOT EXISTS (SELECT 1 FROM ${runningItemsOf("b")})))`,
    [candidates ?? null],
  );
  const finished: string[] = [];
  for (const { id, status } of rows) {
    if (status === "cancelling") {
      if (await transitionBatch(pool, id, "finishCancel")) finished.push(id);
      continue;
    }
    // Two short steps so FINALIZING is a real, observable state (WatchBatch sends it) as in OpenAI's lifecycle.
    if (status === "in_progress") await transitionBatch(pool, id, "finalize");
    if (await transitionBatch(pool, id, "complete")) finished.push(id);
  }
  return finished;
}

/** Drops per-second usage rows older than the 60 s window the claim reads. */
export async function pruneModelUsage(pool: pg.Pool): Promise<void> {
  await pool.query("DELETE FROM lote.model_usage WHERE second < now() - interval '2 minutes'");
}
