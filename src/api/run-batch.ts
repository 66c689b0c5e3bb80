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
import { cancelBatch, createBatch, getBatch, getResults, type ResultRecord } from "../store/index.ts";
import type { BatchServiceDeps } from "./batch-service.ts";
import { toRequestInputs } from "./batch-service.ts";
import { invalidArgument } from "./errors.ts";
import { endpointPath, toBatch, toResult } from "./to-proto.ts";

/** Above the -100..100 users may set, so synchronous calls overtake queued batches. */
export const runBatchPriority = 1000;
/**
 * The answer must be on the wire before the client's deadline fires, after the rest of the batch is cancelled: stop
 * waiting for results a tenth of the deadline early, at least 150 ms and at most 1 s (a quarter of one under 600 ms).
 * 150 ms alone was too little once in CI, with other tests' batches writing to the same disk.
 */
function stopWaitingMs(timeoutMs: number): number {
  return Math.min(timeoutMs / 4, Math.max(150, Math.min(1_000, timeoutMs / 10)));
}
// If the cancel's commit is still waiting (on the disk, on a lock) this close to the deadline, answer without it.
const answerMarginMs = 30;
// Without a deadline a RunBatch still ends: its batch expires after this window.
const runBatchWindowSeconds = 3600;

export async function runBatch(deps: BatchServiceDeps, req: RunBatchRequest, ctx: HandlerContext): Promise<RunBatchResponse> {
  const tenant = await deps.auth.tenantOf(ctx);
  const started = Date.now();
  const timeoutMs = ctx.timeoutMs();
  const deadline = timeoutMs === undefined ? Infinity : started + timeoutMs - stopWaitingMs(timeoutMs);
  const answerBy = timeoutMs === undefined ? Infinity : started + timeoutMs - Math.min(answerMarginMs, timeoutMs / 8);
  const endpoint = endpointPath(req.endpoint);
  const violations = validateBatchOptions({ metadata: req.metadata, completionWindowSeconds: undefined, priority: 0, requestId: "" });
  const checked = validateRequests(endpoint, toRequestInputs(req.requests),
    { maxRequests: deps.config.runBatchMaxRequests, maxBodyBytes: deps.config.maxBodyBytes, models: deps.config.models });
  if (!checked.ok) violations.push(...checked.violations);
  if (violations.length > 0 || !checked.ok) throw invalidArgument(violations);
  const { batch } = await createBatch(deps.pool, {
    id: newBatchId(), tenantId: tenant, endpoint: endpoint!, model: checked.model, priority: runBatchPriority,
    completionWindowSeconds: runBatchWindowSeconds, metadata: req.metadata, items: checked.requests,
  });
  const byIdx = new Map<number, ResultRecord>();
  let after = 0n;
  let seen = batch;
  for (;;) {
    seen = (await getBatch(deps.pool, tenant, batch.id))!;
    const status = seen.status;
    for (;;) {
      const rows = await getResults(deps.pool, batch.id, after, 1000);
      for (const r of rows) byIdx.set(r.idx, r);
      if (rows.length > 0) after = rows[rows.length - 1]!.seq;
      if (rows.length < 1000) break;
    }
    // All results in is not enough: wait the few ms until the batch is COMPLETED so the answer shows it.
    if (isTerminal(status)) break;
    const left = deadline - Date.now();
    if (left <= 0 || ctx.signal.aborted) break;
    await deps.events.wait(batch.id, Math.min(left, 1_000), ctx.signal);
  }
  const unfinished = byIdx.size < checked.requests.length;
  const closing = (async () => {
    // Nobody will read the rest: stop spending backend capacity on it.
    if (unfinished) await cancelBatch(deps.pool, tenant, batch.id);
    return (await getBatch(deps.pool, tenant, batch.id))!;
  })();
  // Answered without it, the cancel still commits; a failure is only logged (the batch then expires in an hour).
  closing.catch((err) => deps.logger.warn({ err: (err as Error).message, batchId: batch.id }, "RunBatch could not cancel its unfinished requests"));
  const final = (await settledBefore(closing, answerBy)) ?? seen;
  const results: Result[] = checked.requests.map((r, idx) => {
    const row = byIdx.get(idx);
    if (row && row.errorCode !== "batch_cancelled") return toResult(batch.id, row, req.rawJson);
    return create(ResultSchema, {
      id: `res_${batch.id.slice(6)}_${idx}`, customId: r.customId, index: BigInt(idx), attempts: row?.attempts ?? 0,
      error: { code: "deadline_exceeded", message: "The call's deadline passed before this request finished.", statusCode: 0 },
    });
  });
  return create(RunBatchResponseSchema, { batch: toBatch(final), results });
}

/** What `work` resolves to if that happens before `time` (epoch ms), else undefined; a rejection also gives undefined. */
async function settledBefore<T>(work: Promise<T>, time: number): Promise<T | undefined> {
  if (time === Infinity) return work.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(resolve, Math.max(0, time - Date.now()), undefined)));
  try {
    return await Promise.race([work.catch(() => undefined), late]);
  } finally {
    clearTimeout(timer);
  }
}
