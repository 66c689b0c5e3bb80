/**
 * This node's share of a model's `max_concurrency`, by water-filling over the capacities of the worker nodes alive
 * for it (each node's capacity for the model: min(worker.concurrency, max_concurrency)): every node gets the same
 * level of slots, except that a node cannot use more than its capacity, and what it cannot use goes to the others.
 * Equal nodes get ⌈limit / n⌉ each. The level is rounded up, so the shares add up to at least the limit (the claim
 * still holds the limit itself fleet-wide) and a node never gets 0. Every node computes the same level from the
 * same rows, so the shares agree without talking to each other.
 *
 * Examples, limit 8: capacities [8, 8] -> 4 each; [2, 8] -> 2 and 6; [1, 1, 8] -> 1, 1 and 6; [2, 2] -> 2 each.
 */
export function fleetShare(limit: number, own: number, others: readonly number[]): number {
  const caps = [own, ...others].sort((a, b) => a - b);
  let left = limit;
  let level = 0;
  for (let i = 0; i < caps.length; i++) {
    // The nodes from i on (the larger ones) split what is left evenly, unless node i cannot take its part.
    level = left / (caps.length - i);
    if (caps[i]! >= level) break;
    left -= caps[i]!;
    // Node i takes all it can run; if it was the last, every node does (the limit is more than they can run).
    level = Infinity;
  }
  return Math.max(1, Math.min(own, Math.ceil(level)));
}
