import type pg from "pg";
import { batchTransitions, type BatchTransition } from "../batch/batch-status.ts";

export type Queryable = pg.Pool | pg.ClientBase;

/**
 * The one function that changes a batch's status. It names the transition, and the UPDATE only matches when the
 * batch is in one of the states the table in src/batch/batch-status.ts allows, so an illegal move changes nothing
 * and returns false. The same statement notifies `lote_batch` (watchers and result streams on every node wake up)
 * and `lote_status` with "<status> <id>" (workers abort the calls of a batch that is cancelled or expired, without
 * a query: completions notify `lote_batch` once per flush, and a status read for each cost a round trip per flush).
 */
/**
 * The notifications of a status change, as SQL over a row `alias` with `id` and `status` (its new status): the
 * payloads transitionBatch sends, and createBatch's one-statement path for the batch it starts.
 */
export const statusChangeNotifications = (alias: string) =>
  `pg_notify('lote_batch', ${alias}.id), pg_notify('lote_status', ${alias}.status || ' ' || ${alias}.id)`;

export async function transitionBatch(db: Queryable, batchId: string, name: BatchTransition): Promise<boolean> {
  const t = batchTransitions[name];
  // `t.stamp` comes from the constant table, never from input.
  const result = await db.query(
    `WITH moved AS (
       UPDATE lote.batches SET status = $2, ${t.stamp} = now(), updated_at = now()
        WHERE id = $1 AND status = ANY($3::text[]) RETURNING id, status)
     SELECT ${statusChangeNotifications("moved")} FROM moved`,
    [batchId, t.to, t.from],
  );
  return result.rowCount === 1;
}
