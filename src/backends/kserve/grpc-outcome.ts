/**
 * A failed gRPC call → what the dispatcher's retry table understands: an HTTP-like reply when the server
 * answered with a status, a TransportError when no answer came back (UNAVAILABLE, DEADLINE_EXCEEDED, our cancel).
 */
import { status as Status, type ServiceError } from "@grpc/grpc-js";
import { TransportError, type InferenceReply } from "../backend.ts";

/** grpc-gateway's HTTPStatusFromCode (runtime/errors.go), the usual gRPC → HTTP table. */
const httpStatusOf: Partial<Record<Status, number>> = {
  [Status.UNKNOWN]: 500,
  [Status.INVALID_ARGUMENT]: 400,
  [Status.NOT_FOUND]: 404,
  [Status.ALREADY_EXISTS]: 409,
  [Status.PERMISSION_DENIED]: 403,
  [Status.UNAUTHENTICATED]: 401,
  [Status.RESOURCE_EXHAUSTED]: 429,
  [Status.FAILED_PRECONDITION]: 400,
  [Status.ABORTED]: 409,
  [Status.OUT_OF_RANGE]: 400,
  [Status.UNIMPLEMENTED]: 501,
  [Status.INTERNAL]: 500,
  [Status.DATA_LOSS]: 500,
};

/**
 * grpc-js reports a failed connect as UNAVAILABLE "No connection established. Last error: connect ECONNREFUSED …"
 * (or a resolver failure); anything else UNAVAILABLE means the connection went away mid-call.
 */
const connectFailure = /No connection established|ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|Name resolution failed|Failed to connect/i;

/**
 * `cancelledByUs` is true when our AbortSignal fired or close() cancelled the call: grpc-js then reports
 * CANCELLED "Cancelled on client". `maxReceiveBytes` is the channel's grpc.max_receive_message_length.
 */
export function outcomeOfGrpcError(error: ServiceError, requestId: string, cancelledByUs: boolean, maxReceiveBytes = 64 * 1024 * 1024): InferenceReply | TransportError {
  const details = error.details || error.message;
  switch (error.code) {
    case Status.CANCELLED:
      return cancelledByUs
        ? new TransportError("aborted", "ModelInfer cancelled", { cause: error })
        : new TransportError("connection_reset", `server cancelled ModelInfer: ${details}`, { cause: error });
    case Status.UNAVAILABLE:
      return new TransportError(connectFailure.test(details) ? "connection_refused" : "connection_reset", details, { cause: error });
    case Status.DEADLINE_EXCEEDED:
      return new TransportError("timeout", details, { cause: error });
  }
  // RESOURCE_EXHAUSTED "Received message larger than max (<size> vs <limit>)" is not a server shedding load, and
  // the same request gets it again: grpc-js raises it itself for an answer over our limit (response_too_large, as
  // the OpenAI backend cuts one off), and a server for a request over its own (413).
  const sizeLimit = error.code === Status.RESOURCE_EXHAUSTED && /larger than max/i.test(details);
  if (sizeLimit && details.includes(`vs ${maxReceiveBytes})`)) {
    return new TransportError("response_too_large", `the ModelInfer answer is longer than ${maxReceiveBytes} bytes (max_response_bytes): ${details}`, { cause: error });
  }
  const status = sizeLimit ? 413 : (httpStatusOf[error.code as Status] ?? 500);
  const code = Status[error.code] ?? String(error.code);
  const type = status >= 500 ? "server_error" : status === 429 ? "rate_limit_error" : "invalid_request_error";
  const reply: { status: number; body: string; requestId: string; retryAfterMs?: number; retryable?: false } = {
    status,
    body: JSON.stringify({ error: { message: details, type, code } }),
    requestId,
  };
  const pushback = pushbackOf(error);
  if (pushback === "stop") reply.retryable = false;
  else if (pushback !== undefined) reply.retryAfterMs = pushback;
  return reply;
}

/**
 * gRFC A6 server pushback: trailer `grpc-retry-pushback-ms`, a non-negative integer of milliseconds to wait, or a
 * negative one, which means "do not retry" ("stop"): a server shedding load that way was retried with backoff up to
 * max_attempts. Anything else (absent, not an integer) leaves the retry table to decide.
 */
function pushbackOf(error: ServiceError): number | "stop" | undefined {
  const value = error.metadata?.get("grpc-retry-pushback-ms")[0];
  if (typeof value !== "string" || !/^-?\d+$/.test(value)) return undefined;
  return value.startsWith("-") ? "stop" : Number(value);
}
