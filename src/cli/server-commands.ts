import type { Command } from "commander";
import { installShutdown } from "../api/shutdown.ts";
import { ConfigError, loadConfig } from "../config/config.ts";
import { createLogger } from "../log/logger.ts";
import { startLote, type Role } from "../runtime/start-lote.ts";
import { createApiKey, DatabaseUnavailableError, EmbeddedPostgresError, listWorkers, openDatabase, type WorkerRecord } from "../store/index.ts";
import { ExitCode } from "./exit-codes.ts";
import { formatColumns } from "./format-batch.ts";

/** EX_CONFIG (sysexits.h): the configuration is invalid. */
const configExitCode = 78;

/**
 * Wraps a server command's body for commander's .action(): an invalid configuration (from the file, the
 * environment, or found at start such as an unreadable ca_file), an embedded PostgreSQL that cannot start, or a
 * PostgreSQL that cannot be reached is one `lote: ...` line and its exit code, not a stack trace.
 */
function serverAction<A extends unknown[]>(body: (...args: A) => Promise<void>) {
  return async (...args: A): Promise<void> => {
    try {
      await body(...args);
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`lote: invalid configuration: ${err.message}\n`);
        process.exit(configExitCode);
      }
      if (err instanceof EmbeddedPostgresError) {
        process.stderr.write(`lote: ${err.message}\n`);
        process.exit(ExitCode.Failure);
      }
      if (err instanceof DatabaseUnavailableError) {
        process.stderr.write(`lote: ${err.message}\n`);
        process.exit(ExitCode.Unavailable);
      }
      throw err;
    }
  };
}

async function runRole(role: Role, opts: { config?: string }): Promise<void> {
  const config = loadConfig({ configPath: opts.config });
  const logger = createLogger({ level: config.logLevel });
  const node = await startLote(config, role, logger);
  // node.close drains the API and the workers together, within one shutdown_grace_ms.
  installShutdown({ close: () => node.close() }, () => {}, { graceMs: config.shutdownGraceMs, logger });
  // One machine-readable line on stdout so scripts and tests know where the API (and the metrics) are.
  process.stdout.write(`${JSON.stringify({ listening: node.api?.url ?? null, role, metrics: node.metrics?.url ?? null })}\n`);
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
    .requiredOption("--tenant <id>", "tenant the key belongs to")
    .option("--label <text>", "a note to recognise the key by", "")
    .option("-c, --config <file>", "config file")
    .action(serverAction(async (opts: { tenant: string; label: string; config?: string }) => {
      const config = loadConfig({ configPath: opts.config });
      const logger = createLogger({ level: "warn" });
      const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, embeddedPort: config.embeddedPostgresPort, logger });
      try {
        process.stdout.write(`${await createApiKey(db.pool, opts.tenant, opts.label)}\n`);
      } finally {
        await db.close();
      }
    }));
  program.command("workers").description("list the worker nodes alive and the models each one runs (talks to the database directly)")
    .option("--all", "also the dead ones of the last hour (crashed: their row was not removed)")
    .option("--json", "print a JSON array")
    .option("-c, --config <file>", "config file")
    .action(serverAction(async (opts: { all?: boolean; json?: boolean; config?: string }) => {
      const config = loadConfig({ configPath: opts.config });
      const logger = createLogger({ level: "warn" });
      const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, embeddedPort: config.embeddedPostgresPort, logger });
      try {
        const workers = await listWorkers(db.pool, { all: opts.all });
        process.stdout.write(opts.json ? `${JSON.stringify(workers)}\n` : formatWorkers(workers, opts.all ?? false));
      } finally {
        await db.close();
      }
    }));
  program.command("simulate").description("run the simulated OpenAI-compatible backend (tests, demos, benchmarks)")
    .allowUnknownOption(true).allowExcessArguments(true).helpOption(false)
    .action(async (_opts, cmd: Command) => {
      const { runSimulatorCli } = await import("../simulator/index.ts");
      await runSimulatorCli(cmd.args);
    });
}

/** One line per worker: id, state, start, lease end, and each model with the calls it can run of it. */
function formatWorkers(workers: readonly WorkerRecord[], all: boolean): string {
  if (workers.length === 0) return all ? "no worker nodes in the last hour\n" : "no worker nodes alive\n";
  const time = (d: Date) => d.toISOString().replace("T", " ").slice(0, 19);
  return `${formatColumns(["WORKER", "STATE", "STARTED (UTC)", "ALIVE UNTIL (UTC)", "MODELS (CALLS IT CAN RUN)"],
    workers.map((w) => [w.id, w.alive ? "alive" : "dead", time(w.startedAt), time(w.aliveUntil),
      w.models.map((m) => `${m.model} (${m.capacity})`).join(", ")]))}\n`;
}
