/**
 * Options of the simulated OpenAI-compatible backend. Validated loudly at start and on every `configure()`, so a
 * typo in a test or a benchmark fails at once instead of silently simulating something else.
 */

/** How long the simulator "thinks" before answering, counted from the request's arrival (its headers). */
export type LatencyDistribution =
  | { readonly kind: "fixed"; readonly ms: number }
  | { readonly kind: "uniform"; readonly minMs: number; readonly maxMs: number }
  /** Heavy-tailed like real generation times; given by its median and 99th percentile. */
  | { readonly kind: "lognormal"; readonly p50Ms: number; readonly p99Ms: number };

/** What can be changed on a running simulator with `configure()`. */
export interface SimulatorBehaviour {
  /** Default `{ kind: "fixed", ms: 0 }`. */
  readonly latency?: LatencyDistribution;
  /** Fraction of inference calls answered 500. Default 0. */
  readonly errorRate?: number;
  /** Fraction answered 429 with `Retry-After: <retryAfterSeconds>`. Default 0. */
  readonly rateLimitRate?: number;
  /** Value of the Retry-After header on simulated 429s. Default 1. */
  readonly retryAfterSeconds?: number;
  /** Fraction whose connection (HTTP/1.1) or stream (HTTP/2 RST_STREAM) is reset with no answer. Default 0. */
  readonly resetRate?: number;
  /** Fraction never answered until the client gives up. Default 0. */
  readonly hangRate?: number;
  /** When set, /v1/* and /classify answer 401 unless `authorization: Bearer <key>`. Default unset. */
  readonly requireApiKey?: string | undefined;
  /** Seed of the RNG behind latency and fault draws, for deterministic tests. Default: random. */
  readonly seed?: number;
  /** Completion tokens of every answer (the text has this many words). Default 16. */
  readonly completionTokens?: number;
  /** Length of every embedding vector. Default 8. */
  readonly embeddingDimensions?: number;
  /** Model ids listed by GET /v1/models. Default ["sim-model"]. */
  readonly models?: readonly string[];
}

export interface SimulatorOptions extends SimulatorBehaviour {
  /** Port on `host`; default 0 (the OS picks one; read it back from `Simulator.port`). */
  readonly port?: number;
  /** Default "127.0.0.1". */
  readonly host?: string;
  /**
   * PEM certificate and key. When given, the same port also accepts TLS (ALPN h2 and http/1.1), recognised by
   * the first byte of the connection (0x16, a TLS handshake record), next to cleartext HTTP/1.1 and h2c.
   */
  readonly tls?: {
    readonly cert: string | Buffer;
    readonly key: string | Buffer;
    /** ALPN protocols offered, in preference order. Default ["h2", "http/1.1"]; ["http/1.1"] plays an
     * HTTP/1.1-only TLS server, as many proxies in front of vLLM are. */
    readonly alpn?: readonly ("h2" | "http/1.1")[];
  };
  /** SETTINGS_MAX_CONCURRENT_STREAMS announced to HTTP/2 clients. Default 256. */
  readonly h2MaxConcurrentStreams?: number;
}

export type ResolvedBehaviour = Required<Omit<SimulatorBehaviour, "requireApiKey">> & {
  readonly requireApiKey: string | undefined;
};

export const defaultBehaviour: ResolvedBehaviour = {
  latency: { kind: "fixed", ms: 0 },
  errorRate: 0,
  rateLimitRate: 0,
  retryAfterSeconds: 1,
  resetRate: 0,
  hangRate: 0,
  requireApiKey: undefined,
  seed: 0,
  completionTokens: 16,
  embeddingDimensions: 8,
  models: ["sim-model"],
};

function fail(field: string, expected: string, got: unknown): never {
  throw new TypeError(`Expected \`${field}\` to be ${expected}, got ${JSON.stringify(got) ?? String(got)}`);
}

function fraction(field: string, value: number): number {
  if (typeof value !== "number" || !(value >= 0 && value <= 1)) fail(field, "a number in [0, 1]", value);
  return value;
}

function nonNegative(field: string, value: number, integer = false): number {
  if (typeof value !== "number" || !(value >= 0) || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    fail(field, integer ? "an integer >= 0" : "a finite number >= 0", value);
  }
  return value;
}

function checkLatency(l: LatencyDistribution): LatencyDistribution {
  if (l.kind === "fixed") nonNegative("latency.ms", l.ms);
  else if (l.kind === "uniform") {
    nonNegative("latency.minMs", l.minMs);
    if (nonNegative("latency.maxMs", l.maxMs) < l.minMs) fail("latency.maxMs", `>= minMs (${l.minMs})`, l.maxMs);
  } else if (l.kind === "lognormal") {
    if (!(l.p50Ms > 0)) fail("latency.p50Ms", "a number > 0", l.p50Ms);
    if (!(l.p99Ms >= l.p50Ms)) fail("latency.p99Ms", `a number >= p50Ms (${l.p50Ms})`, l.p99Ms);
  } else {
    fail("latency.kind", `"fixed", "uniform" or "lognormal"`, (l as { kind: unknown }).kind);
  }
  return l;
}

/** Merges `patch` over `base` and validates the result. */
export function resolveBehaviour(base: ResolvedBehaviour, patch: SimulatorBehaviour): ResolvedBehaviour {
  const b = { ...base, ...stripUndefined(patch) };
  if ("requireApiKey" in patch) b.requireApiKey = patch.requireApiKey;
  checkLatency(b.latency);
  fraction("errorRate", b.errorRate);
  fraction("rateLimitRate", b.rateLimitRate);
  fraction("resetRate", b.resetRate);
  fraction("hangRate", b.hangRate);
  // One uniform draw picks the fault, so the fractions must fit in [0, 1] together.
  const total = b.errorRate + b.rateLimitRate + b.resetRate + b.hangRate;
  if (total > 1) fail("errorRate + rateLimitRate + resetRate + hangRate", "at most 1", total);
  nonNegative("retryAfterSeconds", b.retryAfterSeconds);
  nonNegative("completionTokens", b.completionTokens, true);
  nonNegative("embeddingDimensions", b.embeddingDimensions, true);
  if (!Number.isInteger(b.seed)) fail("seed", "an integer", b.seed);
  if (b.requireApiKey !== undefined && (typeof b.requireApiKey !== "string" || b.requireApiKey === "")) {
    // The key itself is never echoed.
    fail("requireApiKey", "a non-empty string", typeof b.requireApiKey);
  }
  if (!Array.isArray(b.models) || b.models.length === 0) fail("models", "a non-empty array of model ids", b.models);
  return b;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Parses the CLI spelling of a latency distribution: "20" or "fixed:20", "uniform:10:50", "lognormal:20:200"
 * (median 20 ms, p99 200 ms).
 */
export function parseLatency(text: string): LatencyDistribution {
  const parts = text.split(":");
  const nums = parts.slice(parts.length === 1 ? 0 : 1).map(Number);
  const kind = parts.length === 1 ? "fixed" : parts[0];
  const bad = () => fail("--latency", `"fixed:MS", "uniform:MIN:MAX" or "lognormal:P50:P99"`, text);
  if (nums.some((n) => !Number.isFinite(n))) bad();
  if (kind === "fixed" && nums.length === 1) return checkLatency({ kind, ms: nums[0]! });
  if (kind === "uniform" && nums.length === 2) return checkLatency({ kind, minMs: nums[0]!, maxMs: nums[1]! });
  if (kind === "lognormal" && nums.length === 2) return checkLatency({ kind, p50Ms: nums[0]!, p99Ms: nums[1]! });
  return bad();
}
