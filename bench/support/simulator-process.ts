/** The parent's handle on simulator-child.ts: its URLs, a window of call timestamps, and arrival probes. */
import { startNodeChild } from "./node-child.ts";

export interface SimulatorWindow {
  /** Inference calls received since the last mark(). */
  readonly calls: number;
  /** monoMs() of the first and last call of the window. */
  readonly firstAt: number;
  readonly lastAt: number;
  /** Mean calls in flight found by each arriving call: the concurrency the backend really saw. */
  readonly meanInFlight: number;
  /** Mean time from a call's arrival to its answer's end (HTTP/2 stream closed, HTTP/1.1 response finished), ms. */
  readonly meanHoldMs: number;
  /** Most calls in flight at once (exact), TCP connections accepted, answers by status. */
  readonly maxInFlight: number;
  readonly connections: number;
  readonly byStatus: Record<string, number>;
}

export interface SimulatorProcess {
  /** h2c://127.0.0.1:PORT */
  readonly url: string;
  /** http://127.0.0.1:PORT: the same port over HTTP/1.1, which most self-hosted model servers speak. */
  readonly http1Url: string;
  readonly pid: number;
  /** Starts a new window: counters and timestamps from zero. */
  mark(): Promise<void>;
  report(): Promise<SimulatorWindow>;
  /**
   * Switches per-call messages on and resolves once the child has done so, with a promise of the wall-clock
   * monoMs() of the next call to arrive (messages go off again after it). Wrapped: a promise of a promise would
   * flatten, and awaiting the arming would wait for the call.
   */
  armArrival(): Promise<{ readonly arrival: Promise<number> }>;
  stop(): Promise<void>;
}

export async function startSimulatorProcess(latencyMs: number): Promise<SimulatorProcess> {
  const p = startNodeChild("./simulator-child.ts", [String(latencyMs)], { ipc: true });
  const { h2c, http1 } = await p.nextJson<{ h2c: string; http1: string }>();
  const child = p.child;
  /** Resolves with the next IPC message that has `key`. */
  const next = <T>(key: string) => new Promise<T>((resolve) => {
    const on = (m: Record<string, unknown>) => {
      if (!(key in m)) return;
      child.off("message", on);
      resolve(m[key] as T);
    };
    child.on("message", on);
  });
  const send = (cmd: string) => new Promise<void>((resolve, reject) => child.send({ cmd }, (err) => (err ? reject(err) : resolve())));
  return {
    url: h2c,
    http1Url: http1,
    pid: child.pid!,
    async mark() {
      // A report round trip after the mark: the window is reset before this resolves.
      await send("mark");
      const r = next("report");
      await send("report");
      await r;
    },
    async report() {
      const r = next<SimulatorWindow>("report");
      await send("report");
      return r;
    },
    async armArrival() {
      const arrival = next<number>("arrival");
      const ack = next("ack");
      await send("announce");
      await ack;
      return {
        arrival: arrival.then(async (at) => {
          const quiet = next("ack");
          await send("quiet");
          await quiet;
          return at;
        }),
      };
    },
    stop: () => p.stop(),
  };
}
