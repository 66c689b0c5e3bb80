import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, inject } from "vitest";
import { migrate } from "../../src/store/index.ts";

export interface TestDatabase {
  /** Connection string of a fresh, empty database owned by this test file. */
  readonly url: string;
  /** Drops the database (terminating leftover connections). */
  drop(): Promise<void>;
}

/** Creates a fresh database on the suite's Postgres, so every test file starts from an empty schema. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = inject("adminDatabaseUrl");
  const name = `lote_t_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    // The name is generated here from hex digits; CREATE DATABASE cannot take a bind parameter.
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await client.end();
      }
    },
  };
}

/**
 * A pool on a test database. pool.end() resolves once its clients are told to close, not once their server
 * processes are gone, so the DROP DATABASE ... WITH (FORCE) that follows can terminate one that is still exiting.
 * Its client then reports "terminating connection due to administrator command" (57P01) to a pool with no error
 * listener, which throws outside any test (seen once in CI). That one error is expected at teardown; any other
 * error of an idle client still fails the run.
 */
export function testPool(url: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: url });
  pool.on("error", (err: Error & { code?: string }) => {
    if (err.code !== "57P01") throw err;
  });
  return pool;
}

/**
 * A fresh, migrated database and a pool on it for the file's tests: registers beforeAll/afterAll and returns a
 * handle whose fields are set once beforeAll has run.
 */
export function useMigratedDatabase(): { db: TestDatabase; pool: pg.Pool } {
  const handle = {} as { db: TestDatabase; pool: pg.Pool };
  beforeAll(async () => {
    handle.db = await createTestDatabase();
    handle.pool = testPool(handle.db.url);
    await migrate(handle.pool);
  });
  afterAll(async () => {
    await handle.pool?.end();
    await handle.db?.drop();
  });
  return handle;
}
