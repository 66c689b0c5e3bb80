/** Why an in-flight call was aborted; the executor turns each into a different outcome. */
export type AbortReason = "timeout" | "cancelled" | "expired" | "shutdown";

/**
 * The calls running on this node, by batch, so a cancel or expiry heard over LISTEN aborts exactly that batch's
 * calls (the AbortSignal reaches the HTTP/2 stream or gRPC call). A Set per batch, not AbortSignal.any chains,
 * so nothing accumulates listeners on a long-lived signal.
 */
export class InFlight {
  private readonly byBatch = new Map<string, Set<AbortController>>();
  private count = 0;
  private emptyWaiters: (() => void)[] = [];

  add(batchId: string, controller: AbortController): void {
    let set = this.byBatch.get(batchId);
    if (!set) this.byBatch.set(batchId, (set = new Set()));
    set.add(controller);
    this.count++;
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

  abortBatch(batchId: string, reason: AbortReason): number {
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
