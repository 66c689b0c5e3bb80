import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import type pg from "pg";

const migrationsDir = fileURLToPath(new URL("./migrations/", import.meta.url));

// Any 64-bit number unique to lote; every node that starts takes it, so only one applies migrations at a time
// and the others wait and then find nothing left to do.
const migrationLockKey = 7_402_188_551_337n;

/**
 * Applies the numbered SQL files in src/store/migrations/ that this database has not seen, each in its own
 * transaction, under a session advisory lock: safe when several nodes start together. `through` stops after that
 * version (a database as an older lote left it, for tests of the upgrade path).
 */
export async function migrate(pool: pg.Pool, options: { through?: number } = {}): Promise<{ applied: string[] }> {
  const files = (await readdir(migrationsDir))
    .filter((f) => /^\d{3}_.+\.sql$/.test(f) && Number(f.slice(0, 3)) <= (options.through ?? Infinity))
    .sort();
  const client = await pool.connect();
  const applied: string[] = [];
  try {
    await client.query("SELECT pg_advisory_lock($1)", [migrationLockKey.toString()]);
    await client.query("CREATE SCHEMA IF NOT EXISTS lote");
    await client.query(
      "CREATE TABLE IF NOT EXISTS lote.migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    );
    const { rows } = await client.query<{ version: number }>("SELECT version FROM lote.migrations");
    const done = new Set(rows.map((r) => r.version));
    for (const file of files) {
      const version = Number(file.slice(0, 3));
      if (done.has(version)) continue;
      const sql = await readFile(migrationsDir + file, "utf8");
      await client.query("BEGIN");
      try {
        await client.query(sql);
        await client.query("INSERT INTO lote.migrations (version, name) VALUES ($1, $2)", [version, file]);
        await client.query("COMMIT");
      } catch (err) {
        await client.query("ROLLBACK");
        throw new Error(`migration ${file} failed: ${(err as Error).message}`, { cause: err });
      }
      applied.push(file);
    }
  } finally {
    // A connection whose unlock failed may still hold the session lock: released to the pool it stayed idle there
    // holding it (the bulk pool, for the node's whole life), and every other node starting waited for it forever.
    // Discarded, its session ends and Postgres lets the lock go.
    let broken: Error | undefined;
    await client.query("SELECT pg_advisory_unlock($1)", [migrationLockKey.toString()]).catch((err: Error) => (broken = err));
    client.release(broken);
  }
  return { applied };
}
