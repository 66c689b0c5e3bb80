import type { HeldItem } from "../store/index.ts";

/**
 * The items this node holds: claimed by it and not yet written back (their call runs, or its completion waits in
 * the completer). The heartbeat renews exactly these leases (see `heartbeat` in src/store/claim-items.ts), so a row
 * running under this node's id that it does not hold, left by a claim whose answer was lost, runs out of lease and
 * is rescued. Keyed by item, holding the attempt: a release for an older attempt leaves a newer claim held.
 */
export class HeldItems {
  private readonly items = new Map<string, HeldItem>();

  hold(item: HeldItem): void {
    this.items.set(keyOf(item), item);
  }

  release(item: HeldItem): void {
    const key = keyOf(item);
    if (this.items.get(key)?.attempt === item.attempt) this.items.delete(key);
  }

  list(): HeldItem[] {
    return [...this.items.values()];
  }

  get size(): number {
    return this.items.size;
  }
}

// Batch ids never contain a NUL character (src/batch/ids.ts), so the key is unambiguous.
const keyOf = (item: HeldItem) => `${item.batchId}\0${item.idx}`;
