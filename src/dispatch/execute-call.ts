import { TransportError, type Backend } from "../backends/backend.ts";
import type { ModelConfig } from "../config/config.ts";
import type { ClaimedItem, Completion } from "../store/index.ts";
import type { AbortReason } from "./in-flight.ts";
import { describeFailure, isRetryable, retryDelayMs, type Failure } from "./retry-policy.ts";
import { usageOf } from "./usage.ts";

/**
 * One backend call for one claimed item, and what to write about it. Returns undefined when there is nothing to
 * write: the batch expired while the call ran, and expiry already wrote this item's result.
 */
export async function executeCall(
  backend: Backend,
  model: ModelConfig,
  item: ClaimedItem,
  controller: AbortController,
  random: () => number,
): Promise<Completion | undefined> {
  const timer = setTimeout(() => controller.abort("timeout" satisfies AbortReason), model.timeoutMs);
  let failure: Failure;
  try {
    const reply = await backend.infer({ endpoint: item.endpoint, body: item.body, signal: controller.signal });
    if (reply.status >= 200 && reply.status < 300) {
      const usage = usageOf(reply.body);
      return {
        outcome: "succeeded", batchId: item.batchId, idx: item.idx, attempt: item.attempt, statusCode: reply.status,
        requestId: reply.requestId, body: reply.body, inputTokens: usage.input, outputTokens: usage.output, totalTokens: usage.total,
      };
    }
    failure = { kind: "status", reply };
  } catch (err) {
    const reason = controller.signal.aborted ? (controller.signal.reason as AbortReason) : undefined;
    if (reason === "expired") return undefined;
    if (reason === "cancelled") {
      return { outcome: "cancelled", batchId: item.batchId, idx: item.idx, attempt: item.attempt, statusCode: 0, requestId: "",
        errorCode: "batch_cancelled", errorMessage: "The batch was cancelled while this request ran; the call was aborted." };
    }
    if (reason === "shutdown") {
      // Not the request's fault: run it again elsewhere at once.
      return { outcome: "retry", batchId: item.batchId, idx: item.idx, attempt: item.attempt, statusCode: 0,
        errorCode: "worker_shutdown", errorMessage: "the worker stopped while this request ran", retryDelayMs: 0 };
    }
    if (reason === "timeout") failure = { kind: "transport", error: "timeout", message: `no answer within ${model.timeoutMs} ms` };
    else if (err instanceof TransportError) failure = { kind: "transport", error: err.kind, message: err.message };
    else failure = { kind: "transport", error: "protocol", message: (err as Error)?.message ?? String(err) };
  } finally {
    clearTimeout(timer);
  }
  const error = describeFailure(failure);
  if (isRetryable(failure) && item.attempt < model.maxAttempts) {
    return { outcome: "retry", batchId: item.batchId, idx: item.idx, attempt: item.attempt, statusCode: error.statusCode,
      errorCode: error.code, errorMessage: error.message, retryDelayMs: retryDelayMs(item.attempt, failure, random) };
  }
  const requestId = failure.kind === "status" ? failure.reply.requestId : "";
  return { outcome: "failed", batchId: item.batchId, idx: item.idx, attempt: item.attempt, statusCode: error.statusCode,
    requestId, errorCode: error.code, errorMessage: error.message };
}
