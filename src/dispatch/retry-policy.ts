/**
 * The one table that says what is retried. A backend reports either an HTTP-like status or a transport error
 * kind; this file turns that into "retry after N ms" or "fail with this OpenAI-style error".
 */
import type { InferenceReply, TransportErrorKind } from "../backends/backend.ts";

export type Failure =
  | { readonly kind: "status"; readonly reply: InferenceReply }
  | { readonly kind: "transport"; readonly error: TransportErrorKind; readonly message: string };

/**
 * Retryable statuses: 408 request timeout, 409 conflict (vLLM/TGI under load), 425, 429 rate limit, any 5xx but
 * 501 Not Implemented and 505 HTTP Version Not Supported, which the same request gets again (RFC 9110 §15.6.2,
 * §15.6.6): llama.cpp's server answers 501 for an endpoint it was not started for (embeddings without
 * --embeddings), and each request was called max_attempts times, with backoff, before it failed.
 */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 409 || status === 425 || status === 429 || (status >= 500 && status !== 501 && status !== 505);
}

/** Retryable transport failures. `aborted` is ours (cancel/expiry/timeout) and decided by the caller. */
export const retryableTransport: Readonly<Record<TransportErrorKind, boolean>> = {
  aborted: false,
  timeout: true,
  connection_reset: true,
  connection_refused: true,
  goaway: true,
  // A garbled answer is more often a proxy or a dying replica than a bad request.
  protocol: true,
  // The same request would get the same answer.
  response_too_large: false,
  // The same request would be refused again before it is sent.
  invalid_request: false,
};

/** A status answer whose backend said not to retry it (`InferenceReply.retryable`) is not, whatever its status. */
export function isRetryable(f: Failure): boolean {
  return f.kind === "status" ? f.reply.retryable !== false && isRetryableStatus(f.reply.status) : retryableTransport[f.error];
}

export interface BackoffOptions {
  /** First retry delay. Default 1,000 ms. */
  readonly baseMs: number;
  /** Longest delay between attempts. Default 60,000 ms. */
  readonly capMs: number;
  /** Longest Retry-After honoured; a server asking for longer gets this. Default 600,000 ms. */
  readonly maxRetryAfterMs: number;
}

export const defaultBackoff: BackoffOptions = { baseMs: 1_000, capMs: 60_000, maxRetryAfterMs: 600_000 };

/**
 * Exponential backoff with equal jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a wait between
 * half and all of the ceiling (base × 2^(attempt−1), capped), so a retry never comes back at once the way full
 * jitter's zero can, while the random half still spreads a thundering herd of retries. A Retry-After from the
 * server wins: we wait at least that long, plus up to 10% jitter so every node does not come back in the same
 * millisecond.
 */
export function retryDelayMs(attempt: number, f: Failure, random: () => number, o: BackoffOptions = defaultBackoff): number {
  const retryAfter = f.kind === "status" ? f.reply.retryAfterMs : undefined;
  if (retryAfter !== undefined && retryAfter >= 0) {
    const wait = Math.min(retryAfter, o.maxRetryAfterMs);
    return Math.round(wait + wait * 0.1 * random());
  }
  const ceiling = Math.min(o.capMs, o.baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}

const statusCodes: Record<number, string> = {
  400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "timeout", 413: "request_too_large",
  422: "invalid_request", 429: "rate_limited",
};

/** The OpenAI-style error kept for an item: the backend's own code/message when it sent one. */
export function describeFailure(f: Failure): { code: string; message: string; statusCode: number } {
  if (f.kind === "transport") return { code: f.error === "protocol" ? "protocol_error" : f.error, message: f.message, statusCode: 0 };
  const status = f.reply.status;
  let code = statusCodes[status] ?? (status >= 500 ? "server_error" : `http_${status}`);
  let message = f.reply.body.slice(0, 1000);
  try {
    const err = JSON.parse(f.reply.body)?.error;
    if (err && typeof err === "object") {
      if (typeof err.message === "string") message = err.message.slice(0, 1000);
      if (typeof err.code === "string" && err.code) code = err.code;
    } else if (typeof err === "string") message = err.slice(0, 1000);
  } catch {
    // Not JSON: keep the text.
  }
  return { code, message: message || `backend answered HTTP ${status}`, statusCode: status };
}
