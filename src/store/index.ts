/** The store: every SQL statement lote runs lives in this folder. */
export { migrate } from "./migrate.ts";
export { DatabaseUnavailableError, openDatabase, unreachableCodes, type Database } from "./open-database.ts";
export { EmbeddedPostgresError } from "./embedded-server.ts";
export type { BatchRecord } from "./batch-row.ts";
export { createBatch, isBoundedBatch, type CreatedBatch, type NewBatch, type NewItem } from "./create-batch.ts";
export { createRetryBatch, type NewRetryBatch } from "./create-retry-batch.ts";
export { batchStatuses, getBatch, listBatches, type ListBatchesQuery } from "./get-batches.ts";
export { getResults, getResultsByIdx, type ResultRecord, type ResultFilter } from "./get-results.ts";
export { cancelBatch, type CancelOutcome } from "./cancel-batch.ts";
export { expireDueBatches, finishBatches, pruneModelUsage } from "./maintain-batches.ts";
export { claimItems, heartbeat, findExpiredLeases, vacuumItems, type ClaimedItem, type HeldItem, type ClaimRequest, type ExpiredLease } from "./claim-items.ts";
export { completeItems, type Completion, type Rescue } from "./complete-items.ts";
export { transitionBatch } from "./transition-batch.ts";
export { Notifier, type Channel } from "./notifier.ts";
export { readQueueDepth, type QueueDepth } from "./read-queue-depth.ts";
export { listWorkers, markWorkerAlive, retireWorker, type WorkerPresence, type WorkerRecord } from "./workers.ts";
export { createApiKey, findTenantByKey, listApiKeys, revokeApiKeys, type ApiKeyRecord, type RevokeOutcome } from "./api-keys.ts";
