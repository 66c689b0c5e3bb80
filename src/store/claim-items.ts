import type pg from "pg";
import type { Queryable } from "./transition-batch.ts";
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
  /** The batch's tenant: the claim shares a model's slots between tenants by their calls in flight. */
  readonly tenantId: string;
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
  /**
   * Calls this node has in flight for the model. When given, the fleet-wide count is other nodes' running rows
   * plus this number, so the node's own finished-but-unwritten completions do not hold slots (see migration
   * 002). Omitted: every running row counts.
   */
  readonly ownCalls?: number;
  /**
   * This node's calls in flight for the model, per tenant (absent: none), in the order the node served them, least
   * recently first. A free slot goes to the tenant with pending work that holds the fewest (migration 004), and
   * among those to the first in this order, a tenant not in it before all (migration 008); other nodes share their
   * own slots the same way.
   */
  readonly tenantCalls?: ReadonlyMap<string, number>;
}

/**
 * Claims up to `limit` pending items of a model in one call of lote.claim_items (migrations 002-008): a per-model
 * advisory lock, the fleet-wide running count, the pick (highest priority first, slots shared between tenants, a
 * tenant's batches interleaved), locked `FOR UPDATE SKIP LOCKED` as it is read, then one statement that marks the
 * rows running with attempt + 1 and a lease and returns what the backend call needs.
 */
export async function claimItems(pool: Queryable, r: ClaimRequest): Promise<ClaimedItem[]> {
  const { rows } = await pool.query({
    // Named: each pooled connection parses it once (0.2 ms of every claim's round trip otherwise).
    name: "lote.claim_items",
    text: "SELECT * FROM lote.claim_items($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    values: [r.model, r.limit, r.workerId, r.leaseMs, r.maxConcurrency, r.requestsPerMinute, r.tokensPerMinute, r.ownCalls ?? null,
      r.tenantCalls ? [...r.tenantCalls.keys()] : null, r.tenantCalls ? [...r.tenantCalls.values()] : null],
    rowMode: "array",
  });
  return rows.map((c) => ({ batchId: c[0], idx: c[1], customId: c[2], attempt: c[3], body: c[4], endpoint: c[5], estTokens: c[6], tenantId: c[7] }));
}

/** An item a node holds: claimed by it, and not yet written back by its completion. */
export interface HeldItem {
  readonly batchId: string;
  readonly idx: number;
  readonly attempt: number;
}

/**
 * Renews the leases of the items this worker holds, named one by one (one statement per heartbeat, not one per
 * item). Not "every running row with my worker id": a claim that committed but whose answer never reached the node
 * (the connection dropped after COMMIT) leaves rows running under its id that it never called, and renewing them by
 * id kept them running, and their batch unfinished, for as long as the node lived. Named, they lose their lease and
 * the rescuer runs them again. Each key is one primary-key probe (LATERAL from the list, so the plan starts from it).
 * SKIP LOCKED: a row locked right now is being completed, so it needs no renewal, and waiting for it would
 * lock rows in an order no completion follows: the two deadlocked (a failed flush, retried) in a 60,000-item
 * run of bench/dispatch.ts. A row skipped by a completion that then fails is renewed by the next heartbeat; a lease
 * outlives two missed ones.
 */
export async function heartbeat(pool: Queryable, workerId: string, held: readonly HeldItem[], leaseMs: number): Promise<number> {
  if (held.length === 0) return 0;
  // lease_expires_at is in no index, so each renewal is a HOT update.
  const result = await pool.query({
    name: "lote.heartbeat",
    text: `UPDATE lote.items SET lease_expires_at = now() + $2 * interval '1 millisecond'
      WHERE ctid = ANY (ARRAY(
              SELECT t.tid FROM unnest($3::text[], $4::integer[], $5::integer[]) AS k(batch_id, idx, attempt)
                CROSS JOIN LATERAL (
                  SELECT it.ctid AS tid FROM lote.items it
                   WHERE it.batch_id = k.batch_id AND it.idx = k.idx AND it.attempt = k.attempt
                     AND it.worker_id = $1 AND it.status = 'running'
                     FOR UPDATE SKIP LOCKED) t))
        AND worker_id = $1 AND status = 'running'`,
    values: [workerId, leaseMs, held.map((h) => h.batchId), held.map((h) => h.idx), held.map((h) => h.attempt)],
  });
  return result.rowCount ?? 0;
}

/**
 * VACUUM of lote.items, run by the dispatcher every 50,000 items it claims. Each claimed item leaves a dead entry
 * at the head of items_claimable (and one in items_running) that every later claim steps over until a vacuum
 * removes it, and autovacuum waits for a fifth of the table to be dead. In a 400,000-item run claims grew from
 * 1.8 to 3.6 ms (+0.25 ms per 50,000 items) and Postgres spent 72 µs per item; with this every 50,000 items
 * (~100 ms each) claims stayed at 1.85 ms, 57 µs per item. A 1,000,000-request batch (bench/dispatch.ts (d)):
 * 153 µs of Postgres CPU per item before, 72 after, 5,300/s -> 8,300/s. SKIP_LOCKED: if another node or
 * autovacuum is already at it, do not wait.
 */
export async function vacuumItems(pool: pg.Pool): Promise<void> {
  await pool.query("VACUUM (SKIP_LOCKED) lote.items");
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
 * Only items of `models` (those the rescuing node is configured for, so it knows their max_attempts), and those of
 * cancelled batches, whose fate needs no model: a node of another model put a lost call back to pending with a
 * default of 5 attempts, so a request of a model with max_attempts 1 was called twice, and one allowed 10 failed
 * after 5.
 */
export async function findExpiredLeases(pool: pg.Pool, limit: number, models: readonly string[]): Promise<ExpiredLease[]> {
  const { rows } = await pool.query(
    `SELECT i.batch_id, i.idx, i.attempt, i.model, b.status AS batch_status, i.last_error
       FROM lote.items i JOIN lote.batches b ON b.id = i.batch_id
      WHERE i.status = 'running' AND i.lease_expires_at < now()
        AND (i.model = ANY($2::text[]) OR b.status IN ('cancelling', 'cancelled'))
      ORDER BY i.lease_expires_at LIMIT $1`,
    [limit, models],
  );
  return rows.map((r) => ({ batchId: r.batch_id, idx: r.idx, attempt: r.attempt, model: r.model, batchStatus: r.batch_status, lastError: r.last_error }));
}
