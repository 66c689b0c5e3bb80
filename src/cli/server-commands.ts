import { constants as osConstants } from "node:os";
import { InvalidArgumentError, type Command } from "commander";
import { installShutdown } from "../api/shutdown.ts";
import { ConfigError, loadConfig } from "../config/config.ts";
import { createLogger } from "../log/logger.ts";
import { ListenError, startLote, type Role } from "../runtime/start-lote.ts";
import {
  createApiKey, DatabaseUnavailableError, EmbeddedPostgresError, listApiKeys, listWorkers, openDatabase, revokeApiKeys,
  type ApiKeyRecord, type Database, type WorkerRecord,
} from "../store/index.ts";
import { CliError, ExitCode } from "./exit-codes.ts";
import { formatColumns } from "./format-batch.ts";

/** EX_CONFIG (sysexits.h): the configuration is invalid. */
const configExitCode = 78;

/**
 * A tenant id for a new key: its batches are listed and counted under it, so it must be something an operator can
 * read and type. `--tenant ""` created a key whose batches belonged to an empty name.
 */
function tenantId(value: string): string {
  if (value.trim() === "" || value !== value.trim() || /[\p{Cc}]/u.test(value) || value.length > 200) {
    throw new InvalidArgumentError(`expected a tenant id of 1 to 200 characters, no surrounding spaces or control characters, got ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * Wraps a server command's body for commander's .action(): an invalid configuration (from the file, the
 * environment, or found at start such as an unreadable ca_file), an embedded PostgreSQL that cannot start, a
 * PostgreSQL that cannot be reached, or a port that cannot be bound is one `lote: ...` line and its exit code, not a
 * stack trace.
 */
function serverAction<A extends unknown[]>(body: (...args: A) => Promise<void>) {
  return async (...args: A): Promise<void> => {
    try {
      await body(...args);
    } catch (err) {
      const exit = err instanceof ConfigError ? { line: `invalid configuration: ${err.message}`, code: configExitCode }
        : err instanceof EmbeddedPostgresError ? { line: err.message, code: ExitCode.Failure }
        : err instanceof DatabaseUnavailableError ? { line: err.message, code: ExitCode.Unavailable }
        : err instanceof ListenError ? { line: err.message, code: ExitCode.Failure }
        : err instanceof CliError ? { line: err.message, code: err.exitCode }
        : undefined;
      if (!exit) throw err;
      process.stderr.write(`lote: ${exit.line}\n`);
      process.exit(exit.code);
    }
  };
}

/** Opens the configured database for a command that talks to it directly, and closes it after `work`. */
async function withDatabase(configPath: string | undefined, work: (db: Database) => Promise<void>): Promise<void> {
  const config = loadConfig({ configPath });
  const logger = createLogger({ level: "warn" });
  // A stop signal (a terminal's Ctrl-C) while the command runs, often while it starts the embedded PostgreSQL (initdb
  // takes seconds), is held until the database is closed, then ends the command as the signal would: ended at once
  // by Node's default, the command left the PostgreSQL it had started running with no owner.
  const held = holdStopSignals();
  try {
    const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, embeddedPort: config.embeddedPostgresPort, logger });
    try {
      if (!held.signal) await work(db);
    } finally {
      await db.close();
    }
  } finally {
    held.release();
  }
  // 128 + the signal's number, the shell's convention for a command a signal ended (130 for Ctrl-C).
  if (held.signal) process.exit(128 + osConstants.signals[held.signal]);
}

async function runRole(role: Role, opts: { config?: string }): Promise<void> {
  const config = loadConfig({ configPath: opts.config });
  const logger = createLogger({ level: config.logLevel });
  // A stop signal while the node starts (initdb, migrations, binding ports: a second or more) is held until it has
  // started, then stops it like any other. Left to Node's default, it ended the process at once: an embedded
  // PostgreSQL just started kept running with no owner (nothing stops one a later node finds running), and claims
  // the new dispatcher had made waited out their lease.
  const held = holdStopSignals((signal) => logger.info({ signal }, "stopping once started"));
  let node;
  try {
    node = await startLote(config, role, logger);
    // node.close drains the API and the workers together, within one shutdown_grace_ms.
    installShutdown({ close: () => node!.close() }, () => {}, { graceMs: config.shutdownGraceMs, logger });
  } finally {
    held.release();
  }
  if (held.signal) {
    process.kill(process.pid, held.signal);
    return;
  }
  // One machine-readable line on stdout so scripts and tests know where the API (and the metrics) are.
  process.stdout.write(`${JSON.stringify({ listening: node.api?.url ?? null, role, metrics: node.metrics?.url ?? null })}\n`);
}

/** The signals installShutdown stops a node on. */
const stopSignals = ["SIGTERM", "SIGINT", "SIGHUP"] as const;

/**
 * Holds the first stop signal from now until `release()`, instead of Node's default of ending the process at once;
 * `signal` says which one came. A second one exits at once (1), as while stopping (the exit hook stops postgres).
 */
function holdStopSignals(onFirst?: (signal: NodeJS.Signals) => void): { readonly signal: NodeJS.Signals | undefined; release(): void } {
  let first: NodeJS.Signals | undefined;
  const hold = (signal: NodeJS.Signals) => {
    if (first) process.exit(1);
    onFirst?.(signal);
    first = signal;
  };
  for (const signal of stopSignals) process.on(signal, hold);
  return {
    get signal() {
      return first;
    },
    release: () => {
      for (const signal of stopSignals) process.off(signal, hold);
    },
  };
}

export function registerServerCommands(program: Command): void {
  const roles: [Role, string][] = [
    ["serve", "run the API and a worker pool (the default single-node setup)"],
    ["api", "run only the gRPC/Connect API"],
    ["worker", "run only a worker pool"],
  ];
  for (const [role, description] of roles) {
    program.command(role).description(description)
      .option("-c, --config <file>", "YAML/JSON config file (env LOTE_CONFIG)")
      .action(serverAction((opts: { config?: string }) => runRole(role, opts)));
  }
  const keys = program.command("keys").description("manage API keys (talks to the database directly)");
  keys.command("create").description("create an API key for a tenant; prints the key once")
    .requiredOption("--tenant <id>", "tenant the key belongs to", tenantId)
    .option("--label <text>", "a note to recognise the key by", "")
    .option("-c, --config <file>", "config file")
    .action(serverAction((opts: { tenant: string; label: string; config?: string }) => withDatabase(opts.config, async (db) => {
      process.stdout.write(`${await createApiKey(db.pool, opts.tenant, opts.label)}\n`);
    })));
  keys.command("list").description("list API keys (never the keys themselves: an id, the first 12 hex digits of their SHA-256)")
    .option("--tenant <id>", "only this tenant's keys")
    .option("--json", "print a JSON array")
    .option("-c, --config <file>", "config file")
    .action(serverAction((opts: { tenant?: string; json?: boolean; config?: string }) => withDatabase(opts.config, async (db) => {
      const list = await listApiKeys(db.pool, opts.tenant);
      process.stdout.write(opts.json ? `${JSON.stringify(list)}\n` : formatKeys(list));
    })));
  keys.command("revoke").description("revoke a tenant's API keys: one (--id), those with a label (--label), or all (--all); every node stops accepting them at once")
    .requiredOption("--tenant <id>", "tenant the keys belong to")
    .option("--id <hex>", "the key's id from `lote keys list` (a prefix of it will do)")
    .option("--label <text>", "the keys with this label")
    .option("--all", "every key of the tenant")
    .option("-c, --config <file>", "config file")
    .action(serverAction((opts: { tenant: string; id?: string; label?: string; all?: boolean; config?: string }) => {
      if (!opts.all && opts.id === undefined && opts.label === undefined) {
        throw new CliError("expected --id, --label or --all: which of the tenant's keys to revoke", ExitCode.Usage);
      }
      if (opts.id !== undefined && !/^[0-9a-fA-F]{4,64}$/.test(opts.id)) {
        throw new CliError(`expected --id to be 4 to 64 hex digits (a key's id from \`lote keys list\`), got ${JSON.stringify(opts.id)}`, ExitCode.Usage);
      }
      return withDatabase(opts.config, async (db) => {
        const { revoked, ambiguous } = await revokeApiKeys(db.pool, { tenantId: opts.tenant, id: opts.id, label: opts.label });
        if (ambiguous) {
          throw new CliError(`--id ${opts.id} matches ${ambiguous.length} valid keys of tenant ${JSON.stringify(opts.tenant)} (${ambiguous.join(", ")}); ` +
            "none was revoked: give more of the id's digits", ExitCode.Failure);
        }
        if (revoked.length === 0) throw new CliError(`no valid key of tenant ${JSON.stringify(opts.tenant)} matched`, ExitCode.Failure);
        process.stdout.write(`revoked ${revoked.join(" ")}\n`);
      });
    }));
  program.command("workers").description("list the worker nodes alive and the models each one runs (talks to the database directly)")
    .option("--all", "also the dead ones of the last hour (crashed: their row was not removed)")
    .option("--json", "print a JSON array")
    .option("-c, --config <file>", "config file")
    .action(serverAction((opts: { all?: boolean; json?: boolean; config?: string }) => withDatabase(opts.config, async (db) => {
      const workers = await listWorkers(db.pool, { all: opts.all });
      process.stdout.write(opts.json ? `${JSON.stringify(workers)}\n` : formatWorkers(workers, opts.all ?? false));
    })));
  program.command("simulate").description("run the simulated OpenAI-compatible backend (tests, demos, benchmarks)")
    .allowUnknownOption(true).allowExcessArguments(true).helpOption(false)
    .action(serverAction(async (_opts: unknown, cmd: Command) => {
      const { runSimulatorCli, SimulatorCliError } = await import("../simulator/index.ts");
      try {
        await runSimulatorCli(cmd.args);
      } catch (err) {
        // A port in use or a mistyped flag: one line and 1 or 2, as for the other commands, not a stack trace.
        throw err instanceof SimulatorCliError ? new CliError(`simulate: ${err.message}`, err.exitCode) : err;
      }
    }));
}

/** One line per worker: id, state, start, lease end, and each model with the calls it can run of it. */
function formatWorkers(workers: readonly WorkerRecord[], all: boolean): string {
  if (workers.length === 0) return all ? "no worker nodes in the last hour\n" : "no worker nodes alive\n";
  const time = (d: Date) => d.toISOString().replace("T", " ").slice(0, 19);
  return `${formatColumns(["WORKER", "STATE", "STARTED (UTC)", "ALIVE UNTIL (UTC)", "MODELS (CALLS IT CAN RUN)"],
    workers.map((w) => [w.id, w.alive ? "alive" : "dead", time(w.startedAt), time(w.aliveUntil),
      w.models.map((m) => `${m.model} (${m.capacity})`).join(", ")]))}\n`;
}

/** One line per key: id, tenant, state, created, label. */
function formatKeys(keys: readonly ApiKeyRecord[]): string {
  if (keys.length === 0) return "no API keys\n";
  const time = (d: Date) => d.toISOString().replace("T", " ").slice(0, 19);
  return `${formatColumns(["ID", "TENANT", "STATE", "CREATED (UTC)", "LABEL"],
    keys.map((k) => [k.id, k.tenantId, k.revokedAt ? `revoked ${time(k.revokedAt)}` : "valid", time(k.createdAt), k.label]))}\n`;
}
