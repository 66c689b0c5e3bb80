/**
 * A TypeScript entry run as its own node process (node --import tsx), talking JSON lines on stdout and, when
 * asked, JSON messages over an IPC channel. Every party of the dispatch benchmark (simulator, bare client,
 * graphile-worker, lote) is a separate process like this, so each gets the scheduler's share of the two cores on
 * the same terms.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";

export interface NodeChild {
  readonly child: ChildProcess;
  /** The next stdout line that parses as a JSON object. Rejects if the process exits first. */
  nextJson<T = Record<string, unknown>>(): Promise<T>;
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>;
  /** SIGTERM (or closes the IPC channel, which the IPC children take as "stop"), then waits for the exit. */
  stop(): Promise<void>;
}

const root = new URL("../../", import.meta.url).pathname;

export function startNodeChild(script: string, args: readonly string[], options: { ipc?: boolean; env?: Record<string, string>; nodeArgs?: readonly string[] } = {}): NodeChild {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), "--import", "tsx", new URL(script, import.meta.url).pathname, ...args], {
    cwd: root,
    env: { ...process.env, ...options.env },
    stdio: options.ipc ? ["ignore", "pipe", "pipe", "ipc"] : ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-8000)));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const queued: Record<string, unknown>[] = [];
  const waiting: { resolve: (v: never) => void; reject: (e: Error) => void }[] = [];
  createInterface({ input: child.stdout! }).on("line", (line) => {
    if (!line.startsWith("{")) return;
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(line);
    } catch {
      return;
    }
    const w = waiting.shift();
    if (w) w.resolve(value as never);
    else queued.push(value);
  });
  void exited.then(() => {
    const err = new Error(`${script} exited (code ${child.exitCode}, signal ${child.signalCode}):\n${stderr}`);
    for (const w of waiting.splice(0)) w.reject(err);
  });
  return {
    child,
    exited,
    nextJson<T>() {
      const v = queued.shift();
      if (v) return Promise.resolve(v as T);
      if (child.exitCode !== null || child.signalCode !== null) return Promise.reject(new Error(`${script} has exited:\n${stderr}`));
      return new Promise<T>((resolve, reject) => waiting.push({ resolve: resolve as (v: never) => void, reject }));
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        if (child.connected) child.disconnect();
        else child.kill("SIGTERM");
      }
      await exited;
    },
  };
}
