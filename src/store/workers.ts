import type { Queryable } from "./transition-batch.ts";

export interface WorkerPresence {
  readonly workerId: string;
  /** The models this worker dispatches, and how many calls of each it can run. */
  readonly capacities: ReadonlyMap<string, number>;
  /** The worker counts as alive for this long from now unless renewed: the node's lease_ms, as for its leases. */
  readonly liveMs: number;
}

/**
 * Marks this worker alive for `liveMs` more (inserting its row on the first call, or when it was removed) and
 * answers, per model it dispatches, the capacities of the other workers alive for that model. An insert notifies
 * `lote_workers`, so the other nodes re-read at once instead of at their next heartbeat; a renewal does not. Rows
 * dead for an hour are removed (they stopped counting when they died).
 */
export async function markWorkerAlive(db: Queryable, p: WorkerPresence): Promise<Map<string, number[]>> {
  const { rows } = await db.query<{ model: string; others: number[]; inserted: boolean }>({
    name: "lote.mark_worker_alive",
    // `xmax = 0` on the row an upsert returns: it was inserted, not updated. The reads see the snapshot from
    // before this statement, which this worker's row may not be in yet, so they leave it out.
    text: `WITH me AS (
             INSERT INTO lote.workers AS w (id, models, capacities, alive_until)
             VALUES ($1, $2::text[], $4::integer[], now() + $3 * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until, models = excluded.models, capacities = excluded.capacities
             RETURNING (w.xmax = 0) AS inserted
           ), pruned AS (
             DELETE FROM lote.workers o WHERE o.id <> $1 AND o.alive_until < now() - interval '1 hour'
           )
           SELECT m.model, me.inserted,
                  ARRAY(SELECT o.capacities[array_position(o.models, m.model)] FROM lote.workers o
                         WHERE o.id <> $1 AND m.model = ANY (o.models) AND o.alive_until > now()) AS others
             FROM unnest($2::text[]) AS m(model), me`,
    values: [p.workerId, [...p.capacities.keys()], p.liveMs, [...p.capacities.values()]],
  });
  if (rows[0]?.inserted) await db.query("SELECT pg_notify('lote_workers', $1)", [p.workerId]);
  return new Map(rows.map((r) => [r.model, r.others]));
}

/** Removes this worker's row when it stops, and tells the others, so they take its share of every model at once. */
export async function retireWorker(db: Queryable, workerId: string): Promise<void> {
  await db.query(
    "WITH gone AS (DELETE FROM lote.workers WHERE id = $1 RETURNING id) SELECT pg_notify('lote_workers', id) FROM gone",
    [workerId],
  );
}

export interface WorkerRecord {
  readonly id: string;
  readonly startedAt: Date;
  readonly aliveUntil: Date;
  /** Renewed within its lease: it counts in the shares. */
  readonly alive: boolean;
  /** The models it dispatches, and how many calls of each it can run. */
  readonly models: { readonly model: string; readonly capacity: number }[];
}

/** The worker nodes alive, oldest first; with `all`, also the dead ones not yet removed (dead for under an hour). */
export async function listWorkers(db: Queryable, options: { all?: boolean } = {}): Promise<WorkerRecord[]> {
  const { rows } = await db.query<{ id: string; started_at: Date; alive_until: Date; alive: boolean; models: string[]; capacities: number[] }>(
    `SELECT id, started_at, alive_until, alive_until > now() AS alive, models, capacities FROM lote.workers
      WHERE $1 OR alive_until > now() ORDER BY started_at, id`,
    [options.all ?? false],
  );
  return rows.map((r) => ({
    id: r.id, startedAt: r.started_at, aliveUntil: r.alive_until, alive: r.alive,
    models: r.models.map((model, i) => ({ model, capacity: r.capacities[i]! })),
  }));
}
