/**
 * One measured run of each party of the dispatch benchmark against a simulator process, with the CPU each
 * process used meanwhile. Rates are items per second from the first result to the last: a result received
 * (bare client), a result row committed (lote), a job finished and its completion committed (graphile-worker).
 */
import type pg from "pg";
import { startCpuMeter } from "./cpu-meter.ts";
import type { BodyKind } from "./bench-bodies.ts";
import { runBatch, type BatchClient, type BatchRun, type encodedBatch } from "./lote-batches.ts";
import { startNodeChild } from "./node-child.ts";
import type { SimulatorProcess, SimulatorWindow } from "./simulator-process.ts";

export interface RunFigures {
  /** Items per second, first result to last. */
  readonly rate: number;
  /** Calls per second at the simulator, first call to last, and the mean calls in flight there. */
  readonly simRate: number;
  readonly simMeanInFlight: number;
  /** Mean time the simulator held each call, arrival to close, ms (its configured latency plus its own delay). */
  readonly simMeanHoldMs: number;
  /** Cores used during the run, per party (e.g. { lote: 0.9, postgres: 0.6, simulator: 0.3 }). */
  readonly cores: Record<string, number>;
  /** CPU per item, µs, per party: where the time goes. */
  readonly cpuPerItemUs: Record<string, number>;
}

const rateOf = (n: number, fromMs: number, toMs: number) => (n * 1000) / (toMs - fromMs);

function simFigures(w: SimulatorWindow) {
  return { simRate: rateOf(w.calls, w.firstAt, w.lastAt), simMeanInFlight: w.meanInFlight, simMeanHoldMs: w.meanHoldMs };
}

function usage(cpu: Record<string, number>, ms: number, items: number) {
  return {
    cores: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, v / (ms / 1000)])),
    cpuPerItemUs: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, (v / items) * 1e6])),
  };
}

/** `url`: the simulator's h2c URL by default, or its http1Url. `streamsPerSession`: the backend option, when set. */
export async function bareClientRun(
  sim: SimulatorProcess, concurrency: number, count: number, kind: BodyKind, url = sim.url, streamsPerSession?: number,
): Promise<RunFigures & { readonly connections: number }> {
  await sim.mark();
  const args = [url, String(concurrency), String(count), kind, ...(streamsPerSession === undefined ? [] : [String(streamsPerSession)])];
  const child = startNodeChild("./bare-client-child.ts", args);
  const meter = startCpuMeter({ "bare client": child.child.pid, simulator: sim.pid }, "-");
  const r = await child.nextJson<{ startedAt: number; firstAt: number; lastAt: number; ok: number; failed: number }>();
  const cpu = meter.stop();
  await child.exited;
  if (r.ok !== count) throw new Error(`bare client: ${r.failed} of ${count} calls failed`);
  const w = await sim.report();
  return { rate: rateOf(count, r.firstAt, r.lastAt), connections: w.connections, ...simFigures(w), ...usage(cpu, r.lastAt - r.startedAt, count) };
}

export interface GraphileFigures extends RunFigures {
  /** Time to add the jobs (addJobs, 5,000 per call), before the worker started. */
  readonly addMs: number;
}

export async function graphileRun(databaseUrl: string, sim: SimulatorProcess, concurrency: number, count: number, kind: BodyKind): Promise<GraphileFigures> {
  await sim.mark();
  const child = startNodeChild("./graphile-child.ts", [databaseUrl, sim.url, String(concurrency), String(count), kind]);
  const { addMs } = await child.nextJson<{ addMs: number }>();
  const meter = startCpuMeter({ "graphile-worker": child.child.pid, simulator: sim.pid }, new URL(databaseUrl).pathname.slice(1));
  const r = await child.nextJson<{ startedAt: number; firstAt: number; doneAt: number; ok: number; failed: number }>();
  const cpu = meter.stop();
  await child.exited;
  if (r.ok !== count) throw new Error(`graphile-worker: ${r.ok} of ${count} jobs succeeded`);
  return { rate: rateOf(count, r.firstAt, r.doneAt), addMs, ...simFigures(await sim.report()), ...usage(cpu, r.doneAt - r.startedAt, count) };
}

export interface LoteFigures extends RunFigures {
  readonly run: BatchRun;
}

/**
 * Empties lote's tables and checkpoints first, so no run pays for an earlier one's dead rows or dirty pages;
 * the CPU window starts when CreateBatch has answered (dispatch only).
 */
export async function loteRun(
  o: { client: BatchClient; pool: pg.Pool; sim: SimulatorProcess; lotePid: number; database: string },
  request: ReturnType<typeof encodedBatch>["request"],
  count: number,
  timeoutMs: number,
  hooks: { beforeSubmit?: () => void; afterAccept?: () => void } = {},
): Promise<LoteFigures> {
  // TRUNCATE takes its locks table by table; a maintenance query of the lote node can hold one of them and wait
  // for another (deadlock_detected). Only the TRUNCATE is rolled back: try again.
  for (let attempt = 1; ; attempt++) {
    try {
      await o.pool.query("TRUNCATE lote.batches CASCADE");
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== "40P01" || attempt === 5) throw err;
    }
  }
  await o.pool.query("CHECKPOINT");
  await o.sim.mark();
  hooks.beforeSubmit?.();
  let meter: ReturnType<typeof startCpuMeter> | undefined;
  let meterFrom = 0;
  const run = await runBatch(o.client, o.pool, request, timeoutMs, async () => {
    meterFrom = performance.now();
    meter = startCpuMeter({ lote: o.lotePid, simulator: o.sim.pid }, o.database);
    hooks.afterAccept?.();
  });
  const cpu = meter!.stop();
  const ms = performance.now() - meterFrom;
  if (run.completed !== count) throw new Error(`lote: ${run.completed} of ${count} requests succeeded (${run.failed} failed)`);
  return { run, rate: rateOf(count, run.firstResultAt, run.lastResultAt), ...simFigures(await o.sim.report()), ...usage(cpu, ms, count) };
}
