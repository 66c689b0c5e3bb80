/**
 * The one interface every model backend implements: the OpenAI-compatible HTTP client, the KServe v2 gRPC
 * client and the built-in models. The dispatcher owns retries, timeouts and limits; a backend only makes one
 * call and reports what happened, so the retry decision lives in one table (src/dispatch/retry-policy.ts).
 */

/** OpenAI paths lote accepts; the classification endpoint follows vLLM's `/classify`. */
export const endpointPaths = [
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/embeddings",
  "/v1/responses",
  "/classify",
] as const;
export type EndpointPath = (typeof endpointPaths)[number];

export interface InferenceCall {
  /** Where the body goes, e.g. "/v1/chat/completions". */
  readonly endpoint: EndpointPath;
  /** The request body exactly as the user gave it: UTF-8 JSON text of an object. Sent unchanged. */
  readonly body: string;
  /**
   * Aborted when the batch is cancelled or expires, or when the per-request timeout fires. A backend MUST
   * abort the underlying stream/request (HTTP/2 RST_STREAM, socket destroy, gRPC cancel) and reject with a
   * TransportError of kind "aborted".
   */
  readonly signal: AbortSignal;
}

export interface InferenceReply {
  /** HTTP status (or the status a non-HTTP backend maps its outcome to: 200 ok, 400 bad input, 503 not ready…). */
  readonly status: number;
  /** Response body as UTF-8 JSON text. For non-2xx, the backend's error body (may be non-JSON text). */
  readonly body: string;
  /** Backend request id (x-request-id header or generated), for tracing. */
  readonly requestId: string;
  /** Parsed Retry-After (seconds or HTTP date) in milliseconds, when the backend sent one. */
  readonly retryAfterMs?: number;
  /**
   * false when the backend said not to retry this answer whatever its status (a gRPC server's negative
   * `grpc-retry-pushback-ms`, gRFC A6): the item fails at once with this answer's error. Absent: the status decides.
   */
  readonly retryable?: false;
}

/** What went wrong when no answer came back. The dispatcher's retry table keys on `kind`. */
export type TransportErrorKind =
  | "aborted" // our signal fired (cancel, expiry or timeout); the dispatcher knows which
  | "timeout" // the backend's own connect/read deadline
  | "connection_reset" // ECONNRESET, EPIPE, socket closed mid-response
  | "connection_refused" // ECONNREFUSED, ENOTFOUND, connect failure
  | "goaway" // HTTP/2 GOAWAY / REFUSED_STREAM before the answer
  | "protocol" // malformed answer
  | "invalid_request" // the client library refused to send the request as built (e.g. an invalid header value); nothing was sent
  | "response_too_large"; // the answer was longer than the backend allows (max_response_bytes); the call was cut off

export class TransportError extends Error {
  override readonly name = "TransportError";
  /**
   * The connection could not be established (refused, or not done within the connect deadline): nothing of the
   * request was sent, so another replica can take it at once.
   */
  readonly connectFailed: boolean;
  constructor(
    readonly kind: TransportErrorKind,
    message: string,
    options?: { cause?: unknown; connectFailed?: boolean },
  ) {
    super(message, options);
    this.connectFailed = options?.connectFailed ?? kind === "connection_refused";
  }
}

export interface Backend {
  /** For logs and metrics, e.g. "openai:vllm-a". Never contains a secret. */
  readonly name: string;
  /**
   * Makes one call. Resolves with any answer the backend gave (2xx or not); rejects only with a
   * TransportError when there was no answer.
   */
  infer(call: InferenceCall): Promise<InferenceReply>;
  /** True when the backend can take calls (connect/ServerReady/ModelReady). */
  ready(): Promise<boolean>;
  /** Closes pooled connections. Calls in flight are aborted. */
  close(): Promise<void>;
}
