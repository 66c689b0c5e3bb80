/**
 * The batch state machine, OpenAI's eight states. Every status change in the store goes through `transition()`,
 * whose SQL refuses the move unless the row is in one of the states this table allows (docs/states.md draws it).
 */
export const batchStatuses = [
  "validating",
  "failed",
  "in_progress",
  "finalizing",
  "completed",
  "expired",
  "cancelling",
  "cancelled",
] as const;
export type BatchStatus = (typeof batchStatuses)[number];

/** Named transitions: the only ways a batch changes status. `from` lists the states each may start from. */
export const batchTransitions = {
  /** Validation passed; requests may be claimed. */
  start: { from: ["validating"], to: "in_progress", stamp: "in_progress_at" },
  /** Validation of the batch as a whole failed (not used when single requests fail). */
  fail: { from: ["validating"], to: "failed", stamp: "failed_at" },
  /** Every request has a result. */
  finalize: { from: ["in_progress"], to: "finalizing", stamp: "finalizing_at" },
  complete: { from: ["finalizing"], to: "completed", stamp: "completed_at" },
  /** CancelBatch: pending requests are cancelled at once, in-flight ones aborted. */
  cancel: { from: ["validating", "in_progress", "finalizing"], to: "cancelling", stamp: "cancelling_at" },
  /** No request of a cancelling batch is running any more. */
  finishCancel: { from: ["cancelling"], to: "cancelled", stamp: "cancelled_at" },
  /** expires_at passed before every request finished. */
  expire: { from: ["validating", "in_progress", "finalizing"], to: "expired", stamp: "expired_at" },
} as const satisfies Record<string, { from: readonly BatchStatus[]; to: BatchStatus; stamp: string }>;
export type BatchTransition = keyof typeof batchTransitions;

export const terminalStatuses: readonly BatchStatus[] = ["completed", "failed", "expired", "cancelled"];

export function isTerminal(status: BatchStatus): boolean {
  return terminalStatuses.includes(status);
}

/** Whether `transition` may move a batch that is in `status` (the same check the store's SQL makes). */
export function canTransition(status: BatchStatus, transition: BatchTransition): boolean {
  return (batchTransitions[transition].from as readonly BatchStatus[]).includes(status);
}

/** Item states. pending -> running -> succeeded | failed | pending (retry); pending|running -> cancelled | expired. */
export const itemStatuses = ["pending", "running", "succeeded", "failed", "cancelled", "expired"] as const;
export type ItemStatus = (typeof itemStatuses)[number];
