import type pg from "pg";
import type { Logger } from "pino";
import { completeItems, type Completion } from "../store/index.ts";

export interface CompleterOptions {
  readonly pool: pg.Pool;
  readonly logger: Logger;
  /** Flush when this many completions are waiting. */
  readonly batchSize: number;
  /** …or this long after the first one arrived. */
  readonly flushMs: number;
  /** Called after each successful flush with the batches it touched and the completions it wrote. */
  readonly onFlushed: (touched: { batchId: string; finished: boolean }[], rows: readonly Completion[]) => void;
  /** Called when a flush failed and will be retried. */
  readonly onFailed?: () => void;
}

/**
 * Batches completions into one `lote.complete_items` call (River's jobcompleter, graphile-worker's completeJobs):
 * at zero backend latency a node finishes thousands of calls a second, and one statement per call would make
 * Postgres the bottleneck. One flush runs at a time; what arrives meanwhile goes into the next.
 *
 * We MUST NOT drop a completion: a failed flush keeps its rows and retries with backoff. If the node dies first,
 * the items' leases expire and the rescuer runs them again (at-least-once calls, exactly-once results).
 */
export class Completer {
  private buffer: Completion[] = [];
  private flushing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private flushedTotal = 0;

  constructor(private readonly o: CompleterOptions) {}

  push(c: Completion): void {
    this.buffer.push(c);
    if (this.flushing) return;
    if (this.buffer.length >= this.o.batchSize) this.startFlush();
    else this.timer ??= setTimeout(() => this.startFlush(), this.o.flushMs);
  }

  /** Completions not yet written; the producer stops claiming when this grows (backpressure). */
  get backlog(): number {
    return this.buffer.length;
  }

  get flushed(): number {
    return this.flushedTotal;
  }

  private startFlush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.flushing || this.buffer.length === 0) return;
    const rows = this.buffer.splice(0, Math.max(this.o.batchSize, 1));
    this.flushing = this.write(rows).finally(() => {
      this.flushing = undefined;
      if (this.buffer.length > 0) {
        if (this.failures > 0) this.timer ??= setTimeout(() => this.startFlush(), Math.min(5_000, 50 * 2 ** this.failures));
        else this.startFlush();
      }
    });
  }

  private async write(rows: Completion[]): Promise<void> {
    // Rows written so far: a flush split around a refused row can fail part way, and only the rest is retried.
    const written = new Set<Completion>();
    try {
      await this.writeRows(rows, written);
      this.failures = 0;
    } catch (err) {
      this.failures++;
      this.o.onFailed?.();
      this.o.logger.warn({ err: (err as Error).message, rows: rows.length, failures: this.failures }, "completion flush failed; will retry");
      this.buffer.unshift(...(written.size === 0 ? rows : rows.filter((r) => !written.has(r))));
    }
  }

  /**
   * One statement for all the rows, unless Postgres refuses their data: then halves, down to the row it refuses,
   * which is written as failed with `result_not_storable` instead. Retrying a refused row could never succeed, and
   * every flush after it would carry it: one bad answer stopped all of a node's completions, forever. Anything
   * else (a lost connection, a timeout) throws, and the whole flush is retried.
   */
  private async writeRows(rows: Completion[], written: Set<Completion>): Promise<void> {
    try {
      const touched = await completeItems(this.o.pool, rows);
      for (const r of rows) written.add(r);
      this.flushedTotal += rows.length;
      this.o.onFlushed(touched, rows);
    } catch (err) {
      if (!refusesData(err)) throw err;
      if (rows.length > 1) {
        const half = rows.length >> 1;
        await this.writeRows(rows.slice(0, half), written);
        await this.writeRows(rows.slice(half), written);
        return;
      }
      const row = rows[0]!;
      const message = (err as Error).message;
      if (row.outcome === "failed" && row.errorCode === "result_not_storable") {
        // Even the replacement was refused: leave the item to its lease and the rescuer, and stop holding it.
        this.o.logger.error({ err: message, batchId: row.batchId, idx: row.idx }, "Postgres refused a completion's replacement; leaving the item to the rescuer");
        written.add(row);
        this.o.onFlushed([], rows);
        return;
      }
      this.o.logger.error({ err: message, batchId: row.batchId, idx: row.idx }, "Postgres refused a completion's data; storing it as failed");
      await this.writeRows([{
        outcome: "failed", batchId: row.batchId, idx: row.idx, attempt: row.attempt, statusCode: row.statusCode,
        requestId: "requestId" in row ? row.requestId : "", errorCode: "result_not_storable",
        errorMessage: `The backend's answer could not be stored: ${message}`.slice(0, 1_000),
      }], written);
      written.add(row);
    }
  }

  /** Writes everything buffered (shutdown). Gives up after `timeoutMs`; leases cover what is left. */
  async drain(timeoutMs = 10_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while ((this.buffer.length > 0 || this.flushing) && Date.now() < until) {
      if (!this.flushing) this.startFlush();
      await this.flushing;
      if (this.failures > 0) await new Promise((r) => setTimeout(r, 50));
    }
    clearTimeout(this.timer);
  }
}

/**
 * Postgres refused the values themselves (SQLSTATE class 22, data exception: a number out of range, text it cannot
 * take; class 54, a program limit such as a value too long), or they could not even be encoded (RangeError: a
 * string longer than V8 allows). The same rows would be refused again.
 */
function refusesData(err: unknown): boolean {
  if (err instanceof RangeError) return true;
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" && (code.startsWith("22") || code.startsWith("54"));
}
