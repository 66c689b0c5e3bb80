import type pg from "pg";
import type { Logger } from "pino";
import type { ModelConfig } from "../config/config.ts";
import {
  batchStatuses, completeItems, expireDueBatches, findExpiredLeases, finishBatches, pruneModelUsage, vacuumItems, type Rescue,
} from "../store/index.ts";
import type { InFlight } from "./in-flight.ts";

export interface MaintenanceOptions {
  readonly pool: pg.Pool;
  /** Expiry (a whole batch's items in one transaction) and VACUUM: no query timeout (see DispatcherOptions). */
  readonly bulkPool: pg.Pool;
  /** Called when a task failed (it runs again at the next tick). */
  readonly onFailed?: () => void;
  /** Called with the items of a model whose lapsed lease this node rescued (back to pending, failed or cancelled). */
  readonly onRescued?: (model: string, items: number) => void;
  readonly models: ReadonlyMap<string, ModelConfig>;
  readonly inFlight: InFlight;
  readonly logger: Logger;
  readonly intervalMs: number;
}

/**
 * The periodic work of every node (River's maintenance services, idempotent so several nodes may run it at once):
 * expire batches past their window, move finished batches on (FINALIZING -> COMPLETED, CANCELLING -> CANCELLED),
 * rescue items whose lease ran out (their worker died), and abort local calls of batches cancelled or expired
 * elsewhere when a notification was missed.
 */
export class Maintenance {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private ticks = 0;
  /** A tick is queued or running: the interval adds no other (see `start`). */
  private ticking = false;
  private readonly pendingFinish = new Set<string>();
  private finishScheduled = false;
  private vacuuming: Promise<void> | undefined;

  constructor(private readonly o: MaintenanceOptions) {}

  start(): void {
    // One tick at a time, and none queued behind it: a tick waits on Postgres (three statements, each up to
    // query_timeout_ms, 10 s), and queueing one per interval while it waited piled up 50 ticks in a test whose
    // Postgres was blocked for 50 intervals; they then ran back to back against a database already slow, and the
    // node's stop (which waits for `idle`) waited for every one of them.
    this.timer = setInterval(() => {
      if (this.ticking) return;
      this.ticking = true;
      this.running = this.running.then(() => this.tick()).finally(() => (this.ticking = false));
    }, this.o.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  idle(): Promise<void> {
    return Promise.all([this.running, this.vacuuming]).then(() => {});
  }

  /** Batches that may have just finished: checked right away instead of at the next tick. */
  finishSoon(batchIds: readonly string[]): void {
    for (const id of batchIds) this.pendingFinish.add(id);
    if (this.finishScheduled) return;
    this.finishScheduled = true;
    this.running = this.running.then(async () => {
      this.finishScheduled = false;
      const ids = [...this.pendingFinish];
      this.pendingFinish.clear();
      await this.guard("finish", () => finishBatches(this.o.pool, ids));
    });
  }

  /**
   * Vacuums lote.items (see vacuumItems), at most one at a time, beside the other tasks rather than between them:
   * it has no timeout, and a VACUUM stuck on a connection whose server vanished must not hold up finalisation.
   */
  vacuumSoon(): void {
    if (this.vacuuming) return;
    this.vacuuming = this.guard("vacuum", () => vacuumItems(this.o.bulkPool)).finally(() => (this.vacuuming = undefined));
  }

  /** Aborts this node's calls for batches that are no longer running (cancelled or expired). */
  checkAborts(batchIds: readonly string[]): void {
    this.running = this.running.then(() => this.guard("abort check", async () => {
      if (batchIds.length === 0) return;
      for (const { id, status } of await batchStatuses(this.o.pool, batchIds)) this.o.inFlight.abortIfStopped(id, status);
    }));
  }

  private async tick(): Promise<void> {
    this.ticks++;
    await this.guard("expire", async () => {
      const expired = await expireDueBatches(this.o.pool, this.o.bulkPool);
      for (const id of expired) this.o.inFlight.abortBatch(id, "expired");
      if (expired.length > 0) this.o.logger.info({ batches: expired }, "batches expired");
    });
    await this.guard("finish", () => finishBatches(this.o.pool));
    await this.guard("rescue", () => this.rescue());
    if (this.o.inFlight.size > 0) this.checkAborts(this.o.inFlight.batchIds());
    if (this.ticks % 30 === 0) await this.guard("prune", () => pruneModelUsage(this.o.pool));
  }

  /**
   * Items whose lease expired go back to pending (or fail at their model's max_attempts, or are cancelled when
   * their batch is cancelling), written through the same attempt-fenced completion as any call: if the original
   * worker was only slow and completes first, the rescue matches nothing; if its heartbeat renews the lease before
   * the rescue is written, likewise (`Rescue`).
   */
  private async rescue(): Promise<void> {
    const lost = await findExpiredLeases(this.o.pool, 1_000, [...this.o.models.keys()]);
    if (lost.length === 0) return;
    const completions: Rescue[] = lost.map((l): Rescue => {
      const base = { batchId: l.batchId, idx: l.idx, attempt: l.attempt, statusCode: l.lastError?.status_code ?? 0, rescue: true } as const;
      if (l.batchStatus === "cancelling" || l.batchStatus === "cancelled") {
        return { ...base, outcome: "cancelled", requestId: "", errorCode: "batch_cancelled", errorMessage: "The batch was cancelled while this request ran." };
      }
      // A model this node serves (findExpiredLeases), unless the batch was cancelled (above).
      const maxAttempts = this.o.models.get(l.model)!.maxAttempts;
      const errorCode = "lease_expired";
      const errorMessage = "the worker running this request stopped renewing its lease (crashed or partitioned)";
      if (l.attempt >= maxAttempts) {
        return { ...base, outcome: "failed", requestId: "", errorCode: l.lastError?.code ?? errorCode, errorMessage: l.lastError?.message ?? errorMessage };
      }
      return { ...base, outcome: "retry", errorCode, errorMessage, retryDelayMs: 0 };
    });
    const touched = await completeItems(this.o.pool, completions);
    const byModel = new Map<string, number>();
    for (const l of lost) byModel.set(l.model, (byModel.get(l.model) ?? 0) + 1);
    for (const [model, items] of byModel) this.o.onRescued?.(model, items);
    this.o.logger.warn({ items: lost.length, models: Object.fromEntries(byModel) }, "rescued items with expired leases");
    await finishBatches(this.o.pool, touched.map((t) => t.batchId));
  }

  private async guard(what: string, work: () => Promise<unknown>): Promise<void> {
    try {
      await work();
    } catch (err) {
      this.o.onFailed?.();
      this.o.logger.warn({ err: (err as Error).message, task: what }, "maintenance task failed");
    }
  }
}
