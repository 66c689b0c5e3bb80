/**
 * The ceiling lote's ingest is compared with: a binary COPY of the same rows, from a buffer built beforehand, into
 * a table with lote.items' columns, defaults, checks, indexes and foreign key. What lote adds on top of this is
 * gRPC, protobuf decoding, validation and building the COPY data.
 */
import { finished } from "node:stream/promises";
import type pg from "pg";
import { from as copyFrom } from "pg-copy-streams";

export interface RawRow {
  readonly customId: string;
  readonly body: string;
  readonly estTokens: number;
}

/** bench_raw.items: LIKE ... INCLUDING ALL copies columns, defaults, CHECKs, the primary key and every (partial)
 * index; the foreign key to lote.batches is added by hand, since LIKE never copies foreign keys. */
export async function createRawTable(client: pg.ClientBase, withForeignKey: boolean): Promise<string> {
  const table = withForeignKey ? "bench_raw.items" : "bench_raw.items_nofk";
  await client.query("CREATE SCHEMA IF NOT EXISTS bench_raw");
  await client.query(`CREATE TABLE ${table} (LIKE lote.items INCLUDING ALL)`);
  if (withForeignKey) await client.query(`ALTER TABLE ${table} ADD FOREIGN KEY (batch_id) REFERENCES lote.batches (id) ON DELETE CASCADE`);
  return table;
}

const signature = Buffer.from("PGCOPY\n\xff\r\n\0", "latin1");

/** The binary COPY stream for (batch_id, idx, custom_id, model, priority, est_tokens, body, tenant_id), as 1 MiB
 * chunks (lote writes 1 MiB chunks too). Built once, before timing. */
export function rawCopyChunks(batchId: string, model: string, priority: number, rows: readonly RawRow[], tenantId = "default"): Buffer[] {
  const parts: Buffer[] = [Buffer.concat([signature, Buffer.alloc(8)])];
  const batch = Buffer.from(batchId);
  const modelBytes = Buffer.from(model);
  const tenant = Buffer.from(tenantId);
  rows.forEach((r, i) => {
    const custom = Buffer.from(r.customId);
    const body = Buffer.from(r.body);
    const row = Buffer.allocUnsafe(2 + 8 * 4 + batch.length + 4 + custom.length + modelBytes.length + 4 + 4 + body.length + tenant.length);
    let at = row.writeInt16BE(8, 0);
    at = row.writeInt32BE(batch.length, at); at += batch.copy(row, at);
    at = row.writeInt32BE(4, at); at = row.writeInt32BE(i, at);
    at = row.writeInt32BE(custom.length, at); at += custom.copy(row, at);
    at = row.writeInt32BE(modelBytes.length, at); at += modelBytes.copy(row, at);
    at = row.writeInt32BE(4, at); at = row.writeInt32BE(priority, at);
    at = row.writeInt32BE(4, at); at = row.writeInt32BE(r.estTokens, at);
    at = row.writeInt32BE(body.length, at); at += body.copy(row, at);
    at = row.writeInt32BE(tenant.length, at); tenant.copy(row, at);
    parts.push(row);
  });
  parts.push(Buffer.from([0xff, 0xff]));
  const all = Buffer.concat(parts);
  const chunks: Buffer[] = [];
  for (let at = 0; at < all.length; at += 1 << 20) chunks.push(all.subarray(at, Math.min(all.length, at + (1 << 20))));
  return chunks;
}

/** One timed ingest: BEGIN, COPY the chunks, COMMIT. Returns milliseconds. */
export async function timeRawCopy(client: pg.ClientBase, table: string, chunks: readonly Buffer[]): Promise<number> {
  const started = performance.now();
  await client.query("BEGIN");
  const copy = client.query(copyFrom(`COPY ${table} (batch_id, idx, custom_id, model, priority, est_tokens, body, tenant_id) FROM STDIN (FORMAT binary)`));
  for (const chunk of chunks) if (!copy.write(chunk)) await new Promise((resolve) => copy.once("drain", resolve));
  copy.end();
  await finished(copy);
  await client.query("COMMIT");
  return performance.now() - started;
}
