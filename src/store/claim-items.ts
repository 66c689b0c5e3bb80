import type pg from "pg";
import type { EndpointPath } from "../backends/backend.ts";

export interface ClaimedItem {
  readonly batchId: string;
  readonly idx: number;
  readonly customId: string;
  /** 1 on the first call; the completion is fenced by it. */
  readonly attempt: number;
  readonly body: string;
  readonly endpoint: EndpointPath;
  readonly estTokens: number;
}

export interface ClaimRequest {
  readonly model: string;
  /** Free slots on this node for the model: never claim more than can start now. */
  readonly limit: number;
  readonly workerId: string;
  readonly leaseMs: number;
  readonly maxConcurrency: number;
  readonly requestsPerMinute: number;
  readonly tokensPerMinute: number;
}

/**
 * Claims up to `limit` pending items of a model in one call of lote.claim_items (migration 002): a per-model
 * advisory lock, the fleet-wide running count, then one `FOR UPDATE SKIP LOCKED ... LIMIT` statement that marks
 * the rows running with attempt + 1 and a lease and returns what the backend call needs.
 */
export async function claimItems(pool: pg.Pool, r: ClaimRequest): Promise<ClaimedItem[]> {
  const { rows } = await pool.query({
    text: "SELECT * FROM lote.claim_items($1, $2, $3, $4, $5, $6, $7)",
    values: [r.model, r.limit, r.workerId, r.leaseMs, r.maxConcurrency, r.requestsPerMinute, r.tokensPerMinute],
    rowMode: "array",
  });
  return rows.map((c) => ({ batchId: c[0], idx: c[1], customId: c[2], attempt: c[3], body: c[4], endpoint: c[5], estTokens: c[6] }));
}

/** Renews the lease of every item this worker is running (one statement per heartbeat, not one per item). */
export async function heartbeat(pool: pg.Pool, workerId: string, leaseMs: number): Promise<number> {
  const result = await pool.query(
    `UPDATE lote.items SET lease_expires_at = now() + $2 * interval '1 millisecond'
      WHERE worker_id = $1 AND status = 'running'`,
    [workerId, leaseMs],
  );
  return result.rowCount ?? 0;
}

export interface ExpiredLease {
  readonly batchId: string;
  readonly idx: number;
  readonly attempt: number;
  readonly model: string;
  readonly batchStatus: string;
  readonly lastError: { code: string; message: string; status_code?: number } | null;
}

/**
 * Running items whose lease ran out: their worker died or hung. The rescuer decides each one's fate (retry, fail
 * at max attempts, cancel) and writes it through completeItems, which is fenced by attempt like any completion.
 */
export async function findExpiredLeases(pool: pg.Pool, limit: number): Promise<ExpiredLease[]> {
  const { rows } = await pool.query(
    `SELECT i.batch_id, i.idx, i.attempt, i.model, b.status AS batch_status, i.last_error
       FROM lote.items i JOIN lote.batches b ON b.id = i.batch_id
      WHERE i.status = 'running' AND i.lease_expires_at < now()
      ORDER BY i.lease_expires_at LIMIT $1`,
    [limit],
  );
  return rows.map((r) => ({ batchId: r.batch_id, idx: r.idx, attempt: r.attempt, model: r.model, batchStatus: r.batch_status, lastError: r.last_error }));
}
