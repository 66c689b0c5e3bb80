/**
 * The real lote server as a child process (`src/cli/main.ts <role>`), plus its memory figures from /proc. The
 * child is node itself (not npm or a shell), so its pid is the process whose memory we read.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { stringify } from "yaml";
import { freePort } from "./bench-postgres.ts";

export interface LoteServer {
  readonly child: ChildProcess;
  /** "http://127.0.0.1:PORT". */
  readonly url: string;
  /** Peak resident set size since start or the last resetPeakRss(), bytes (VmHWM). */
  peakRss(): number;
  /** Starts a new peak-RSS window (writes 5 to /proc/<pid>/clear_refs; Linux ≥ 4.0). False if refused. */
  resetPeakRss(): boolean;
  stop(): Promise<void>;
}

const root = new URL("../../", import.meta.url).pathname;
/** The node flags lote's server roles run with (`npm start`, bin/lote.js), read from package.json's start script. */
const serverNodeFlags = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")).scripts.start as string)
  .split(" ").filter((arg) => arg.startsWith("--max-"));

export async function startLoteServer(options: { databaseUrl: string; role: "api" | "serve" | "worker"; config: Record<string, unknown>; cpuProfDir?: string }): Promise<LoteServer> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "lote-bench-cfg-"));
  const configPath = join(dir, "lote.yaml");
  writeFileSync(configPath, stringify(options.config));
  const nodeArgs = [...serverNodeFlags, ...(options.cpuProfDir ? ["--cpu-prof", "--cpu-prof-dir", options.cpuProfDir] : [])];
  const child = spawn(process.execPath, [...nodeArgs, "--import", "tsx", join(root, "src/cli/main.ts"), options.role, "--config", configPath], {
    cwd: root,
    // warn: one info line per RPC is noise here, and the figures must not include log formatting.
    env: { ...process.env, DATABASE_URL: options.databaseUrl, LOTE_PORT: String(port), LOTE_LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-8000)));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (line.startsWith("{") && line.includes('"listening"')) resolve();
    });
    exited.then(() => reject(new Error(`lote exited before it was ready:\n${stderr}`)));
  });
  const status = () => readFileSync(`/proc/${child.pid}/status`, "utf8");
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    peakRss: () => Number(/^VmHWM:\s+(\d+) kB/m.exec(status())?.[1] ?? NaN) * 1024,
    resetPeakRss() {
      try {
        writeFileSync(`/proc/${child.pid}/clear_refs`, "5");
        return true;
      } catch {
        return false;
      }
    },
    async stop() {
      // SIGTERM: a graceful stop, which also lets --cpu-prof write its profile.
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}
