import type pg from "pg";
import type { BatchStatus } from "../batch/batch-status.ts";
import { batchColumns, toBatchRecord, type BatchRecord } from "./batch-row.ts";

/** One batch of one tenant, or undefined (another tenant's batch is as absent as a missing one). */
export async function getBatch(db: pg.Pool | pg.ClientBase, tenantId: string, id: string): Promise<BatchRecord | undefined> {
  // Named (parsed once per connection): GetBatch, CancelBatch and every WatchBatch wake-up read a batch this way.
  const { rows } = await db.query({
    name: "lote.get_batch", text: `SELECT ${batchColumns} FROM lote.batches b WHERE b.id = $1 AND b.tenant_id = $2`, values: [id, tenantId],
  });
  return rows[0] ? toBatchRecord(rows[0]) : undefined;
}

export interface ListBatchesQuery {
  readonly tenantId: string;
  readonly limit: number;
  /** Only batches older than this seq (the page token carries it). */
  readonly beforeSeq?: bigint;
  readonly status?: BatchStatus;
  readonly metadataKey?: string;
  readonly metadataValue?: string;
}

/** Newest first, keyset-paginated on seq (batches_tenant_seq index): stable while new batches arrive. */
export async function listBatches(pool: pg.Pool, q: ListBatchesQuery): Promise<BatchRecord[]> {
  const params: unknown[] = [q.tenantId, q.limit];
  const where = ["b.tenant_id = $1"];
  if (q.beforeSeq !== undefined) {
    params.push(q.beforeSeq.toString());
    where.push(`b.seq < $${params.length}`);
  }
  if (q.status) {
    params.push(q.status);
    where.push(`b.status = $${params.length}`);
  }
  if (q.metadataKey && q.metadataValue !== undefined && q.metadataValue !== "") {
    params.push(JSON.stringify({ [q.metadataKey]: q.metadataValue }));
    where.push(`b.metadata @> $${params.length}::jsonb`);
  } else if (q.metadataKey) {
    params.push(q.metadataKey);
    where.push(`b.metadata ? $${params.length}`);
  }
  const { rows } = await pool.query(
    `SELECT ${batchColumns} FROM lote.batches b WHERE ${where.join(" AND ")} ORDER BY b.seq DESC LIMIT $2`,
    params,
  );
  return rows.map(toBatchRecord);
}

/** The status of each of these batches that exists (any tenant): what a worker checks its calls against. */
export async function batchStatuses(pool: pg.Pool, ids: readonly string[]): Promise<{ id: string; status: string }[]> {
  const { rows } = await pool.query<{ id: string; status: string }>("SELECT id, status FROM lote.batches WHERE id = ANY($1::text[])", [ids]);
  return rows;
}
