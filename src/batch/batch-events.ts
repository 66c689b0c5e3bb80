import type { Notifier } from "../store/index.ts";

/**
 * Per-batch wake-ups for StreamResults and WatchBatch on this node, fed by the node's one LISTEN connection.
 * `wait` resolves on the next notification about the batch, after `pollMs` at the latest (polling is the truth:
 * a notification can be lost while the listener reconnects), or when `signal` aborts.
 */
export class BatchEvents {
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(notifier: Notifier) {
    notifier.on("notification", (channel, payload) => {
      if (channel === "lote_batch") this.wake(payload);
    });
    notifier.on("reconnected", () => {
      for (const id of [...this.waiters.keys()]) this.wake(id);
    });
  }

  wake(batchId: string): void {
    const set = this.waiters.get(batchId);
    if (!set) return;
    this.waiters.delete(batchId);
    for (const fn of set) fn();
  }

  wait(batchId: string, pollMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let set = this.waiters.get(batchId);
      if (!set) this.waiters.set(batchId, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        this.waiters.get(batchId)?.delete(done);
        resolve();
      };
      const timer = setTimeout(done, pollMs);
      signal?.addEventListener("abort", done, { once: true });
      set.add(done);
    });
  }
}
