import type pg from "pg";

export interface ResultRecord {
  readonly seq: bigint;
  readonly idx: number;
  readonly customId: string;
  readonly attempts: number;
  readonly statusCode: number;
  readonly backendRequestId: string;
  /** Backend response body (JSON text) for 2xx answers; null otherwise. */
  readonly body: string | null;
  readonly errorCode: string | null;
  readonly errorMessage: string | null;
}

export type ResultFilter = "all" | "succeeded" | "failed";

/** Results of a batch in completion order, strictly after `afterSeq` (primary key scan on (batch_id, seq)). */
export async function getResults(pool: pg.Pool, batchId: string, afterSeq: bigint, limit: number, filter: ResultFilter = "all"): Promise<ResultRecord[]> {
  const filterSql = filter === "succeeded" ? " AND error_code IS NULL" : filter === "failed" ? " AND error_code IS NOT NULL" : "";
  const { rows } = await pool.query({
    // Named per filter (three fixed texts): a result stream runs it once per page and per wake-up.
    name: `lote.get_results_${filter}`,
    text: `SELECT seq, idx, custom_id, attempts, status_code, backend_request_id, body, error_code, error_message
             FROM lote.results WHERE batch_id = $1 AND seq > $2${filterSql} ORDER BY seq LIMIT $3`,
    values: [batchId, afterSeq.toString(), limit],
    rowMode: "array",
  });
  return rows.map((r) => ({
    seq: BigInt(r[0]),
    idx: r[1],
    customId: r[2],
    attempts: r[3],
    statusCode: r[4],
    backendRequestId: r[5],
    body: r[6],
    errorCode: r[7],
    errorMessage: r[8],
  }));
}

/** Results for the given item positions (RunBatch collects its own items this way). */
export async function getResultsByIdx(pool: pg.Pool, batchId: string, idx: readonly number[]): Promise<ResultRecord[]> {
  const { rows } = await pool.query(
    `SELECT seq, idx, custom_id, attempts, status_code, backend_request_id, body, error_code, error_message
       FROM lote.results WHERE batch_id = $1 AND idx = ANY($2::int[])`,
    [batchId, idx],
  );
  return rows.map((r) => ({
    seq: BigInt(r.seq), idx: r.idx, customId: r.custom_id, attempts: r.attempts, statusCode: r.status_code,
    backendRequestId: r.backend_request_id, body: r.body, errorCode: r.error_code, errorMessage: r.error_message,
  }));
}
