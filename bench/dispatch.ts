/**
 * `npm run bench`: how fast lote dispatches, against the simulated backend, in one run.
 *
 *   (a) items/s through lote at zero backend latency, beside the wire limit: the same simulator driven by a bare
 *       client (lote's own HTTP/2 backend code, nothing else) at the same concurrency. Then the same two over
 *       HTTP/1.1 (one socket per call), the protocol most self-hosted model servers speak.
 *   (e) the same calls as graphile-worker 0.18 jobs (batched settings), same concurrency, same Postgres.
 *   (b) items/s at 50 ms backend latency with max_concurrency 256, against the ideal 256 / 50 ms = 5,120/s, over
 *       h2c and over HTTP/1.1.
 *   (c) submit -> first backend call latency over single-request CreateBatch calls, timed at the simulator.
 *   (d) peak RSS of the lote process (VmHWM) over a 1,000,000-request batch, and how long it takes.
 * First, a calibration line: a write(2)'s cost, a serial HTTP/2 call's round trip, and a gRPC unary round trip in
 * one process back to back and 20 ms apart (support/grpc-round-trip.ts), to compare machines by.
 *
 * Every party is its own process (lote, simulator, bare client, graphile-worker) on the same machine as
 * Postgres. Flags: --quick (smaller sizes, ~1 min), --only=a,b,c,d (those parts), --parties=bare,lote,graphile (in (a)). Environment: LOTE_BENCH_DATABASE_URL (see
 * support/bench-postgres.ts), LOTE_BENCH_CONCURRENCY (default 128), LOTE_BENCH_ROUNDS (interleaved rounds of
 * (a)/(e), default 3; medians are reported), LOTE_BENCH_CPU_PROF (a directory: lote runs under --cpu-prof),
 * LOTE_BENCH_WORKER_NODE_OPTIONS (NODE_OPTIONS for the (d) worker only; the flags of package.json's start script,
 * which every lote process here runs with, win over it).
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import pg from "pg";
import { benchBodies } from "./support/bench-bodies.ts";
import { openBenchDatabase } from "./support/bench-postgres.ts";
import { bareClientRun, graphileRun, loteRun, type RunFigures } from "./support/dispatch-runs.ts";
import { batchClient, encodedBatch } from "./support/lote-batches.ts";
import { mib, startLoteServer } from "./support/lote-server.ts";
import { startSimulatorProcess } from "./support/simulator-process.ts";
import { grpcRoundTrip } from "./support/grpc-round-trip.ts";
import { submitLatency } from "./support/submit-latency.ts";

const quick = process.argv.includes("--quick");
// --only=a,c: run just those parts ((e) belongs to (a)); for iterating on one figure.
const only = process.argv.find((a) => a.startsWith("--only="))?.slice("--only=".length).split(",");
const want = (part: "a" | "b" | "c" | "d") => !only || only.includes(part);
// --parties=lote,bare: which parties (a) runs (default all three); medians of a missing party print as NaN.
const parties = process.argv.find((a) => a.startsWith("--parties="))?.slice("--parties=".length).split(",") ?? ["bare", "lote", "graphile"];
const size = quick ? { a: 20_000, b: 20_000, c: 50, d: 100_000 } : { a: 50_000, b: 50_000, c: 200, d: 1_000_000 };
const concurrency = Number(process.env.LOTE_BENCH_CONCURRENCY ?? 128);
const rounds = Number(process.env.LOTE_BENCH_ROUNDS ?? 3);
/** µs per 16-byte write(2) to /dev/null, over 100,000 of them: what one kernel crossing costs here. */
const writeSyscallUs = () => {
  const fd = openSync("/dev/null", "w");
  const bytes = Buffer.alloc(16);
  const started = process.hrtime.bigint();
  for (let i = 0; i < 100_000; i++) writeSync(fd, bytes);
  const us = Number(process.hrtime.bigint() - started) / 1e3 / 100_000;
  closeSync(fd);
  return us;
};
const load = () => loadavg().map((l) => l.toFixed(2)).join(" ");
const int = (n: number) => Math.round(n).toLocaleString("en");
const ratio = (a: number, b: number) => (a / b).toFixed(2);
const median = (xs: readonly number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
/**
 * What (a) >= 0.75 asks of the machine, from the median lote round: its CPU per item (lote, Postgres and the
 * simulator) at 0.75 of the bare client's rate, in cores, beside the cores there are; and the most that lote and
 * Postgres together may spend per item for the 0.75 to fit on them, with the simulator's share as measured.
 */
function cpuBudget(loteRuns: readonly RunFigures[], bareRate: number) {
  const sorted = [...loteRuns].sort((x, y) => x.rate - y.rate);
  const f = sorted[Math.floor((sorted.length - 1) / 2)]!;
  const target = 0.75 * bareRate;
  const perItem = Object.values(f.cpuPerItemUs).reduce((x, y) => x + y, 0);
  const simulatorUs = f.cpuPerItemUs.simulator ?? 0;
  return {
    target,
    parts: Object.entries(f.cpuPerItemUs).map(([k, v]) => `${k} ${Math.round(v)}`).join(" + ") + ` = ${Math.round(perItem)} µs`,
    coresNeeded: (target * perItem) / 1e6,
    coresUsed: Object.values(f.cores).reduce((x, y) => x + y, 0),
    loteAndPostgresUs: (cpus().length * 1e6) / target - simulatorUs,
    spentUs: perItem - simulatorUs,
  };
}

// Cores each party used, and what that is per item (µs of CPU): where the time goes.
const cores = (f: RunFigures) => Object.entries(f.cores).map(([k, v]) => `${k} ${v.toFixed(2)} (${Math.round(f.cpuPerItemUs[k]!)} µs)`).join(", ");
const line = (name: string, f: RunFigures, extra = "") =>
  console.log(`  ${name.padEnd(16)} ${int(f.rate).padStart(7)} items/s   at the backend ${int(f.simRate).padStart(7)} calls/s, ` +
    `${f.simMeanInFlight.toFixed(0).padStart(3)} in flight\n${" ".repeat(20)}cores (CPU per item): ${cores(f)}${extra}`);

console.log(`lote dispatch benchmark${quick ? " (--quick)" : ""}, ${new Date().toISOString()}`);
console.log(`machine: ${cpus().length} × ${cpus()[0]?.model.trim()}, ${mib(totalmem())} RAM; node ${process.version}; load average ${load()}`);

const db = await openBenchDatabase();
console.log(`postgres: ${db.version.split(" on ")[0]} (${db.source}), fresh database ${new URL(db.url).pathname.slice(1)}`);
const fast = await startSimulatorProcess(0);
const slow = await startSimulatorProcess(50);
const server = await startLoteServer({
  databaseUrl: db.url, role: "serve", cpuProfDir: process.env.LOTE_BENCH_CPU_PROF,
  config: {
    models: [
      { name: "bench-chat", backend: { kind: "openai", urls: [fast.url] }, max_concurrency: concurrency, timeout_ms: 120_000 },
      { name: "bench-slow", backend: { kind: "openai", urls: [slow.url] }, max_concurrency: 256, timeout_ms: 120_000 },
      // The same two simulators over HTTP/1.1 (same port).
      { name: "bench-chat-h1", backend: { kind: "openai", urls: [fast.http1Url] }, max_concurrency: concurrency, timeout_ms: 120_000 },
      { name: "bench-slow-h1", backend: { kind: "openai", urls: [slow.http1Url] }, max_concurrency: 256, timeout_ms: 120_000 },
    ],
  },
});
// Stopped by a signal, take the lote processes along: unlike the simulators (IPC), they would not notice.
const loteProcesses = [server];
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    for (const p of loteProcesses) p.child.kill("SIGTERM");
    void db.close().finally(() => process.exit(130));
  });
}
// How expensive this machine's kernel path is, so that runs on different machines can be read side by side: the
// (a) ratio moved from 0.61 on one 2-core VM to 0.81-0.87 on one 2.5-4 times slower (BENCHMARKS.md, fifth session).
const calibration = {
  writeUs: writeSyscallUs(), serialCallMs: 1000 / (await bareClientRun(fast, 1, 1_000, "chat")).rate, grpc: await grpcRoundTrip(),
};
console.log(`calibration: a 16-byte write(2) ${calibration.writeUs.toFixed(2)} µs; one call at a time, bare client to simulator, ` +
  `${calibration.serialCallMs.toFixed(3)} ms per call;\n  a gRPC unary round trip in one process, p50: ${calibration.grpc.backToBackMs.toFixed(2)} ms ` +
  `back to back, ${calibration.grpc.idleMs.toFixed(2)} ms 20 ms apart (after 20 ms idle, as (c)'s submits come)`);
const pool = new pg.Pool({ connectionString: db.url, max: 2 });
const client = batchClient(server.url);
const lote = { client, pool, lotePid: server.child.pid!, database: new URL(db.url).pathname.slice(1) };
const results: Record<string, unknown> = { date: new Date().toISOString(), quick, concurrency, rounds, postgres: db.version.split(" on ")[0], calibration };
try {
  if (want("a")) {
    // (a) and (e), interleaved round by round so that drift (other load on the machine) spreads over all three.
    console.log(`\n(a)/(e) ${int(size.a)} chat requests at zero latency, concurrency ${concurrency}, ${rounds} round(s):`);
    const a = encodedBatch(benchBodies(size.a, "bench-chat", "chat"));
    const runs = { bare: [] as RunFigures[], lote: [] as RunFigures[], graphile: [] as RunFigures[] };
    const toCompleted: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const order = (["bare", "lote", "graphile"] as const).map((_, i, xs) => xs[(i + r) % xs.length]!);
      for (const who of order.filter((p) => parties.includes(p))) {
        if (who === "bare") runs.bare.push(await bareClientRun(fast, concurrency, size.a, "chat"));
        if (who === "graphile") runs.graphile.push(await graphileRun(db.url, fast, concurrency, size.a, "chat"));
        if (who === "lote") {
          const f = await loteRun({ ...lote, sim: fast }, a.request, size.a, 600_000);
          runs.lote.push(f);
          toCompleted.push(f.run.completedAt - f.run.submittedAt);
        }
        line(who, runs[who].at(-1)!);
      }
    }
    const [bare, lo, gw] = [median(runs.bare.map((f) => f.rate)), median(runs.lote.map((f) => f.rate)), median(runs.graphile.map((f) => f.rate))];
    console.log(`  medians: bare client ${int(bare)}/s, lote ${int(lo)}/s, graphile-worker ${int(gw)}/s; ` +
      `lote submit -> COMPLETED ${median(toCompleted).toFixed(0)} ms for ${int(size.a)}`);
    console.log(`  (a) over h2c: lote / wire limit = ${ratio(lo, bare)}   (target >= 0.75, goal 0.9)`);
    console.log(`  (e) graphile-worker / wire limit = ${ratio(gw, bare)}, lote / graphile-worker = ${ratio(lo, gw)}`);
    const budget = runs.lote.length > 0 && runs.bare.length > 0 ? cpuBudget(runs.lote, bare) : undefined;
    if (budget) {
      console.log(`  at 0.75 of the bare client (${int(budget.target)}/s), the median lote round's CPU per item (${budget.parts}) ` +
        `needs ${budget.coresNeeded.toFixed(2)} cores; the machine has ${cpus().length}, and that round used ${budget.coresUsed.toFixed(2)}. ` +
        `On ${cpus().length} cores lote and Postgres together may spend ${Math.round(budget.loteAndPostgresUs)} µs per item at most; they spent ${Math.round(budget.spentUs)}`);
    }
    Object.assign(results, { a: { bare, lote: lo, graphile: gw, ratio: Number(ratio(lo, bare)), submitToCompletedMs: median(toCompleted) },
      e: { ratioToBare: Number(ratio(gw, bare)), loteOverGraphile: Number(ratio(lo, gw)) },
      ...(budget ? { budgetAt075: { coresNeeded: budget.coresNeeded, coresUsed: budget.coresUsed, loteAndPostgresUsAllowed: budget.loteAndPostgresUs, loteAndPostgresUsSpent: budget.spentUs } } : {}) });

    // (a) over HTTP/1.1: the same calls, one socket per call (128 of them), bare client and lote taking turns.
    console.log(`  over HTTP/1.1, ${rounds} round(s):`);
    const a1 = encodedBatch(benchBodies(size.a, "bench-chat-h1", "chat"));
    const runs1 = { bare: [] as RunFigures[], lote: [] as RunFigures[] };
    for (let r = 0; r < rounds; r++) {
      for (const who of (r % 2 ? ["lote", "bare"] as const : ["bare", "lote"] as const).filter((p) => parties.includes(p))) {
        runs1[who].push(who === "bare"
          ? await bareClientRun(fast, concurrency, size.a, "chat", fast.http1Url)
          : await loteRun({ ...lote, sim: fast }, a1.request, size.a, 600_000));
        line(`${who} (1.1)`, runs1[who].at(-1)!);
      }
    }
    const [bare1, lo1] = [median(runs1.bare.map((f) => f.rate)), median(runs1.lote.map((f) => f.rate))];
    console.log(`  (a) over HTTP/1.1: lote ${int(lo1)}/s / bare client ${int(bare1)}/s = ${ratio(lo1, bare1)}`);
    (results.a as Record<string, unknown>).http1 = { bare: bare1, lote: lo1, ratio: Number(ratio(lo1, bare1)) };

  }

  if (want("b")) {
    // (b) 50 ms per call, 256 at a time: 5,120 calls/s at most.
    // The bare client at the same 256 shows what the simulator and HTTP/2 alone leave of the 5,120.
    console.log(`\n(b) ${int(size.b)} chat requests at 50 ms latency, max_concurrency 256:`);
    const bBare = await bareClientRun(slow, 256, size.b, "chat");
    line("bare", bBare);
    const b = await loteRun({ ...lote, sim: slow }, encodedBatch(benchBodies(size.b, "bench-slow", "chat")).request, size.b, 600_000);
    line("lote", b);
    console.log(`  (b) over h2c: achieved / 5,120 per s = ${ratio(b.rate, 5_120)}   (target >= 0.9); bare client ${ratio(bBare.rate, 5_120)}, lote / bare ${ratio(b.rate, bBare.rate)}`);
    // Where the 5,120 goes: a slot's cycle is 256 / rate; the simulator holds each call for its latency plus its
    // own delay (timers fire late on a busy loop); the rest of the cycle is the caller's side and the wire.
    const cycle = (f: RunFigures) => `${((256 / f.rate) * 1000).toFixed(1)} ms (${f.simMeanHoldMs.toFixed(1)} at the simulator)`;
    const hold = (bBare.simMeanHoldMs + b.simMeanHoldMs) / 2;
    console.log(`  a slot's cycle: bare ${cycle(bBare)}, lote ${cycle(b)}; with the simulator's own ${hold.toFixed(1)} ms per call, ` +
      `256 slots carry at most ${int((256 / hold) * 1000)}/s = ${ratio(256_000 / hold, 5_120)} of 5,120`);
    // What 0.9 of 5,120 would cost in CPU at this run's CPU per item, beside the cores there are: on a machine where
    // the parties need more than it has, (b)'s target is out of reach for any queue (fifth session, BENCHMARKS.md).
    const coresAt90 = (f: RunFigures) => (0.9 * 5_120 * Object.values(f.cpuPerItemUs).reduce((x, y) => x + y, 0)) / 1e6;
    const coresNeeded = { lote: coresAt90(b), bare: coresAt90(bBare) };
    const bareThread = 1e6 / (bBare.cpuPerItemUs["bare client"] ?? NaN);
    console.log(`  at 0.9 of 5,120 (4,608 calls/s), this run's CPU per item needs ${coresNeeded.lote.toFixed(2)} cores for lote, Postgres and the ` +
      `simulator, ${coresNeeded.bare.toFixed(2)} for the bare client and the simulator; the machine has ${cpus().length}. ` +
      `The bare client's one thread tops out at ${int(bareThread)} calls/s = ${ratio(bareThread, 5_120)} of 5,120`);
    // The same over HTTP/1.1, 256 sockets: a Node HTTP/2 session turns its answers around slower than 256 sockets do
    // (BENCHMARKS.md, seventh session).
    const bBare1 = await bareClientRun(slow, 256, size.b, "chat", slow.http1Url);
    line("bare (1.1)", bBare1);
    const b1 = await loteRun({ ...lote, sim: slow }, encodedBatch(benchBodies(size.b, "bench-slow-h1", "chat")).request, size.b, 600_000);
    line("lote (1.1)", b1);
    console.log(`  (b) over HTTP/1.1: achieved / 5,120 per s = ${ratio(b1.rate, 5_120)}   (target >= 0.9); bare client ${ratio(bBare1.rate, 5_120)}, ` +
      `lote / bare ${ratio(b1.rate, bBare1.rate)}; a slot's cycle: bare ${cycle(bBare1)}, lote ${cycle(b1)}`);
    results.b = { rate: b.rate, ratio: Number(ratio(b.rate, 5_120)), bare: bBare.rate, bareRatio: Number(ratio(bBare.rate, 5_120)),
      coresAt90: coresNeeded,
      simMeanHoldMs: { bare: bBare.simMeanHoldMs, lote: b.simMeanHoldMs },
      http1: { rate: b1.rate, ratio: Number(ratio(b1.rate, 5_120)), bare: bBare1.rate, bareRatio: Number(ratio(bBare1.rate, 5_120)),
        simMeanHoldMs: { bare: bBare1.simMeanHoldMs, lote: b1.simMeanHoldMs } } };

  }

  if (want("c")) {
    // (c) an idle node: each single-request batch is called at once.
    const c = await submitLatency(client, fast, db.url, "bench-chat", size.c);
    console.log(`\n(c) submit -> first backend call over ${size.c} single-request CreateBatch calls: p50 ${c.p50.toFixed(2)} ms, ` +
      `p99 ${c.p99.toFixed(2)} ms, max ${c.max.toFixed(2)} ms   (goal p50 <= 5 ms)`);
    console.log(`  of which CreateBatch until its answer ${c.acceptedP50.toFixed(2)} ms (p50); NOTIFY -> call (LISTEN wake-up, claim, HTTP/2) ` +
      `p50 ${c.notifyToCallP50.toFixed(2)} ms, p99 ${c.notifyToCallP99.toFixed(2)} ms`);
    results.c = c;

  }

  if (want("d")) {
    // (d) one batch of a million, on two fresh nodes: `lote api` takes it in, `lote worker` dispatches it, so the
    // worker's VmHWM is dispatch memory alone (in one `serve` process the CreateBatch peak would hide it). A model
    // name only they know keeps the serve node of (a)-(c) out of it; it is stopped anyway.
    await server.stop();
    console.log(`\n(d) one batch of ${int(size.d)} compact chat requests at zero latency, concurrency ${concurrency}, \`lote api\` + \`lote worker\`` +
      `${process.env.LOTE_BENCH_WORKER_NODE_OPTIONS ? ` (worker NODE_OPTIONS=${process.env.LOTE_BENCH_WORKER_NODE_OPTIONS})` : ""}:`);
    const millionConfig = { models: [{ name: "bench-million", backend: { kind: "openai", urls: [fast.url] }, max_concurrency: concurrency, timeout_ms: 120_000 }] };
    const api = await startLoteServer({ databaseUrl: db.url, role: "api", config: millionConfig });
    // lote-server.ts starts any role; its type names the two the ingest benchmark uses. LOTE_BENCH_WORKER_NODE_OPTIONS
    // (e.g. --trace-gc) reaches this process alone, through the environment it inherits.
    const nodeOptions = process.env.NODE_OPTIONS;
    if (process.env.LOTE_BENCH_WORKER_NODE_OPTIONS) process.env.NODE_OPTIONS = process.env.LOTE_BENCH_WORKER_NODE_OPTIONS;
    const worker = await startLoteServer({ databaseUrl: db.url, role: "worker", config: millionConfig, cpuProfDir: process.env.LOTE_BENCH_CPU_PROF })
      .finally(() => (nodeOptions === undefined ? delete process.env.NODE_OPTIONS : (process.env.NODE_OPTIONS = nodeOptions)));
    loteProcesses.push(api, worker);
    try {
      const d = encodedBatch(benchBodies(size.d, "bench-million", "compact"));
      const idleRss = worker.peakRss();
      let ingestPeak = 0;
      const df = await loteRun({ client: batchClient(api.url), pool, sim: fast, lotePid: worker.child.pid!, database: lote.database }, d.request, size.d, 3_600_000, {
        beforeSubmit: () => api.resetPeakRss(),
        afterAccept: () => void (ingestPeak = api.peakRss()),
      });
      const workerPeak = worker.peakRss();
      const r = df.run;
      line("lote worker", df);
      console.log(`  CreateBatch (${d.megabytes.toFixed(0)} MB) ${((r.acceptedAt - r.submittedAt) / 1000).toFixed(1)} s, first -> last result ` +
        `${((r.lastResultAt - r.firstResultAt) / 1000).toFixed(1)} s, submit -> COMPLETED ${((r.completedAt - r.submittedAt) / 1000).toFixed(1)} s`);
      console.log(`  (d) worker peak RSS (VmHWM, start to COMPLETED) ${mib(workerPeak)}   (goal <= 256 MB); ${mib(idleRss)} before the batch; ` +
        `api node during CreateBatch ${mib(ingestPeak)}`);
      results.d = { requests: size.d, megabytes: d.megabytes, rate: df.rate, createBatchS: (r.acceptedAt - r.submittedAt) / 1000,
        submitToCompletedS: (r.completedAt - r.submittedAt) / 1000, workerPeakRssBytes: workerPeak, workerIdleRssBytes: idleRss, apiIngestPeakRssBytes: ingestPeak };
    } finally {
      await Promise.all([api.stop(), worker.stop()]);
    }
  }
  console.log(`\nload average now ${load()}`);
  console.log(JSON.stringify(results));
} finally {
  await pool.end();
  await server.stop();
  await Promise.all([fast.stop(), slow.stop()]);
  await db.close();
}
