/** Why an in-flight call was aborted; the executor turns each into a different outcome. */
export type AbortReason = "timeout" | "cancelled" | "expired" | "shutdown";

/**
 * How long a batch heard stopped (cancelled or expired) is remembered, so that a call added for it afterwards is
 * aborted at once. The notification can arrive while this node's claim of the batch's items is still on its way
 * back (the claim committed before the cancel): nothing of the batch is in flight yet, and without the memory its
 * calls ran until maintenance's next abort check (`maintenance_interval_ms`, 1 s by default, and a test with a
 * minute saw a cancelled batch stay CANCELLING for that minute). 60 s covers a claim's round trip, which the
 * dispatcher pool bounds by `query_timeout_ms` (10 s by default); a slower one is still caught by maintenance.
 */
const rememberStoppedMs = 60_000;

/**
 * The calls running on this node, by batch, so a cancel or expiry heard over LISTEN aborts exactly that batch's
 * calls (the AbortSignal reaches the HTTP/2 stream or gRPC call). A Set per batch, not AbortSignal.any chains,
 * so nothing accumulates listeners on a long-lived signal.
 */
export class InFlight {
  private readonly byBatch = new Map<string, Set<AbortController>>();
  /** Batches heard stopped, with why and until when (oldest first: an entry is deleted before it is set again). */
  private readonly stopped = new Map<string, { reason: AbortReason; until: number }>();
  private count = 0;
  private emptyWaiters: (() => void)[] = [];

  add(batchId: string, controller: AbortController): void {
    let set = this.byBatch.get(batchId);
    if (!set) this.byBatch.set(batchId, (set = new Set()));
    set.add(controller);
    this.count++;
    const stop = this.stoppedReason(batchId);
    if (stop) controller.abort(stop);
  }

  remove(batchId: string, controller: AbortController): void {
    const set = this.byBatch.get(batchId);
    if (!set?.delete(controller)) return;
    this.count--;
    if (set.size === 0) this.byBatch.delete(batchId);
    if (this.count === 0) for (const resolve of this.emptyWaiters.splice(0)) resolve();
  }

  /** Resolves when no call is in flight (at once if none is). */
  whenEmpty(): Promise<void> {
    return this.count === 0 ? Promise.resolve() : new Promise((resolve) => this.emptyWaiters.push(resolve));
  }

  /**
   * Aborts the batch's calls. A cancel or an expiry is also remembered for `rememberStoppedMs`: a call added for the
   * batch meanwhile is aborted as it is added.
   */
  abortBatch(batchId: string, reason: AbortReason): number {
    if (reason === "cancelled" || reason === "expired") this.rememberStopped(batchId, reason);
    const set = this.byBatch.get(batchId);
    if (!set) return 0;
    for (const c of set) c.abort(reason);
    return set.size;
  }

  /**
   * Aborts the batch's calls if `status` says it stopped running: cancelling or cancelled, or expired. Both ways of
   * learning a status use it: the `lote_status` notification and maintenance's check for a missed one.
   */
  abortIfStopped(batchId: string, status: string): void {
    if (status === "cancelling" || status === "cancelled") this.abortBatch(batchId, "cancelled");
    else if (status === "expired") this.abortBatch(batchId, "expired");
  }

  private rememberStopped(batchId: string, reason: AbortReason): void {
    const now = performance.now();
    for (const [id, entry] of this.stopped) {
      if (entry.until > now) break;
      this.stopped.delete(id);
    }
    this.stopped.delete(batchId);
    this.stopped.set(batchId, { reason, until: now + rememberStoppedMs });
  }

  private stoppedReason(batchId: string): AbortReason | undefined {
    const entry = this.stopped.get(batchId);
    if (!entry) return undefined;
    if (entry.until > performance.now()) return entry.reason;
    this.stopped.delete(batchId);
    return undefined;
  }

  abortAll(reason: AbortReason): void {
    for (const id of this.byBatch.keys()) this.abortBatch(id, reason);
  }

  has(batchId: string): boolean {
    return this.byBatch.has(batchId);
  }

  batchIds(): string[] {
    return [...this.byBatch.keys()];
  }

  get size(): number {
    return this.count;
  }
}
