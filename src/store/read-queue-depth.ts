import type { Queryable } from "./transition-batch.ts";

export interface QueueDepth {
  /** Requests of the model's batches in progress that wait for a call: pending now, or waiting out a retry's backoff. */
  readonly pending: number;
  /** Seconds since the oldest batch in progress with unfinished requests was created. */
  readonly oldestBatchSeconds: number;
}

/**
 * The queue of each model with work, fleet-wide, for the metrics. Read from the batches' counts, not by counting
 * lote.items: the unfinished requests of a batch are its total less the results it has (the counts written with
 * each flush), and the running ones are counted from `items_running`, which holds no more than the fleet's
 * max_concurrency. A count(*) of the pending rows read every one of them, a million for a million-request batch,
 * at every scrape of every node; this reads the open batches (`batches_open`) and the running rows.
 */
export async function readQueueDepth(db: Queryable): Promise<Map<string, QueueDepth>> {
  const { rows } = await db.query<{ model: string; pending: string; oldest_seconds: number }>({
    name: "lote.read_queue_depth",
    text: `WITH open AS (
             SELECT model, sum(total - completed - failed - cancelled - expired) AS unfinished,
                    extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds
               FROM lote.batches
              WHERE status = 'in_progress' AND total > completed + failed + cancelled + expired
              GROUP BY model
           ), running AS (
             SELECT i.model, count(*) AS running
               FROM lote.items i JOIN lote.batches b ON b.id = i.batch_id AND b.status = 'in_progress'
              WHERE i.status = 'running'
              GROUP BY i.model
           )
           SELECT o.model, greatest(0, o.unfinished - coalesce(r.running, 0))::bigint AS pending, o.oldest_seconds
             FROM open o LEFT JOIN running r USING (model)`,
    values: [],
  });
  return new Map(rows.map((r) => [r.model, { pending: Number(r.pending), oldestBatchSeconds: Math.max(0, r.oldest_seconds) }]));
}
