/** Options of the OpenAI-compatible HTTP backend, their defaults, and their loud validation. */

export type HttpProtocol = "auto" | "http1" | "h2" | "h2c";

export interface BackendTlsOptions {
  /**
   * The CA certificates (PEM) to trust instead of Node's bundle, e.g. a self-signed test CA or a company CA: as Node's
   * `ca` option, they replace the public roots, so a model's replicas all chain to these. Default: Node's bundle.
   */
  readonly ca?: string | Buffer | readonly (string | Buffer)[];
  /** Default true. Turning it off accepts any certificate; never do that outside a test. */
  readonly rejectUnauthorized?: boolean;
  /** SNI and certificate name to check. Default: the URL's host. */
  readonly servername?: string;
}

export interface OpenAIBackendOptions {
  /** For logs and metrics, e.g. "openai:vllm-a". Must not contain a secret. */
  readonly name: string;
  /**
   * One base URL per replica: `http://` (HTTP/1.1 keep-alive), `h2c://` (HTTP/2 prior knowledge, cleartext) or
   * `https://` (TLS; HTTP/2 when the server offers h2 in ALPN, else HTTP/1.1). A path prefix is kept; a
   * trailing `/v1`, as OpenAI SDK base URLs have, is dropped because endpoint paths already start with /v1.
   */
  readonly urls: readonly string[];
  /** Sent as `Authorization: Bearer <apiKey>`. The value itself; the config layer reads it from the env. */
  readonly apiKey?: string | undefined;
  /** Overrides what the URL scheme decides. Default "auto". */
  readonly protocol?: HttpProtocol | undefined;
  /**
   * The most calls the caller runs on this backend at once: the model's max_concurrency. Default 64. It is the
   * default of `connectionsPerReplica`, so that any one replica can carry every call (the others ejected, or
   * only one configured).
   */
  readonly maxConcurrency?: number | undefined;
  /**
   * Most connections to one replica, each opened only when the open ones are full: HTTP/1.1 sockets (one call
   * each) or HTTP/2 sessions (each up to the server's SETTINGS_MAX_CONCURRENT_STREAMS). Default `maxConcurrency`.
   */
  readonly connectionsPerReplica?: number | undefined;
  /**
   * HTTP/2: the streams one session carries while the replica may open another, so that calls spread over
   * several sessions. Default 16 (DEFAULT_STREAMS_PER_SESSION says why). Once `connectionsPerReplica` sessions are
   * open, each carries up to the server's SETTINGS_MAX_CONCURRENT_STREAMS.
   */
  readonly streamsPerSession?: number | undefined;
  /** The backend's own deadline per call; fires TransportError "timeout". Default: none — the dispatcher's
   * signal carries the per-request timeout, and one deadline is easier to reason about than two. */
  readonly requestTimeoutMs?: number | undefined;
  /** Deadline to connect (TCP, TLS and, for HTTP/2, the server's SETTINGS). Default 10,000 ms (undici's). */
  readonly connectTimeoutMs?: number | undefined;
  /**
   * Longest answer body read, bytes; a longer one is cut off and fails the call as "response_too_large" (not
   * retried). Default DEFAULT_MAX_RESPONSE_BYTES.
   */
  readonly maxResponseBytes?: number | undefined;
  /** First ejection of a replica whose connection failed; doubles per consecutive failure. Default 1,000 ms. */
  readonly ejectBaseMs?: number | undefined;
  /** Longest ejection. Default 30,000 ms. */
  readonly ejectMaxMs?: number | undefined;
  readonly tls?: BackendTlsOptions | undefined;
  /** Monotonic clock in ms for ejection and HTTP/2 open-pause timing; tests inject one. Default performance.now. */
  readonly now?: (() => number) | undefined;
}

/** How one replica is spoken to. */
export interface ReplicaTarget {
  /** The URL as written minus credentials, query and trailing slash: used in messages and state. */
  readonly display: string;
  /** "http://host:port" or "https://host:port": what undici and http2.connect take. */
  readonly origin: string;
  readonly hostname: string;
  readonly port: number;
  readonly secure: boolean;
  /** Prefix before the endpoint path, e.g. "" or "/openai". */
  readonly basePath: string;
  /** "alpn": https with protocol "auto", decided by the server's ALPN answer on first connect. */
  readonly wire: "http1" | "h2" | "alpn";
}

/**
 * 256 calls of 50 ms from one process to one h2c replica (the simulator) reach 0.87-0.88 of the 5,120/s they
 * allow over one session, 0.92-0.93 over sessions of 16 streams and 0.90-0.92 over sessions of 32 (three
 * interleaved rounds of `npm run bench:h2-sessions`, 2026-12-06; BENCHMARKS.md). lote's own dispatch rate did
 * not move with it (its claims hold it back), graphile-worker's did. And a server of several processes behind one
 * port (vLLM's --api-server-count, gunicorn workers) balances connections, not streams: one session would keep
 * every call on one process.
 */
export const DEFAULT_STREAMS_PER_SESSION = 16;

/**
 * 64 MiB. A chat answer is a few KB; the largest answers are embeddings, ~20 bytes per float as JSON: 1,000 inputs
 * of 3,072 dimensions is ~60 MB (a fifth of that with encoding_format "base64"). Beyond it an answer is runaway
 * output or a misbehaving server, and one would take a worker's memory: the node holds each answer whole until its
 * result is written.
 */
export const DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

function fail(field: string, expected: string, got: unknown): never {
  throw new TypeError(`Expected \`${field}\` to be ${expected}, got ${JSON.stringify(got) ?? String(got)}`);
}

function positiveInt(field: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isInteger(v) || v < 1) fail(field, "an integer >= 1", v);
  return v;
}

export function parseTarget(raw: string, protocol: HttpProtocol, index: number): ReplicaTarget {
  const field = `urls[${index}]`;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return fail(field, "an absolute http://, https:// or h2c:// URL", raw);
  }
  if (u.username || u.password) {
    // Not echoed: the URL holds a credential. Keys belong in `apiKey`.
    throw new TypeError(`Expected \`${field}\` to have no user:password part (pass the key as \`apiKey\`), got a URL with credentials`);
  }
  const scheme = u.protocol;
  if (scheme !== "http:" && scheme !== "https:" && scheme !== "h2c:") fail(field, "an http://, https:// or h2c:// URL", raw);
  const secure = scheme === "https:";
  if (secure && protocol === "h2c") fail("protocol", `"auto", "http1" or "h2" for the https:// URL ${field} (h2c is cleartext)`, protocol);
  // auto: the scheme decides (http → HTTP/1.1, h2c → HTTP/2 cleartext, https → ALPN). An explicit protocol
  // wins: "h2"/"h2c" on an http:// URL means prior knowledge, "http1" on h2c:// means plain HTTP/1.1.
  let wire: ReplicaTarget["wire"];
  if (protocol === "http1") wire = "http1";
  else if (secure) wire = protocol === "h2" ? "h2" : "alpn";
  else wire = scheme === "h2c:" || protocol !== "auto" ? "h2" : "http1";
  const port = u.port ? Number(u.port) : secure ? 443 : 80;
  const hostname = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
  const basePath = u.pathname.replace(/\/+$/, "").replace(/\/v1$/, "");
  return {
    display: `${scheme}//${u.host}${basePath}`,
    origin: `${secure ? "https" : "http"}://${u.hostname}:${port}`,
    hostname,
    port,
    secure,
    basePath,
    wire,
  };
}

export interface ResolvedOptions {
  readonly name: string;
  readonly targets: readonly ReplicaTarget[];
  readonly apiKey: string | undefined;
  readonly connectionsPerReplica: number;
  readonly streamsPerSession: number;
  readonly requestTimeoutMs: number | undefined;
  readonly connectTimeoutMs: number;
  readonly maxResponseBytes: number;
  readonly ejectBaseMs: number;
  readonly ejectMaxMs: number;
  readonly tls: BackendTlsOptions | undefined;
  readonly now: () => number;
}

export function resolveOptions(o: OpenAIBackendOptions): ResolvedOptions {
  if (typeof o?.name !== "string" || o.name === "") fail("name", "a non-empty string", o?.name);
  if (!Array.isArray(o.urls) || o.urls.length === 0) fail("urls", "a non-empty array of URLs", o.urls);
  const protocol = o.protocol ?? "auto";
  if (!["auto", "http1", "h2", "h2c"].includes(protocol)) fail("protocol", `"auto", "http1", "h2" or "h2c"`, protocol);
  if (o.apiKey !== undefined && (typeof o.apiKey !== "string" || o.apiKey === "")) {
    // Never echo the value.
    fail("apiKey", "a non-empty string when set", `a ${typeof o.apiKey === "string" ? "empty string" : typeof o.apiKey}`);
  }
  // A key read from a file often ends in a newline. undici refuses such a header (UND_ERR_INVALID_ARG) and, after
  // as many refusals as it has connections, its pool stopped dispatching; node's HTTP/2 client sent it as it was.
  const control = o.apiKey === undefined ? -1 : o.apiKey.search(/[\x00-\x1f\x7f]/);
  if (control >= 0) {
    // Never echo the value: only where the character is.
    throw new TypeError(`Expected \`apiKey\` to hold no control characters (CR, LF, NUL, tab, DEL), got one at index ${control}`);
  }
  // A key is ASCII; one with "…" or "’" was copied masked from a dashboard or through a word processor. undici
  // refused to send such a header (every call failed invalid_request) and node's HTTP/2 client sent the request
  // without it (every call failed 401); a Latin-1 "é" went out as a byte no server's key has. Every item of every
  // batch failed, where a start-up error says why.
  const nonAscii = o.apiKey === undefined ? -1 : o.apiKey.search(/[^\x00-\x7f]/);
  if (nonAscii >= 0) {
    throw new TypeError(`Expected \`apiKey\` to be ASCII (was it copied masked, as "sk-…", or with a typographic quote?), got a non-ASCII character at index ${nonAscii}`);
  }
  if (o.requestTimeoutMs !== undefined) positiveInt("requestTimeoutMs", o.requestTimeoutMs, 0);
  const ejectBaseMs = positiveInt("ejectBaseMs", o.ejectBaseMs, 1_000);
  const ejectMaxMs = positiveInt("ejectMaxMs", o.ejectMaxMs, 30_000);
  if (ejectMaxMs < ejectBaseMs) fail("ejectMaxMs", `>= ejectBaseMs (${ejectBaseMs})`, ejectMaxMs);
  return {
    name: o.name,
    targets: o.urls.map((u, i) => parseTarget(u, protocol, i)),
    apiKey: o.apiKey,
    connectionsPerReplica: positiveInt("connectionsPerReplica", o.connectionsPerReplica, positiveInt("maxConcurrency", o.maxConcurrency, 64)),
    streamsPerSession: positiveInt("streamsPerSession", o.streamsPerSession, DEFAULT_STREAMS_PER_SESSION),
    requestTimeoutMs: o.requestTimeoutMs,
    connectTimeoutMs: positiveInt("connectTimeoutMs", o.connectTimeoutMs, 10_000),
    maxResponseBytes: positiveInt("maxResponseBytes", o.maxResponseBytes, DEFAULT_MAX_RESPONSE_BYTES),
    ejectBaseMs,
    ejectMaxMs,
    tls: o.tls,
    now: o.now ?? (() => performance.now()),
  };
}
