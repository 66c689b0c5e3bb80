/** StreamResults and WatchBatch: server streams that follow a batch while it runs. */
import type { HandlerContext } from "@connectrpc/connect";
import { ResultFilter, type StreamResultsRequest, type StreamResultsResponse, type WatchBatchRequest, type WatchBatchResponse } from "../../gen/lote/v1/batch_service_pb.ts";
import { isTerminal } from "../batch/batch-status.ts";
import { getBatch, getResults, type BatchRecord } from "../store/index.ts";
import { checkBatchId, type BatchServiceDeps } from "./batch-service.ts";
import { decodeCursor } from "./cursor.ts";
import { invalidArgument, notFound } from "./errors.ts";
import { toBatch, toResult } from "./to-proto.ts";

// Rows per read: large enough to amortise the round trip (~0.2 ms), small enough to keep a slow reader's memory flat
// (and at most 4 MiB of answers per read, getResults).
const pageSize = 500;

export async function* streamResults(deps: BatchServiceDeps, req: StreamResultsRequest, ctx: HandlerContext): AsyncGenerator<StreamResultsResponse> {
  const tenant = await deps.auth.tenantOf(ctx);
  checkBatchId("batch_id", req.batchId);
  const cursor = decodeCursor(req.after, req.batchId);
  if (cursor === undefined) throw invalidArgument([{ field: "after", description: "expected a cursor returned with a result, or empty", reason: "INVALID_CURSOR" }]);
  if (cursor === "other_batch") {
    throw invalidArgument([{ field: "after", description: `expected a cursor returned with a result of batch ${req.batchId}, got one of another batch`, reason: "CURSOR_OF_OTHER_BATCH" }]);
  }
  // A value this server does not know (from a newer proto) is refused, never read as UNSPECIFIED: that streamed every
  // result to a caller who asked for some of them, as ListBatches' status filter once listed everything.
  const filter = req.filter === ResultFilter.SUCCEEDED ? "succeeded" : req.filter === ResultFilter.FAILED ? "failed"
    : req.filter === ResultFilter.UNSPECIFIED ? "all" : undefined;
  if (filter === undefined) {
    throw invalidArgument([{ field: "filter", description: `expected RESULT_FILTER_UNSPECIFIED (every result), RESULT_FILTER_SUCCEEDED or RESULT_FILTER_FAILED, got ${req.filter}`, reason: "UNKNOWN_FILTER" }]);
  }
  let after = cursor;
  const first = await getBatch(deps.pool, tenant, req.batchId);
  if (!first) throw notFound("batch", req.batchId);
  // Before the first read: the batch's end may be announced while a read is under way (see BatchEvents.subscribe).
  const wakeups = req.follow ? deps.events.subscribe(req.batchId) : undefined;
  try {
    while (!ctx.signal.aborted) {
      // Read the status BEFORE the results: if the batch was already terminal, every result is committed and an
      // empty read means the stream is complete.
      const status = (await getBatch(deps.pool, tenant, req.batchId))?.status;
      const { rows, cutByBytes } = await getResults(deps.pool, req.batchId, after, pageSize, filter);
      for (const row of rows) {
        yield { $typeName: "lote.v1.StreamResultsResponse", result: toResult(req.batchId, row, req.rawJson) };
        after = row.seq;
      }
      if (rows.length === pageSize || cutByBytes) continue;
      if (!wakeups || !status || isTerminal(status)) return;
      // Notifications normally wake a stream within milliseconds; without one (lost while the listener reconnected),
      // look again after the node's poll interval (worker.poll_interval_ms, 1 s by default), as its claims do.
      await wakeups.wait(deps.config.worker.pollIntervalMs, ctx.signal);
    }
  } finally {
    wakeups?.close();
  }
}

function fingerprint(b: BatchRecord): string {
  return `${b.status}:${b.completed}:${b.failed}:${b.cancelled}:${b.expired}:${b.running}:${b.totalTokens}`;
}

export async function* watchBatch(deps: BatchServiceDeps, req: WatchBatchRequest, ctx: HandlerContext): AsyncGenerator<WatchBatchResponse> {
  const tenant = await deps.auth.tenantOf(ctx);
  checkBatchId("id", req.id);
  let last = "";
  const wakeups = deps.events.subscribe(req.id);
  try {
    while (!ctx.signal.aborted) {
      const batch = await getBatch(deps.pool, tenant, req.id);
      if (!batch) throw notFound("batch", req.id);
      const fp = fingerprint(batch);
      if (fp !== last) {
        yield { $typeName: "lote.v1.WatchBatchResponse", batch: toBatch(batch) };
        last = fp;
      }
      if (isTerminal(batch.status)) return;
      await wakeups.wait(deps.config.worker.pollIntervalMs, ctx.signal);
    }
  } finally {
    wakeups.close();
  }
}
