/**
 * Clocks for comparing moments across the benchmark's processes.
 *
 * monoMs(): CLOCK_MONOTONIC in ms (process.hrtime), one clock for every process on the machine and never stepped:
 * the submit -> first call latency is a difference of a few ms between this process and the simulator's, and a
 * wall-clock step between two processes' start (the VM's time sync does that) once made it come out negative.
 *
 * wallMs(): wall-clock ms with sub-ms resolution, for comparing with Postgres' now() (result rows, completed_at).
 */
export function monoMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}
