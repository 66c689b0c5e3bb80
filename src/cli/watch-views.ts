/** The two faces of `lote watch`: a cli-progress bar on a terminal, throttled plain lines elsewhere. */
import type { Writable } from "node:stream";
import cliProgress from "cli-progress";
import type { Batch } from "../../gen/lote/v1/batch_pb.ts";
import { doneCount, isTerminalStatus } from "./format-batch.ts";
import { statusName } from "./parse-options.ts";

export interface WatchView {
  /** A new state of the batch (WatchBatch sends one per change of status or counts). */
  update(batch: Batch): void;
  /** The batch is terminal: show the final state. */
  finish(batch: Batch): void;
  /** Stop drawing (error, Ctrl-C), leaving the terminal usable. */
  abort(): void;
}

/**
 * Requests answered (completed or failed) per second, measured from the first update this watch saw (not from the
 * batch's start). Not every request done: a cancel or an expiry closes thousands at once, and counted as done they
 * showed a rate of 3,936/s and an ETA of 0.0 s for a batch the backend was answering at 40/s.
 */
class RateMeter {
  private first: { at: number; done: bigint } | undefined;
  readonly startedAt: number;

  constructor(private readonly clock: () => number) {
    this.startedAt = clock();
  }

  /** undefined until progress was seen over at least half a second: an earlier figure would be noise. */
  rate(batch: Batch): number | undefined {
    const now = this.clock();
    const c = batch.requestCounts;
    const done = c ? c.completed + c.failed : 0n;
    if (!this.first) this.first = { at: now, done };
    const seconds = (now - this.first.at) / 1000;
    return seconds >= 0.5 && done > this.first.done ? Number(done - this.first.done) / seconds : undefined;
  }
}

/**
 * One line per update, but at most one per `intervalMs` (1 s): a 1,000,000-request batch changes counts hundreds
 * of times a second and a log needs none of that. A held-back line is written when the interval is up, so the
 * log never lags the batch by more than a second; the final state is always written.
 */
export class PlainLinesView implements WatchView {
  private lastWrite = -Infinity;
  private pending: Batch | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly meter: RateMeter;

  constructor(private readonly out: Writable, private readonly intervalMs = 1_000, private readonly clock: () => number = Date.now) {
    this.meter = new RateMeter(clock);
  }

  update(batch: Batch): void {
    const rate = this.meter.rate(batch);
    if (isTerminalStatus(batch.status)) return; // finish() writes it
    const wait = this.lastWrite + this.intervalMs - this.clock();
    if (wait <= 0) return this.write(batch, rate);
    this.pending = batch;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      if (this.pending) this.write(this.pending, this.meter.rate(this.pending));
    }, wait);
  }

  finish(batch: Batch): void {
    this.abort();
    this.out.write(`${progressLine(batch, undefined, this.clock() - this.meter.startedAt)}\n`);
  }

  abort(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pending = undefined;
  }

  private write(batch: Batch, rate: number | undefined): void {
    this.pending = undefined;
    this.lastWrite = this.clock();
    this.out.write(`${progressLine(batch, rate, this.lastWrite - this.meter.startedAt)}\n`);
  }
}

/** A live bar with completed/failed/total, rate and ETA, redrawn in place (cli-progress caps redraws at 10 fps). */
export class ProgressBarView implements WatchView {
  private readonly bar: cliProgress.SingleBar;
  private started = false;
  private readonly meter = new RateMeter(Date.now);

  constructor(private readonly out: Writable) {
    this.bar = new cliProgress.SingleBar({
      stream: out,
      format: "{id} {bar} {percentage}% | {done}/{total} done | {completed} completed, {failed} failed | {rate}/s | ETA {eta_text} | {status}",
      barCompleteChar: "\u2588",
      barIncompleteChar: "\u2591",
      barsize: 30,
      hideCursor: false,
      etaBuffer: 50,
    });
  }

  update(batch: Batch): void {
    const c = batch.requestCounts;
    const total = Number(c?.total ?? 0n);
    const done = Number(doneCount(c));
    const rate = this.meter.rate(batch);
    const payload = {
      id: batch.id,
      status: statusName(batch.status),
      done,
      completed: Number(c?.completed ?? 0n),
      failed: Number(c?.failed ?? 0n),
      rate: rate === undefined ? "-" : rate.toFixed(1),
      eta_text: rate ? formatSeconds((total - done) / rate) : "-",
    };
    if (!this.started) {
      this.bar.start(total, done, payload);
      this.started = true;
    } else {
      this.bar.setTotal(total);
      this.bar.update(done, payload);
    }
  }

  finish(batch: Batch): void {
    this.update(batch);
    this.bar.stop();
    this.out.write(`${progressLine(batch, undefined, Date.now() - this.meter.startedAt)}\n`);
  }

  abort(): void {
    if (this.started) this.bar.stop();
  }
}

/** One line describing where a batch stands; `rate` in requests per second, when known. */
export function progressLine(b: Batch, rate: number | undefined, elapsedMs: number): string {
  const c = b.requestCounts;
  const done = doneCount(c);
  const total = c?.total ?? 0n;
  const head = `${b.id} ${statusName(b.status)}: ${done}/${total} done, ${c?.completed ?? 0n} completed, ${c?.failed ?? 0n} failed`;
  if (isTerminalStatus(b.status)) {
    return `${head}, ${c?.cancelled ?? 0n} cancelled, ${c?.expired ?? 0n} expired (watched ${formatSeconds(elapsedMs / 1000)})`;
  }
  const eta = rate && rate > 0 ? formatSeconds(Number(total - done) / rate) : "-";
  return `${head}, ${rate === undefined ? "-" : rate.toFixed(1)}/s, ETA ${eta}`;
}

export function formatSeconds(s: number): string {
  if (s < 9.95) return `${s.toFixed(1)}s`;
  // Rounded once, to whole seconds, before splitting: rounding the seconds alone wrote 119.6 s as "1m60s".
  const whole = Math.round(s);
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, "0")}s`;
  const minutes = Math.floor(whole / 60);
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, "0")}m`;
}
