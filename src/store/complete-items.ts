import type { Queryable } from "./transition-batch.ts";

/** How one backend call ended, as the completer writes it. */
export type Completion =
  | {
      readonly outcome: "succeeded";
      readonly batchId: string; readonly idx: number; readonly attempt: number;
      readonly statusCode: number; readonly requestId: string; readonly body: string;
      readonly inputTokens: number; readonly outputTokens: number; readonly totalTokens: number;
    }
  | {
      readonly outcome: "failed" | "cancelled";
      readonly batchId: string; readonly idx: number; readonly attempt: number;
      readonly statusCode: number; readonly requestId: string; readonly errorCode: string; readonly errorMessage: string;
    }
  | {
      /** Back to pending, to run again after `retryDelayMs`. Writes no result. */
      readonly outcome: "retry";
      readonly batchId: string; readonly idx: number; readonly attempt: number;
      readonly statusCode: number; readonly errorCode: string; readonly errorMessage: string; readonly retryDelayMs: number;
    };

/**
 * The lease rescuer's completions: written only while the item's lease is still lapsed (migration 006), since a
 * late heartbeat of a live worker may renew it between the rescuer's read and this write.
 */
export type Rescue = Completion & { readonly rescue: true };

/**
 * Text Postgres can store: no NUL character, no lone UTF-16 surrogate (JSON.stringify would send it as an escape
 * Postgres refuses). A backend answer with either would otherwise fail its flush forever, and every completion
 * behind it. Both checks are native and short-circuit on ordinary text.
 */
function storable(text: string): string {
  const wellFormed = text.isWellFormed() ? text : text.toWellFormed();
  return wellFormed.includes("\0") ? wellFormed.replaceAll("\0", "\uFFFD") : wellFormed;
}

/**
 * Writes many completions in one call of lote.complete_items (migration 003): one JSON array of rows read by
 * json_to_recordset, fenced by attempt. Returns the batches it touched and whether each now has every result; the
 * function also notifies `lote_batch` once per touched batch, at commit.
 */
export async function completeItems(pool: Queryable, completions: readonly (Completion | Rescue)[]): Promise<{ batchId: string; finished: boolean }[]> {
  const batchIds = new Set<string>();
  // Keys are the column names of json_to_recordset's row type in the function; absent keys read as NULL.
  const rows = completions.map((c) => {
    batchIds.add(c.batchId);
    const row = {
      batch_id: c.batchId, idx: c.idx, attempt: c.attempt, outcome: c.outcome, status_code: c.statusCode,
      ...("rescue" in c ? { rescue: true } : {}),
    };
    switch (c.outcome) {
      case "succeeded":
        return { ...row, request_id: c.requestId, body: storable(c.body), input_tokens: c.inputTokens, output_tokens: c.outputTokens, total_tokens: c.totalTokens };
      case "retry":
        return { ...row, error_code: c.errorCode, error_message: storable(c.errorMessage), retry_delay_ms: Math.round(c.retryDelayMs) };
      default:
        return { ...row, request_id: c.requestId, error_code: c.errorCode, error_message: storable(c.errorMessage) };
    }
  });
  const { rows: touched } = await pool.query({
    name: "lote.complete_items",
    text: "SELECT * FROM lote.complete_items($1::text[], $2::json)",
    values: [[...batchIds], JSON.stringify(rows)],
    rowMode: "array",
  });
  return touched.map((r) => ({ batchId: r[0], finished: r[1] }));
}
