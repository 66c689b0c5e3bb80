import type pg from "pg";

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
 * Writes many completions in one call of lote.complete_items (migration 002): one `unnest` over parallel arrays,
 * fenced by attempt. Returns the batches it touched and whether each now has every result; the function also
 * notifies `lote_batch` once per touched batch, at commit.
 */
export async function completeItems(pool: pg.Pool, completions: readonly Completion[]): Promise<{ batchId: string; finished: boolean }[]> {
  const n = completions.length;
  const cols = {
    batchId: new Array<string>(n), idx: new Array<number>(n), attempt: new Array<number>(n), outcome: new Array<string>(n),
    statusCode: new Array<number>(n), requestId: new Array<string | null>(n), body: new Array<string | null>(n),
    errorCode: new Array<string | null>(n), errorMessage: new Array<string | null>(n), delay: new Array<number>(n),
    inTok: new Array<number>(n), outTok: new Array<number>(n), totTok: new Array<number>(n),
  };
  completions.forEach((c, i) => {
    cols.batchId[i] = c.batchId;
    cols.idx[i] = c.idx;
    cols.attempt[i] = c.attempt;
    cols.outcome[i] = c.outcome;
    cols.statusCode[i] = c.statusCode;
    cols.requestId[i] = c.outcome === "retry" ? null : c.requestId;
    cols.body[i] = c.outcome === "succeeded" ? c.body : null;
    cols.errorCode[i] = c.outcome === "succeeded" ? null : c.errorCode;
    cols.errorMessage[i] = c.outcome === "succeeded" ? null : c.errorMessage;
    cols.delay[i] = c.outcome === "retry" ? Math.round(c.retryDelayMs) : 0;
    cols.inTok[i] = c.outcome === "succeeded" ? c.inputTokens : 0;
    cols.outTok[i] = c.outcome === "succeeded" ? c.outputTokens : 0;
    cols.totTok[i] = c.outcome === "succeeded" ? c.totalTokens : 0;
  });
  const { rows } = await pool.query({
    text: `SELECT * FROM lote.complete_items($1::text[], $2::int[], $3::int[], $4::text[], $5::int[], $6::text[], $7::text[],
             $8::text[], $9::text[], $10::int[], $11::bigint[], $12::bigint[], $13::bigint[])`,
    values: [cols.batchId, cols.idx, cols.attempt, cols.outcome, cols.statusCode, cols.requestId, cols.body,
      cols.errorCode, cols.errorMessage, cols.delay, cols.inTok, cols.outTok, cols.totTok],
    rowMode: "array",
  });
  return rows.map((r) => ({ batchId: r[0], finished: r[1] }));
}
