/**
 * RunBatch: a small batch answered in the same call. It goes through the same queue, limits and retries as any
 * batch, at a priority above every user batch, and honours the call's deadline: what has not finished shortly
 * before it comes back as `deadline_exceeded` errors and the rest of the batch is cancelled, so nothing hangs.
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { ResultSchema, type Result } from "../../gen/lote/v1/batch_pb.ts";
import { RunBatchResponseSchema, type RunBatchRequest, type RunBatchResponse } from "../../gen/lote/v1/batch_service_pb.ts";
import { isTerminal } from "../batch/batch-status.ts";
import { newBatchId } from "../batch/ids.ts";
import { validateBatchOptions, validateRequests } from "../batch/validate-requests.ts";
import { cancelBatch, createBatch, getBatch, getResults, isBoundedBatch, type ResultRecord } from "../store/index.ts";
import type { BatchServiceDeps } from "./batch-service.ts";
import { toRequestInputs } from "./batch-service.ts";
import { invalidArgument } from "./errors.ts";
import { endpointPath, toBatch, toResult } from "./to-proto.ts";

/** Above the -100..100 users may set, so synchronous calls overtake queued batches. */
export const runBatchPriority = 1000;
/**
 * The answer must be on the wire before the client's deadline fires, after the rest of the batch is cancelled:
 * stop waiting for results a tenth of the deadline early, at least 150 ms and at most 1 s (a quarter of a deadline
 * under 600 ms), and answer half of that early at the latest, whatever Postgres is doing. 150 ms for both was too
 * little once in CI: the cancel's commit stalled with other tests' batches writing to the same disk.
 */
function stopWaitingMs(timeoutMs: number): number {
  return Math.min(timeoutMs / 4, Math.max(150, Math.min(1_000, timeoutMs / 10)));
}
// Without a deadline a RunBatch still ends: its batch expires after this window.
const runBatchWindowSeconds = 3600;

export async function runBatch(deps: BatchServiceDeps, req: RunBatchRequest, ctx: HandlerContext): Promise<RunBatchResponse> {
  const tenant = await deps.auth.tenantOf(ctx);
  const started = Date.now();
  const timeoutMs = ctx.timeoutMs();
  const margin = timeoutMs === undefined ? 0 : stopWaitingMs(timeoutMs);
  const stopWaitingAt = timeoutMs === undefined ? Infinity : started + timeoutMs - margin;
  const answerBy = timeoutMs === undefined ? Infinity : started + timeoutMs - margin / 2;
  const endpoint = endpointPath(req.endpoint);
  const violations = validateBatchOptions({ metadata: req.metadata, completionWindowSeconds: undefined, priority: 0, requestId: "" });
  const checked = validateRequests(endpoint, toRequestInputs(req.requests),
    { maxRequests: deps.config.runBatchMaxRequests, maxBodyBytes: deps.config.maxBodyBytes, models: deps.config.models });
  if (!checked.ok) violations.push(...checked.violations);
  if (violations.length > 0 || !checked.ok) throw invalidArgument(violations);
  // At most 1,000 requests (run_batch_max_requests): its cancel is as bounded as its insert.
  const db = isBoundedBatch(checked.requests) ? deps.pool : deps.bulkPool;
  const { batch } = await createBatch(db, {
    id: newBatchId(), tenantId: tenant, endpoint: endpoint!, model: checked.model, priority: runBatchPriority,
    completionWindowSeconds: runBatchWindowSeconds, metadata: req.metadata, items: checked.requests,
  });
  const byIdx = new Map<number, ResultRecord>();
  let seen = batch;
  let answered = false;
  // Before the first read: the batch's COMPLETED may be announced while a read is under way (BatchEvents.subscribe).
  const wakeups = deps.events.subscribe(batch.id);
  // The reads, then the cancel of what is unfinished. The answer waits for them until answerBy and no longer: a read
  // or the cancel's commit can stall on a lock or a busy disk, and then the work goes on after the answer.
  let after = 0n;
  const readResults = async () => {
    for (;;) {
      const { rows, cutByBytes } = await getResults(deps.pool, batch.id, after, 1000);
      for (const r of rows) byIdx.set(r.idx, r);
      if (rows.length > 0) after = rows[rows.length - 1]!.seq;
      if (rows.length < 1000 && !cutByBytes) return;
    }
  };
  // Why RunBatch itself cancelled the batch, once that cancel has committed: its `batch_cancelled` results are then
  // requests this call gave up on. Unset, any `batch_cancelled` result is a CancelBatch's, and says so.
  let cancelledHere: Unfinished | undefined;
  const cancelUnfinished = (why: Unfinished) => cancelBatch(db, tenant, batch.id).then((outcome) => {
    if (outcome === "cancelling" || outcome === "cancelled") cancelledHere = why;
  }, (err) =>
    deps.logger.warn({ err: (err as Error).message, batchId: batch.id }, "RunBatch could not cancel its unfinished requests"));
  const collecting = (async () => {
    try {
      for (;;) {
        const now = (await getBatch(deps.pool, tenant, batch.id))!;
        await readResults();
        seen = now;
        // All results in is not enough: wait the few ms until the batch is COMPLETED so the answer shows it.
        if (isTerminal(now.status)) break;
        const left = stopWaitingAt - Date.now();
        if (left <= 0 || ctx.signal.aborted) break;
        await wakeups.wait(Math.min(left, deps.config.worker.pollIntervalMs), ctx.signal);
      }
    } catch (err) {
      // The call ends with this error (UNAVAILABLE for a read that timed out) and nobody reads the batch: cancel it
      // too, without holding up the answer. Left alone, its requests ran at runBatchPriority, ahead of every user
      // batch, while the caller, told to retry, ran them again in a new batch.
      void cancelUnfinished("call_ended");
      throw err;
    } finally {
      wakeups.close();
    }
    if (byIdx.size < checked.requests.length) {
      // Nobody will read the rest: stop spending backend capacity on it. If this fails the batch expires in an hour.
      // Before stopWaitingAt, only the caller's going away (its cancel, a dropped connection) ends the wait early.
      await cancelUnfinished(Date.now() < stopWaitingAt ? "call_ended" : "deadline");
      // The batch first, then its results (as above, so every result the batch counts is read): results written
      // since the last read, before the cancel took the batch row lock, are counted by the batch, and without this
      // read the answer called them deadline_exceeded, even in a batch COMPLETED because the cancel found every
      // result in.
      const now = (await getBatch(deps.pool, tenant, batch.id))!;
      await readResults();
      seen = now;
    }
  })();
  collecting.catch((err) => {
    if (answered) deps.logger.warn({ err: (err as Error).message, batchId: batch.id }, "RunBatch failed after its answer");
  });
  await settledBefore(collecting, answerBy);
  answered = true;
  // A request with no result yet was given up on by this call, at its deadline unless the caller went first; a
  // `batch_cancelled` one is too when RunBatch's own cancel wrote it, and otherwise a CancelBatch's, shown as stored.
  // Every `batch_cancelled` result was called deadline_exceeded, after a CancelBatch or in a call with no deadline.
  const givenUp = timeoutMs === undefined || (ctx.signal.aborted && Date.now() < stopWaitingAt) ? "call_ended" : "deadline";
  const results: Result[] = checked.requests.map((r, idx) => {
    const row = byIdx.get(idx);
    if (row && (row.errorCode !== "batch_cancelled" || cancelledHere === undefined)) return toResult(batch.id, row, req.rawJson);
    return create(ResultSchema, {
      id: `res_${batch.id.slice(6)}_${idx}`, customId: r.customId, index: BigInt(idx), attempts: row?.attempts ?? 0,
      error: { ...unfinishedErrors[row ? cancelledHere! : givenUp], statusCode: 0 },
    });
  });
  return create(RunBatchResponseSchema, { batch: toBatch(seen), results });
}

/** Why a request has no result of its own in the answer. */
type Unfinished = "deadline" | "call_ended";
const unfinishedErrors: Record<Unfinished, { code: string; message: string }> = {
  deadline: { code: "deadline_exceeded", message: "The call's deadline passed before this request finished." },
  call_ended: { code: "cancelled", message: "The call was cancelled before this request finished." },
};

/** Resolves when `work` does or when `time` (epoch ms) comes, whichever is first; rejects if `work` rejects first. */
async function settledBefore(work: Promise<void>, time: number): Promise<void> {
  if (time === Infinity) return work;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, time - Date.now()))));
  try {
    await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}
