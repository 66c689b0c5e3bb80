import type { BatchStatus } from "../batch/batch-status.ts";
import type { EndpointPath } from "../backends/backend.ts";

/** A batch as the store keeps it. The API turns it into the lote.v1.Batch message. */
export interface BatchRecord {
  readonly id: string;
  readonly seq: bigint;
  readonly tenantId: string;
  readonly requestId: string | null;
  readonly endpoint: EndpointPath;
  readonly model: string;
  readonly status: BatchStatus;
  readonly priority: number;
  readonly completionWindowSeconds: number;
  readonly metadata: Record<string, string>;
  readonly errors: { code: string; message: string; param?: string; line?: number }[];
  readonly total: number;
  readonly completed: number;
  readonly failed: number;
  readonly cancelled: number;
  readonly expired: number;
  /** Items being sent to a backend now (derived at read time from items, not stored). */
  readonly running: number;
  readonly inputTokens: number;
  readonly outputTokens: number;
  readonly totalTokens: number;
  readonly retriedFrom: string | null;
  readonly createdAt: Date;
  readonly inProgressAt: Date | null;
  readonly finalizingAt: Date | null;
  readonly completedAt: Date | null;
  readonly failedAt: Date | null;
  readonly expiredAt: Date | null;
  readonly cancellingAt: Date | null;
  readonly cancelledAt: Date | null;
  readonly expiresAt: Date;
  readonly updatedAt: Date;
}

/**
 * A batch's running items, through items_running (model, worker_id) WHERE status = 'running': at most the fleet's
 * calls in flight for the model. COLLATE "C" (byte equality, the same answer) keeps the planner off the primary
 * key (batch_id, idx), which would read every item of the batch: a million for a big one. Migration 003.
 */
export const runningItemsOf = (batch: string) =>
  `lote.items r WHERE r.model = ${batch}.model AND r.status = 'running' AND r.batch_id = ${batch}.id COLLATE "C"`;

/** The column list every batch read selects; `running` is counted as runningItemsOf says. */
export const batchColumns = `b.id, b.seq, b.tenant_id, b.request_id, b.endpoint, b.model, b.status, b.priority,
  b.completion_window_seconds, b.metadata, b.errors, b.total, b.completed, b.failed, b.cancelled, b.expired,
  (SELECT count(*) FROM ${runningItemsOf("b")}) AS running,
  b.input_tokens, b.output_tokens, b.total_tokens, b.retried_from, b.created_at, b.in_progress_at, b.finalizing_at,
  b.completed_at, b.failed_at, b.expired_at, b.cancelling_at, b.cancelled_at, b.expires_at, b.updated_at`;

// pg returns bigint/count as strings; every count here fits a double (< 2^53).
export function toBatchRecord(r: Record<string, any>): BatchRecord {
  return {
    id: r.id,
    seq: BigInt(r.seq),
    tenantId: r.tenant_id,
    requestId: r.request_id,
    endpoint: r.endpoint,
    model: r.model,
    status: r.status,
    priority: r.priority,
    completionWindowSeconds: Number(r.completion_window_seconds),
    metadata: r.metadata,
    errors: r.errors,
    total: Number(r.total),
    completed: Number(r.completed),
    failed: Number(r.failed),
    cancelled: Number(r.cancelled),
    expired: Number(r.expired),
    running: Number(r.running ?? 0),
    inputTokens: Number(r.input_tokens),
    outputTokens: Number(r.output_tokens),
    totalTokens: Number(r.total_tokens),
    retriedFrom: r.retried_from,
    createdAt: r.created_at,
    inProgressAt: r.in_progress_at,
    finalizingAt: r.finalizing_at,
    completedAt: r.completed_at,
    failedAt: r.failed_at,
    expiredAt: r.expired_at,
    cancellingAt: r.cancelling_at,
    cancelledAt: r.cancelled_at,
    expiresAt: r.expires_at,
    updatedAt: r.updated_at,
  };
}
