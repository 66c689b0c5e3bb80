import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";
import type { EndpointPath } from "../backends/backend.ts";
import { batchTransitions } from "../batch/batch-status.ts";
import { batchColumns, toBatchRecord, type BatchRecord } from "./batch-row.ts";
import { releaseAfterRollback } from "./close-items.ts";
import { statusChangeNotifications, transitionBatch, type Queryable } from "./transition-batch.ts";

export interface NewItem {
  readonly customId: string;
  /** The body exactly as received, JSON text. */
  readonly body: string;
  /** The same body as UTF-8 bytes, when the caller has them (body_json): copied as they are, not re-encoded. */
  readonly bodyUtf8?: Uint8Array;
  /** Estimated prompt + max output tokens, for tokens_per_minute. */
  readonly estTokens: number;
}

export interface NewBatch {
  readonly id: string;
  readonly tenantId: string;
  readonly requestId?: string;
  readonly endpoint: EndpointPath;
  readonly model: string;
  readonly priority: number;
  readonly completionWindowSeconds: number;
  readonly metadata: Record<string, string>;
  readonly retriedFrom?: string;
  /**
   * The items in order: an array, or any iterable with `total` set, such as one that checks each request as the
   * COPY pulls it. An iterator that throws aborts the COPY and rolls everything back; its error comes out of
   * createBatch as thrown. Not iterated at all when a repeated request_id returns the existing batch.
   */
  readonly items: Iterable<NewItem>;
  /** How many items `items` yields (batches.total). Default: items.length of an array. */
  readonly total?: number;
  /**
   * With a request_id: the call's fingerprint (src/batch/request-digest.ts), stored with the batch. Read once every
   * item was pulled, since a lazy `items` may feed it as it goes.
   */
  readonly requestDigest?: () => string;
}

/**
 * What createBatch made: the new batch, or (`created` false) the batch the tenant's request_id already names, with
 * the request_digest stored for it (null when it has none).
 */
export type CreatedBatch = { batch: BatchRecord; created: true } | { batch: BatchRecord; created: false; requestDigest: string | null };

/**
 * Inserts a batch and all its items in one transaction: the batch row, then every item through one binary COPY
 * (no round trip per row, no text escaping of JSON bodies), then VALIDATING -> IN_PROGRESS. With a request_id
 * already used by the tenant, nothing is written and the existing batch comes back (`created: false`).
 */
export async function createBatch(pool: pg.Pool, batch: NewBatch): Promise<CreatedBatch> {
  const total = batch.total ?? (Array.isArray(batch.items) ? batch.items.length : undefined);
  if (total === undefined) throw new TypeError("Expected `total` to be set when `items` is not an array, got undefined");
  if (total <= smallBatchItems) return createSmallBatch(pool, batch, total);
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const inserted = await client.query(
      `INSERT INTO lote.batches AS b (id, tenant_id, request_id, endpoint, model, status, priority,
         completion_window_seconds, metadata, total, expires_at, retried_from)
       VALUES ($1, $2, $3, $4, $5, 'validating', $6, $7::bigint, $8, $9, now() + $7::bigint * interval '1 second', $10)
       ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
       RETURNING b.id`,
      [batch.id, batch.tenantId, batch.requestId ?? null, batch.endpoint, batch.model, batch.priority,
        batch.completionWindowSeconds, batch.metadata, total, batch.retriedFrom ?? null],
    );
    if (inserted.rowCount === 0) {
      await client.query("ROLLBACK");
      const existing = await existingBatch(client, batch);
      client.release();
      return existing;
    }
    checkItemCount(batch, total, await copyItems(client, batch));
    if (batch.requestDigest) {
      await client.query("UPDATE lote.batches SET request_digest = $2 WHERE id = $1", [batch.id, batch.requestDigest()]);
    }
    await transitionBatch(client, batch.id, "start");
    // One notification per batch insert; delivered at COMMIT to every node's listener.
    await client.query("SELECT pg_notify('lote_work', $1)", [batch.model]);
    const row = await client.query(`SELECT ${batchColumns} FROM lote.batches b WHERE b.id = $1`, [batch.id]);
    await client.query("COMMIT");
    client.release();
    return { batch: toBatchRecord(row.rows[0]), created: true };
  } catch (err) {
    await releaseAfterRollback(client);
    throw err;
  }
}

/**
 * Up to this many items, a batch goes in as one statement (createSmallBatch) instead of seven round trips around a
 * COPY: a single-request CreateBatch took 3.7-5.5 ms to store that way on the 2-core bench machine, most of it
 * per-message overhead, and submit -> first backend call (bench/dispatch.ts (c)) is mostly this. RunBatch (at most
 * 1,000 requests by default) is the other caller that waits for it.
 */
const smallBatchItems = 1_000;

/**
 * createBatch writes these items in one statement of bounded size, at most smallBatchItems and 8 MiB of bodies: one
 * INSERT of well under a second (a 50,000-request, 25 MB COPY takes ~0.4 s on the 2-core bench machine). Such a
 * batch may go over a pool whose queries time out (Database.pool), so that its CreateBatch or RunBatch fails fast
 * with UNAVAILABLE when its connection went silent, where on the bulk pool it would wait for TCP.
 */
export function isBoundedBatch(items: readonly { readonly body: string; readonly bodyUtf8?: Uint8Array }[]): boolean {
  if (items.length > smallBatchItems) return false;
  // Bytes, as the statement carries them: counted in characters, non-ASCII text could make it three times as long.
  let bytes = 0;
  for (const item of items) bytes += item.bodyUtf8?.length ?? Buffer.byteLength(item.body);
  return bytes <= 8 * 1024 * 1024;
}

/**
 * createBatch in one statement, run in its own implicit transaction: the batch row (straight to the state the
 * `start` transition gives it, which the COPY path reaches inside its transaction anyway, so nobody can tell), its
 * items from one JSON parameter, and the notifications transitionBatch and the COPY path send. A repeated
 * request_id inserts nothing (the items join the batch row that was not inserted) and reads the existing batch.
 * The items are all pulled (and so checked) before anything is sent.
 */
async function createSmallBatch(pool: pg.Pool, batch: NewBatch, total: number): Promise<CreatedBatch> {
  const items: { idx: number; custom_id: string; est_tokens: number; body: string }[] = [];
  for (const item of batch.items) {
    items.push({ idx: items.length, custom_id: item.customId, est_tokens: Math.min(item.estTokens, 2 ** 31 - 1), body: item.body });
  }
  checkItemCount(batch, total, items.length);
  const start = batchTransitions.start;
  const { rows } = await pool.query({
    // Named: each pooled connection parses and plans this four-part statement once. Unnamed, that was half of the
    // store's time for a one-request batch: 0.62 -> 0.32 ms p50 (1,000 createBatch calls in a loop, in-process).
    name: "lote.create_small_batch",
    text: `WITH b AS (
       INSERT INTO lote.batches AS b (id, tenant_id, request_id, endpoint, model, status, ${start.stamp}, priority,
         completion_window_seconds, metadata, total, expires_at, retried_from, request_digest)
       VALUES ($1, $2, $3, $4, $5, $11, now(), $6, $7::bigint, $8, $9, now() + $7::bigint * interval '1 second', $10, $13)
       ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
       RETURNING b.*
     ), inserted AS (
       INSERT INTO lote.items (batch_id, idx, custom_id, model, priority, est_tokens, body, tenant_id)
       SELECT b.id, r.idx, r.custom_id, b.model, b.priority, r.est_tokens, r.body, b.tenant_id
         FROM b, json_to_recordset($12::json) AS r(idx integer, custom_id text, est_tokens integer, body text)
       RETURNING 1
     ), notified AS (
       SELECT pg_notify('lote_work', b.model), ${statusChangeNotifications("b")} FROM b
     )
     SELECT ${batchColumns}, (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM notified) AS notified FROM b`,
    values: [batch.id, batch.tenantId, batch.requestId ?? null, batch.endpoint, batch.model, batch.priority,
      batch.completionWindowSeconds, batch.metadata, total, batch.retriedFrom ?? null, start.to, JSON.stringify(items),
      batch.requestDigest?.() ?? null],
  });
  if (rows.length === 0) return existingBatch(pool, batch);
  return { batch: toBatchRecord(rows[0]), created: true };
}

/** The batch a repeated request_id names: the tenant's earlier one. */
async function existingBatch(db: Queryable, batch: NewBatch): Promise<CreatedBatch> {
  const { rows } = await db.query(`SELECT ${batchColumns}, b.request_digest FROM lote.batches b WHERE b.tenant_id = $1 AND b.request_id = $2`,
    [batch.tenantId, batch.requestId]);
  return { batch: toBatchRecord(rows[0]), created: false, requestDigest: rows[0].request_digest };
}

/** MUST hold: batches.total is what finalisation counts results against. */
function checkItemCount(batch: NewBatch, total: number, got: number): void {
  if (got !== total) throw new Error(`expected ${total} items for batch ${batch.id}, the iterable gave ${got}`);
}

/**
 * Streams the items into one COPY and returns how many there were. With a lazy `items` (CreateBatch checks each
 * request as it is pulled), Node checks and encodes chunk n+1 while Postgres inserts chunk n: measured on the
 * 2-core bench machine with 50,000 chat requests, check-everything-then-COPY took 514 ms and checking while
 * copying 408 ms, the same as copying rows checked beforehand (bench/ingest.ts, BENCHMARKS.md).
 */
async function copyItems(client: pg.PoolClient, batch: NewBatch): Promise<number> {
  const copy = client.query(copyFrom(
    "COPY lote.items (batch_id, idx, custom_id, model, priority, est_tokens, body, tenant_id) FROM STDIN (FORMAT binary)",
  ));
  const rows = { count: 0 };
  // An iterator that throws destroys the COPY stream, which sends CopyFail: the server ends the COPY and the
  // transaction can roll back. The iterator's error is the one that comes out.
  await pipeline(Readable.from(binaryRows(batch, rows)), copy);
  return rows.count;
}

// PostgreSQL binary COPY: 11-byte signature, flags, header extension length, then per tuple a 16-bit field count
// and per field a 32-bit length + bytes, then -1. See "COPY ... Binary Format" in the PostgreSQL manual.
const signature = Buffer.from("PGCOPY\n\xff\r\n\0", "latin1");
const chunkBytes = 1 << 20;

function* binaryRows(batch: NewBatch, rows: { count: number }): Generator<Buffer> {
  const batchId = Buffer.from(batch.id);
  const model = Buffer.from(batch.model);
  const tenant = Buffer.from(batch.tenantId);
  let buf = Buffer.allocUnsafe(chunkBytes);
  let at = 0;
  const header = Buffer.alloc(19);
  signature.copy(header, 0);
  buf.set(header, 0);
  at = 19;
  let i = 0;
  for (const item of batch.items) {
    const customLen = Buffer.byteLength(item.customId);
    const bodyLen = item.bodyUtf8 ? item.bodyUtf8.length : Buffer.byteLength(item.body);
    const need = 2 + (4 + batchId.length) + 8 + (4 + customLen) + (4 + model.length) + 8 + 8 + (4 + bodyLen) + (4 + tenant.length);
    if (at + need > buf.length) {
      yield buf.subarray(0, at);
      buf = Buffer.allocUnsafe(Math.max(chunkBytes, need));
      at = 0;
    }
    at = buf.writeInt16BE(8, at);
    at = buf.writeInt32BE(batchId.length, at);
    at += batchId.copy(buf, at);
    at = buf.writeInt32BE(4, at);
    at = buf.writeInt32BE(i, at);
    at = buf.writeInt32BE(customLen, at);
    at += buf.write(item.customId, at);
    at = buf.writeInt32BE(model.length, at);
    at += model.copy(buf, at);
    at = buf.writeInt32BE(4, at);
    at = buf.writeInt32BE(batch.priority, at);
    at = buf.writeInt32BE(4, at);
    at = buf.writeInt32BE(Math.min(item.estTokens, 2 ** 31 - 1), at);
    at = buf.writeInt32BE(bodyLen, at);
    if (item.bodyUtf8) {
      buf.set(item.bodyUtf8, at);
      at += bodyLen;
    } else {
      at += buf.write(item.body, at);
    }
    at = buf.writeInt32BE(tenant.length, at);
    at += tenant.copy(buf, at);
    rows.count = ++i;
  }
  if (at + 2 > buf.length) {
    yield buf.subarray(0, at);
    buf = Buffer.allocUnsafe(2);
    at = 0;
  }
  at = buf.writeInt16BE(-1, at);
  yield buf.subarray(0, at);
}
