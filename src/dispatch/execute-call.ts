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
    // Aborted already when its batch was heard cancelled or expired before the claim's answer came (InFlight.add).
    controller.signal.throwIfAborted();
    const reply = await backend.infer({ endpoint: item.endpoint, body: item.body, signal: controller.signal });
    if (reply.status < 200 || reply.status >= 300) {
      failure = { kind: "status", reply };
    } else if (!isJsonObjectText(reply.body)) {
      failure = { kind: "transport", error: "protocol",
        message: `the backend answered HTTP ${reply.status} with a body that is not a JSON object: ${JSON.stringify(reply.body.slice(0, 200))}` };
    } else {
      const usage = usageOf(reply.body);
      return {
        outcome: "succeeded", batchId: item.batchId, idx: item.idx, attempt: item.attempt, statusCode: reply.status,
        requestId: reply.requestId, body: reply.body, inputTokens: usage.input, outputTokens: usage.output, totalTokens: usage.total,
      };
    }
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

/**
 * Whether a 2xx answer can be an OpenAI-compatible one: every such endpoint answers a JSON object. A proxy or web
 * server in the backend's place (an HTML page, "OK", an empty body) answered 200 and was stored as a success, which
 * every reader of the results then failed to parse. It is a protocol error instead, retried like a garbled answer.
 * The first and last characters only, not JSON.parse: parsing every answer was 2.5% of a worker's time at zero
 * latency (see usage.ts); a body cut short loses its closing brace, and one garbled inside is not looked for.
 */
function isJsonObjectText(body: string): boolean {
  let start = 0;
  let end = body.length - 1;
  while (start <= end && isSpace(body.charCodeAt(start))) start++;
  while (end > start && isSpace(body.charCodeAt(end))) end--;
  return body.charCodeAt(start) === 123 /* { */ && body.charCodeAt(end) === 125 /* } */;
}

function isSpace(c: number): boolean {
  return c === 32 || c === 10 || c === 13 || c === 9;
}
