import { TransportError, type TransportErrorKind } from "../backend.ts";

/**
 * The one table from Node/undici/nghttp2 error codes to TransportErrorKind. What is retried is decided by the
 * dispatcher (src/dispatch/retry-policy.ts); this file only says what happened.
 */
const kindByCode: Readonly<Record<string, TransportErrorKind>> = {
  // Could not connect at all: nothing was sent, so another replica can take the call.
  ECONNREFUSED: "connection_refused",
  ENOTFOUND: "connection_refused",
  EAI_AGAIN: "connection_refused",
  EHOSTUNREACH: "connection_refused",
  ENETUNREACH: "connection_refused",
  EADDRNOTAVAIL: "connection_refused",
  // A TLS peer we cannot trust is a connect failure too.
  DEPTH_ZERO_SELF_SIGNED_CERT: "connection_refused",
  SELF_SIGNED_CERT_IN_CHAIN: "connection_refused",
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "connection_refused",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "connection_refused",
  CERT_HAS_EXPIRED: "connection_refused",
  ERR_TLS_CERT_ALTNAME_INVALID: "connection_refused",
  ERR_SSL_WRONG_VERSION_NUMBER: "connection_refused",
  // Deadlines of the transport itself.
  ETIMEDOUT: "timeout",
  UND_ERR_CONNECT_TIMEOUT: "timeout",
  UND_ERR_HEADERS_TIMEOUT: "timeout",
  UND_ERR_BODY_TIMEOUT: "timeout",
  // The connection or stream went away mid-call.
  ECONNRESET: "connection_reset",
  EPIPE: "connection_reset",
  UND_ERR_SOCKET: "connection_reset",
  UND_ERR_CLOSED: "connection_reset",
  ERR_STREAM_PREMATURE_CLOSE: "connection_reset",
  ERR_HTTP2_STREAM_ERROR: "connection_reset",
  ERR_HTTP2_STREAM_CANCEL: "connection_reset",
  ERR_HTTP2_INVALID_SESSION: "connection_reset",
  // The server is draining: GOAWAY (RFC 9113 §6.8), or a session closed with an error code, which arrives as one.
  ERR_HTTP2_GOAWAY_SESSION: "goaway",
  ERR_HTTP2_SESSION_ERROR: "goaway",
  // The session has used its last stream id: the stream was never sent, and a fresh session can carry it.
  ERR_HTTP2_OUT_OF_STREAMS: "goaway",
  // undici refused to send the request as built (an invalid header value): nothing was sent, and the same
  // request would be refused again.
  UND_ERR_INVALID_ARG: "invalid_request",
  // Garbled answers.
  ERR_HTTP2_ERROR: "protocol",
  ERR_HTTP2_PROTOCOL_ERROR: "protocol",
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: "protocol",
  UND_ERR_RESPONSE_EXCEEDED_MAX_SIZE: "protocol",
};

/** nghttp2 REFUSED_STREAM (RFC 9113 §8.7): the server did not process the stream, as after a GOAWAY. */
const NGHTTP2_REFUSED_STREAM = 7;

/** RST_STREAM and GOAWAY error codes by number (RFC 9113 §7), for messages. */
const h2ErrorNames = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED",
  "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY",
  "HTTP_1_1_REQUIRED"];

/** "CANCEL" for 8; the number itself for a code RFC 9113 does not name. */
export function h2ErrorName(code: number): string {
  return h2ErrorNames[code] ?? String(code);
}

export function kindOf(err: unknown, rstCode?: number): TransportErrorKind {
  if (err instanceof TransportError) return err.kind;
  if (rstCode === NGHTTP2_REFUSED_STREAM) return "goaway";
  const e = err as { code?: unknown; name?: unknown; message?: unknown } | null;
  if (e?.name === "AbortError") return "aborted";
  const code = typeof e?.code === "string" ? e.code : "";
  if (code.startsWith("HPE_")) return "protocol"; // llhttp parse errors
  if (code === "ERR_HTTP2_STREAM_ERROR" && String(e?.message).includes("REFUSED_STREAM")) return "goaway";
  // Unknown failures are treated as a dropped connection: retryable, and bounded by the dispatcher's attempts.
  return kindByCode[code] ?? "connection_reset";
}

/**
 * Wraps `err` into a TransportError. `where` names the call ("openai:m POST h2c://host:port/v1/..."), never
 * headers, so an API key cannot end up in the message. When our signal fired, the kind is "aborted" whatever
 * the underlying error was; `kind` overrides the table when the caller knows better (a connect failure).
 */
export function toTransportError(
  err: unknown,
  where: string,
  o: {
    readonly signal?: AbortSignal;
    readonly rstCode?: number;
    readonly kind?: TransportErrorKind;
    /** The caller knows the connection could not be established (a refused or timed-out connect). */
    readonly connectFailed?: boolean;
  } = {},
): TransportError {
  if (err instanceof TransportError) return err;
  const kind = o.signal?.aborted ? "aborted" : (o.kind ?? kindOf(err, o.rstCode));
  const detail = err instanceof Error ? err.message : String(err);
  const code = (err as { code?: unknown } | null)?.code;
  const suffix = typeof code === "string" && !detail.includes(code) ? ` (${code})` : "";
  // undici's connect deadline (TCP and TLS) is the one "timeout" that says nothing was sent.
  const connectFailed = o.connectFailed ?? (kind === "connection_refused" || code === "UND_ERR_CONNECT_TIMEOUT");
  return new TransportError(kind, `${where}: ${kind}: ${detail}${suffix}`, { cause: err, connectFailed });
}
