import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { stringify } from "yaml";
import { afterAll, beforeAll } from "vitest";
import { createTestDatabase, type TestDatabase } from "./database.ts";
import { freePort } from "./ports.ts";
import { proxyTo, type TcpProxy } from "./tcp-proxy.ts";

export interface LoteProcess {
  readonly child: ChildProcess;
  /** "http://127.0.0.1:PORT" when the role serves the API. */
  readonly url: string;
  readonly port: number;
  /** Everything the process wrote to stderr (its pino logs). */
  logs(): string;
  /** Resolves with the exit code (or signal name) when the process ends. */
  readonly exited: Promise<number | string>;
  /** SIGTERM and wait for exit. */
  stop(): Promise<number | string>;
}

const root = new URL("../../", import.meta.url).pathname;

/** Writes a config object to a temp YAML file and returns its path. */
export function writeConfig(config: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), "lote-cfg-"));
  const path = join(dir, "lote.yaml");
  writeFileSync(path, stringify(config));
  return path;
}

/**
 * Starts `lote <role>` as a child process (the real CLI, real sockets) and resolves once it printed its
 * {"listening": ...} line.
 */
export async function startLoteProcess(options: {
  databaseUrl: string;
  role?: "serve" | "api" | "worker";
  config?: Record<string, unknown>;
  env?: Record<string, string>;
}): Promise<LoteProcess> {
  const port = await freePort();
  const args = ["--import", "tsx", join(root, "src/cli/main.ts"), options.role ?? "serve"];
  if (options.config) args.push("--config", writeConfig(options.config));
  const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: options.databaseUrl, LOTE_PORT: String(port), LOTE_LOG_LEVEL: "info", ...options.env };
  // An empty databaseUrl means "no DATABASE_URL": lote then starts its embedded PostgreSQL.
  if (!options.databaseUrl) delete env.DATABASE_URL;
  const child = spawn(process.execPath, args, {
    cwd: root,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | string>((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? -1)));
  const lines = createInterface({ input: child.stdout! });
  const ready = new Promise<void>((resolve, reject) => {
    lines.on("line", (line) => {
      if (line.startsWith("{") && line.includes('"listening"')) resolve();
    });
    exited.then((code) => reject(new Error(`lote exited (${code}) before it was ready:\n${stderr.slice(-4000)}`)));
  });
  await ready;
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    port,
    logs: () => stderr,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

/**
 * A fresh database and a `lote serve` (or `role`) on it for the file's tests: registers beforeAll/afterAll and
 * returns a handle whose fields are set once beforeAll has run. `behindProxy`: lote reaches the database through a
 * TcpProxy (`proxy`) the tests can cut or freeze.
 */
export function useLoteServer(options: { role?: "serve" | "api"; config?: Record<string, unknown>; behindProxy?: boolean } = {}): {
  db: TestDatabase; lote: LoteProcess; proxy: TcpProxy | undefined;
} {
  const { behindProxy, ...start } = options;
  const handle = {} as { db: TestDatabase; lote: LoteProcess; proxy: TcpProxy | undefined };
  beforeAll(async () => {
    handle.db = await createTestDatabase();
    let databaseUrl = handle.db.url;
    if (behindProxy) ({ proxy: handle.proxy, url: databaseUrl } = await proxyTo(databaseUrl));
    handle.lote = await startLoteProcess({ databaseUrl, ...start });
  });
  afterAll(async () => {
    await handle.lote?.stop();
    await handle.proxy?.cut();
    await handle.db?.drop();
  });
  return handle;
}
