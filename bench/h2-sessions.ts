/**
 * `npm run bench:h2-sessions`: what spreading HTTP/2 calls over sessions is worth, to choose the OpenAI backend's
 * `streamsPerSession` default. 256 calls in flight, 50 ms each, from the bare client (lote's own HTTP/2 backend and
 * nothing else) to the simulator over h2c, against the 256 / 50 ms = 5,120/s they allow: one session (the server
 * allows every stream on it) beside sessions of 16 and of 32 streams. Rounds interleave the three, so a slow phase
 * of the machine falls on all of them.
 *
 * Flags: --rounds=N (default 3), --count=N calls per run (default 25,000).
 */
import { bareClientRun } from "./support/dispatch-runs.ts";
import { startSimulatorProcess } from "./support/simulator-process.ts";

const flag = (name: string, dflt: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split("=")[1] ?? dflt);
const rounds = flag("rounds", 3);
const count = flag("count", 25_000);
const concurrency = 256;
const latencyMs = 50;
const ideal = concurrency / (latencyMs / 1000);
// 2^31 - 1 streams: the sessions never fill before the server's own limit, so every call rides the first one.
const variants = [["one session", 2 ** 31 - 1], ["16 streams", 16], ["32 streams", 32]] as const;

const sim = await startSimulatorProcess(latencyMs);
try {
  // Warm-up: JIT, and the simulator's first connections.
  await bareClientRun(sim, concurrency, 5_000, "chat", sim.url, 16);
  const shares = new Map<string, number[]>(variants.map(([name]) => [name, []]));
  for (let round = 1; round <= rounds; round++) {
    const parts: string[] = [];
    for (const [name, streams] of variants) {
      const f = await bareClientRun(sim, concurrency, count, "chat", sim.url, streams);
      shares.get(name)!.push(f.rate / ideal);
      parts.push(`${name} ${(f.rate / ideal).toFixed(3)} (${f.connections} connections)`);
    }
    console.log(`round ${round}: ${parts.join(", ")}`);
  }
  for (const [name, xs] of shares) {
    console.log(`${name}: ${Math.min(...xs).toFixed(3)}-${Math.max(...xs).toFixed(3)} of ${ideal.toLocaleString("en")}/s`);
  }
} finally {
  await sim.stop();
}
