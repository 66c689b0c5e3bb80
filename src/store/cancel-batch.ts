import type pg from "pg";
import { canTransition, isTerminal, type BatchStatus } from "../batch/batch-status.ts";
import { runningItemsOf } from "./batch-row.ts";
import { closeItems, completeIfEveryResult, inTransaction, lockBatch } from "./close-items.ts";
import { transitionBatch } from "./transition-batch.ts";

/**
 * "cancelling" and "cancelled" when this call cancelled the batch; "already_cancelling" when an earlier cancel had
 * (RunBatch tells its own cancel's results from a CancelBatch's by this).
 */
export type CancelOutcome = "cancelling" | "cancelled" | "already_cancelling" | "not_found" | { terminal: BatchStatus };

/**
 * CancelBatch: VALIDATING/IN_PROGRESS/FINALIZING -> CANCELLING; every pending item cancelled at once with a
 * `batch_cancelled` result; when nothing is running the batch goes straight on to CANCELLED. Running items are
 * aborted by their workers, which hear the `lote_status` notification, and finish it (see finishBatches). A batch
 * that has every result already (FINALIZING, or IN_PROGRESS just before maintenance finalises it) completes instead.
 */
export async function cancelBatch(pool: pg.Pool, tenantId: string, batchId: string): Promise<CancelOutcome> {
  return inTransaction(pool, async (client) => {
    const status = (await lockBatch(client, batchId, tenantId)) as BatchStatus | undefined;
    if (!status) return "not_found";
    if (status === "cancelling") return "already_cancelling";
    if (isTerminal(status) || !canTransition(status, "cancel")) return { terminal: status };
    // Every request already has a result: the cancel came too late, and the batch completes.
    if (await completeIfEveryResult(client, batchId, status)) return { terminal: "completed" };
    await transitionBatch(client, batchId, "cancel");
    await closeItems(client, batchId, ["pending"], "cancelled", {
      code: "batch_cancelled",
      message: "The batch was cancelled before this request ran.",
      // The words complete_items uses for a retry written after the cancel (migration 006).
      afterError: "The batch was cancelled before this request could be retried",
    });
    const { rows } = await client.query(
      `SELECT count(*)::int AS n FROM lote.batches b, ${runningItemsOf("b")} AND b.id = $1`, [batchId]);
    if (rows[0].n === 0) {
      await transitionBatch(client, batchId, "finishCancel");
      return "cancelled";
    }
    return "cancelling";
  });
}
