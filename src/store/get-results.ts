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

/** A page of results, and whether `maxBytes` cut it short of `limit` rows (more may follow at once). */
export interface ResultPage {
  readonly rows: ResultRecord[];
  readonly cutByBytes: boolean;
}

/**
 * Results of a batch in completion order, strictly after `afterSeq` (primary key scan on (batch_id, seq)): at most
 * `limit` rows, and no more rows once `maxBytes` of answers and error messages are read (the first row always
 * comes, whatever its size). Answers run up to a model's max_response_bytes (64 MiB by default), so 500 rows of
 * large embeddings answers would otherwise be read into one node's memory at once; octet_length reads a stored
 * value's size from its header, without reading the value.
 */
export async function getResults(
  pool: pg.Pool, batchId: string, afterSeq: bigint, limit: number, filter: ResultFilter = "all", maxBytes = 4 * 1024 * 1024,
): Promise<ResultPage> {
  const filterSql = filter === "succeeded" ? " AND error_code IS NULL" : filter === "failed" ? " AND error_code IS NOT NULL" : "";
  const { rows } = await pool.query({
    // Named per filter (three fixed texts): a result stream runs it once per page and per wake-up.
    name: `lote.get_results_${filter}`,
    text: `SELECT r.seq, r.idx, r.custom_id, r.attempts, r.status_code, r.backend_request_id, r.body, r.error_code, r.error_message, r.read
             FROM (SELECT p.*, count(*) OVER () AS read, sum(p.size) OVER (ORDER BY p.seq) - p.size AS before
                     FROM (SELECT *, coalesce(octet_length(body), 0) + coalesce(octet_length(error_message), 0) AS size
                             FROM lote.results WHERE batch_id = $1 AND seq > $2${filterSql} ORDER BY seq LIMIT $3) p) r
            WHERE r.before < $4
            ORDER BY r.seq`,
    values: [batchId, afterSeq.toString(), limit, maxBytes],
    rowMode: "array",
  });
  return {
    rows: rows.map((r) => ({
      seq: BigInt(r[0]),
      idx: r[1],
      customId: r[2],
      attempts: r[3],
      statusCode: r[4],
      backendRequestId: r[5],
      body: r[6],
      errorCode: r[7],
      errorMessage: r[8],
    })),
    cutByBytes: rows.length > 0 && rows.length < Number(rows[0]![9]),
  };
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
