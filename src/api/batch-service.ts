/**
 * lote.v1.BatchService: turns RPCs into store calls. Validation lives in src/batch/, SQL in src/store/, error
 * codes in ./errors.ts; this file only wires them together.
 */
import type { ServiceImpl } from "@connectrpc/connect";
import type pg from "pg";
import type { Logger } from "pino";
import { BatchService, type ListBatchesRequest } from "../../gen/lote/v1/batch_service_pb.ts";
import { BatchStatus, type Request as ProtoRequest } from "../../gen/lote/v1/batch_pb.ts";
import { isTerminal } from "../batch/batch-status.ts";
import type { BatchEvents } from "../batch/batch-events.ts";
import { newBatchId } from "../batch/ids.ts";
import { RequestDigest } from "../batch/request-digest.ts";
import {
  defaultCompletionWindowSeconds, expectedNoNul, InvalidRequests, maxPriority, minPriority, RequestChecker,
  validateBatchId, validateBatchOptions, type FieldViolation, type RequestInput, type ValidRequest,
} from "../batch/validate-requests.ts";
import type { Config } from "../config/config.ts";
import {
  cancelBatch, createBatch, createRetryBatch, getBatch, isBoundedBatch, listBatches, type BatchRecord, type CreatedBatch,
} from "../store/index.ts";
import type { Authenticator } from "./auth.ts";
import { decodePageToken, encodePageToken } from "./cursor.ts";
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from "./errors.ts";
import { streamResults, watchBatch } from "./result-streams.ts";
import { runBatch } from "./run-batch.ts";
import { endpointPath, storeStatus, toBatch } from "./to-proto.ts";
import { estimateBatch } from "./estimate-batch.ts";

export interface BatchServiceDeps {
  /** Reads, and creating batches of one bounded statement (isBoundedBatch): its queries time out (Database.pool). */
  readonly pool: pg.Pool;
  /** Writes of unbounded size: creating big batches, cancelling and retrying batches (Database.bulkPool). */
  readonly bulkPool: pg.Pool;
  readonly config: Config;
  readonly auth: Authenticator;
  readonly events: BatchEvents;
  readonly logger: Logger;
}

export function toRequestInputs(requests: readonly ProtoRequest[]): RequestInput[] {
  return requests.map((r) => ({ customId: r.customId, body: r.body, bodyJson: r.bodyJson }));
}

/**
 * CreateBatch checks this many requests before it opens a transaction. 4,096 chat requests take ~8 ms to check and
 * fill ~2 MB of COPY data; batches up to this size are checked completely before any SQL, as before pipelining.
 */
const checkedUpFront = 4096;

function* concat<T>(first: readonly T[], rest: Iterable<T>): Generator<T> {
  yield* first;
  yield* rest;
}

function durationSeconds(d: { seconds: bigint; nanos: number } | undefined): number | undefined {
  return d === undefined ? undefined : Number(d.seconds) + d.nanos / 1e9;
}

/** Throws INVALID_ARGUMENT for a batch id no batch has: empty, or with a NUL Postgres would refuse as INTERNAL. */
export function checkBatchId(field: string, id: string): void {
  const violations = validateBatchId(field, id);
  if (violations.length > 0) throw invalidArgument(violations);
}

/** ListBatches' paging and filters. A filter that cannot be applied is refused, never dropped: that listed everything. */
function listViolations(req: ListBatchesRequest): FieldViolation[] {
  const v: FieldViolation[] = [];
  if (req.pageSize < 0) v.push({ field: "page_size", description: `expected 0 or more, got ${req.pageSize}`, reason: "NEGATIVE_PAGE_SIZE" });
  if (req.status !== BatchStatus.UNSPECIFIED && storeStatus(req.status) === undefined) {
    v.push({ field: "status", description: `expected BATCH_STATUS_UNSPECIFIED (any) or one of the statuses of lote.v1.BatchStatus, got ${req.status}`, reason: "UNKNOWN_STATUS" });
  }
  if (req.metadataValue && !req.metadataKey) {
    v.push({ field: "metadata_value", description: "expected metadata_key to be set with metadata_value, got metadata_key empty", reason: "METADATA_VALUE_WITHOUT_KEY" });
  }
  if (req.metadataKey.includes("\0")) v.push({ field: "metadata_key", description: expectedNoNul("a key", req.metadataKey), reason: "NUL_CHARACTER" });
  if (req.metadataValue.includes("\0")) v.push({ field: "metadata_value", description: expectedNoNul("a value", req.metadataValue), reason: "NUL_CHARACTER" });
  return v;
}

/**
 * The answer when `request_id` came back with a batch this call did not make (`created` false): a repeated call
 * gets its own batch back (AIP-155); a request_id used by another call is refused, naming the batch it belongs to.
 */
function requestIdInUse(batch: BatchRecord, ownRetryOf: string | null): Error | undefined {
  if (batch.retriedFrom === ownRetryOf) return undefined;
  const whose = batch.retriedFrom ? `the retry of batch ${batch.retriedFrom}` : "a batch made by CreateBatch";
  const wanted = ownRetryOf ? `a retry of batch ${ownRetryOf}` : "a batch made by CreateBatch";
  return alreadyExists({
    field: "request_id",
    description: `expected a request_id not used by another call, got ${JSON.stringify(batch.requestId)}, which names batch ${batch.id} (${whose}), not ${wanted}`,
    reason: "REQUEST_ID_IN_USE",
  });
}

/**
 * The answer when a CreateBatch's request_id names a batch made by a call with other requests or options: refused,
 * where answering with that batch would hand back another call's batch and results as this call's (a nightly job
 * reusing its request_id got yesterday's). A batch stored with no digest (made before migration 007) is taken as a
 * repeat, as it was.
 */
function requestIdReused(batch: BatchRecord, stored: string | null, digest: RequestDigest): Error | undefined {
  if (stored === null || stored === digest.hex()) return undefined;
  return alreadyExists({
    field: "request_id",
    description: `expected the same requests and options as the call that first sent request_id ${JSON.stringify(batch.requestId)} (batch ${batch.id}), got others; use a new request_id for a new batch`,
    reason: "REQUEST_ID_REUSED",
  });
}

/**
 * RetryBatch's requestIdReused: the same request_id and batch with another completion_window (its one option; the
 * requests are the original's) is another call, refused as CreateBatch refuses one, not answered with the first
 * retry, whose window the caller did not ask for.
 */
function retryRequestIdReused(batch: BatchRecord, windowSeconds: number): Error | undefined {
  if (batch.completionWindowSeconds === windowSeconds) return undefined;
  return alreadyExists({
    field: "request_id",
    description: `expected the completion_window of the call that first sent request_id ${JSON.stringify(batch.requestId)} (batch ${batch.id}, ${batch.completionWindowSeconds}s), got ${windowSeconds}s; use a new request_id for a new retry`,
    reason: "REQUEST_ID_REUSED",
  });
}

export function batchServiceImpl(deps: BatchServiceDeps): ServiceImpl<typeof BatchService> {
  const { pool, bulkPool, config, auth } = deps;
  const limits = { maxRequests: config.maxBatchRequests, maxBodyBytes: config.maxBodyBytes, models: config.models };

  return {
    async createBatch(req, ctx) {
      const tenant = await auth.tenantOf(ctx);
      const endpoint = endpointPath(req.endpoint);
      const window = durationSeconds(req.completionWindow);
      const violations: FieldViolation[] = validateBatchOptions({
        metadata: req.metadata, completionWindowSeconds: window, priority: req.priority, requestId: req.requestId,
      });
      // The first requests are checked before the database is touched, so small and plainly broken batches never
      // reach it; the rest are checked as the COPY pulls them, on this core while Postgres inserts on another
      // (see src/store/create-batch.ts). A problem found late rolls the whole batch back: nothing is stored.
      const windowSeconds = Math.round(window ?? defaultCompletionWindowSeconds);
      const digest = req.requestId
        ? new RequestDigest({ endpoint, priority: req.priority, completionWindowSeconds: windowSeconds, metadata: req.metadata })
        : undefined;
      const checker = new RequestChecker(endpoint, toRequestInputs(req.requests), limits, digest);
      const head: ValidRequest[] = [];
      while (!checker.done && checker.checked < checkedUpFront) {
        const row = checker.checkNext();
        if (row) head.push(row);
      }
      if (violations.length > 0 || checker.violations.length > 0) throw invalidArgument([...violations, ...checker.finish()]);
      let result: CreatedBatch;
      try {
        result = await createBatch(checker.done && isBoundedBatch(head) ? pool : bulkPool, {
          id: newBatchId(),
          tenantId: tenant,
          requestId: req.requestId || undefined,
          endpoint: endpoint!,
          model: checker.model!,
          priority: req.priority,
          completionWindowSeconds: windowSeconds,
          metadata: req.metadata,
          items: concat(head, checker.rows()),
          total: req.requests.length,
          requestDigest: digest && (() => digest.hex()),
        });
      } catch (err) {
        if (err instanceof InvalidRequests) throw invalidArgument(err.violations);
        throw err;
      }
      const { batch, created } = result;
      // A repeated request_id returns before the COPY pulled any row; the requests must still be valid, and the
      // digest needs them all.
      if (!result.created && checker.finish().length > 0) throw invalidArgument(checker.violations);
      const inUse = result.created ? undefined : requestIdInUse(batch, null) ?? requestIdReused(batch, result.requestDigest, digest!);
      if (inUse) throw inUse;
      deps.logger.info({ batchId: batch.id, requests: batch.total, model: batch.model, created }, created ? "batch created" : "batch returned for a repeated request_id");
      return toBatch(batch);
    },

    async getBatch(req, ctx) {
      const tenant = await auth.tenantOf(ctx);
      checkBatchId("id", req.id);
      const batch = await getBatch(pool, tenant, req.id);
      if (!batch) throw notFound("batch", req.id);
      return toBatch(batch);
    },

    async listBatches(req, ctx) {
      const tenant = await auth.tenantOf(ctx);
      const violations = listViolations(req);
      if (violations.length > 0) throw invalidArgument(violations);
      const pageSize = req.pageSize === 0 ? 20 : Math.min(req.pageSize, 1000);
      const filterKey = JSON.stringify([req.status, req.metadataKey, req.metadataValue]);
      let beforeSeq: bigint | undefined;
      if (req.pageToken) {
        const decoded = decodePageToken(req.pageToken, filterKey);
        if (decoded === undefined) throw invalidArgument([{ field: "page_token", description: "expected a next_page_token returned by ListBatches", reason: "INVALID_PAGE_TOKEN" }]);
        if (decoded === "mismatch") throw invalidArgument([{ field: "page_token", description: "the token was made for other filters; keep status and metadata filters the same while paging", reason: "PAGE_TOKEN_FILTER_MISMATCH" }]);
        beforeSeq = decoded;
      }
      // One more than asked tells whether there is a next page without a count query.
      const rows = await listBatches(pool, {
        tenantId: tenant, limit: pageSize + 1, beforeSeq, status: storeStatus(req.status),
        metadataKey: req.metadataKey || undefined, metadataValue: req.metadataValue || undefined,
      });
      const page = rows.slice(0, pageSize);
      const next = rows.length > pageSize ? encodePageToken(page[page.length - 1]!.seq, filterKey) : "";
      return { batches: page.map(toBatch), nextPageToken: next };
    },

    async cancelBatch(req, ctx) {
      const tenant = await auth.tenantOf(ctx);
      checkBatchId("id", req.id);
      const outcome = await cancelBatch(bulkPool, tenant, req.id);
      if (outcome === "not_found") throw notFound("batch", req.id);
      if (typeof outcome === "object") {
        throw failedPrecondition(req.id, `batch ${req.id} is already ${outcome.terminal} and cannot be cancelled`);
      }
      deps.logger.info({ batchId: req.id, outcome }, "batch cancel requested");
      return toBatch((await getBatch(pool, tenant, req.id))!);
    },

    streamResults: (req, ctx) => streamResults(deps, req, ctx),
    watchBatch: (req, ctx) => watchBatch(deps, req, ctx),
    runBatch: (req, ctx) => runBatch(deps, req, ctx),

    async retryBatch(req, ctx) {
      const tenant = await auth.tenantOf(ctx);
      checkBatchId("id", req.id);
      const original = await getBatch(pool, tenant, req.id);
      if (!original) throw notFound("batch", req.id);
      if (!isTerminal(original.status)) throw failedPrecondition(req.id, `batch ${req.id} is ${original.status}; only a finished batch can be retried`);
      // As CreateBatch refuses a model no backend serves (UNKNOWN_MODEL): a retry of a batch whose model has since
      // left the configuration was queued anyway, and sat IN_PROGRESS with no worker to run it until it expired.
      const model = config.models.get(original.model);
      if (!model || !model.endpoints.includes(original.endpoint)) {
        const why = model ? `which no longer serves ${original.endpoint}` : `which no backend serves now; configured models: ${[...config.models.keys()].join(", ")}`;
        throw failedPrecondition(req.id, `batch ${req.id} ran on model "${original.model}", ${why}`);
      }
      const window = durationSeconds(req.completionWindow);
      const violations = validateBatchOptions({ metadata: {}, completionWindowSeconds: window, priority: 0, requestId: req.requestId });
      if (violations.length > 0) throw invalidArgument(violations);
      const windowSeconds = Math.round(window ?? original.completionWindowSeconds);
      // The requests are copied inside Postgres: their bodies never pass through this node (createRetryBatch).
      const made = await createRetryBatch(bulkPool, {
        id: newBatchId(),
        tenantId: tenant,
        requestId: req.requestId || undefined,
        endpoint: original.endpoint,
        model: original.model,
        // A RunBatch batch ran at runBatchPriority (1000), above every user batch; its retry is queued work like any
        // other, so it gets the default rather than that.
        priority: original.priority >= minPriority && original.priority <= maxPriority ? original.priority : 0,
        completionWindowSeconds: windowSeconds,
        metadata: original.metadata,
        retriedFrom: original.id,
      });
      if (made === "nothing_to_retry") throw failedPrecondition(req.id, `batch ${req.id} has no failed, expired or cancelled requests to retry`);
      const { batch, created } = made;
      const inUse = created ? undefined : requestIdInUse(batch, original.id) ?? retryRequestIdReused(batch, windowSeconds);
      if (inUse) throw inUse;
      deps.logger.info({ batchId: batch.id, retriedFrom: original.id, requests: batch.total }, "batch retried");
      return toBatch(batch);
    },

    estimateBatch: async (req, ctx) => {
      await auth.tenantOf(ctx);
      return estimateBatch(config, req);
    },
  };
}
