/**
 * Where the two cores went during a measured window: CPU seconds (user + system, from /proc/<pid>/stat) of
 * each party — lote, the simulator, the bare client or graphile-worker, and the Postgres processes serving the
 * benchmark's database (backends and autovacuum workers, recognised by the database name in their title).
 * Sampled every 250 ms so that processes which exit inside the window (pool connections closing) still count.
 */
import { readdirSync, readFileSync } from "node:fs";

/** Clock ticks per second of /proc/<pid>/stat times: 100 on every Linux that node supports. */
const TICKS = 100;

function cpuTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name, which is in parentheses and may contain spaces.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15 of the whole line)
  } catch {
    return undefined;
  }
}

/** Pids of postgres processes whose title names `database` (backends, autovacuum workers). */
function postgresPids(database: string): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, "utf8");
      if (cmd.startsWith("postgres:") && cmd.includes(` ${database} `)) out.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

export interface CpuMeter {
  /** Stops sampling; CPU seconds per party over the window. */
  stop(): Record<string, number>;
}

/** Starts a window. `parties`: name → pid; Postgres is found by `database`, the benchmark database's name. */
export function startCpuMeter(parties: Record<string, number | undefined>, database: string): CpuMeter {
  const first = new Map<string, number>();
  const last = new Map<string, number>();
  const sample = (initial: boolean) => {
    const seen: [string, number][] = [];
    for (const [name, pid] of Object.entries(parties)) if (pid !== undefined) seen.push([`${name}:${pid}`, pid]);
    for (const pid of postgresPids(database)) seen.push([`postgres:${pid}`, pid]);
    for (const [key, pid] of seen) {
      const t = cpuTicks(pid);
      if (t === undefined) continue;
      // A process first seen after the start began inside the window: all of its time counts.
      if (!first.has(key)) first.set(key, initial ? t : 0);
      last.set(key, t);
    }
  };
  sample(true);
  const timer = setInterval(() => sample(false), 250);
  return {
    stop() {
      clearInterval(timer);
      sample(false);
      const out: Record<string, number> = {};
      for (const [key, t] of last) {
        const name = key.slice(0, key.indexOf(":"));
        out[name] = (out[name] ?? 0) + (t - first.get(key)!) / TICKS;
      }
      return out;
    },
  };
}
