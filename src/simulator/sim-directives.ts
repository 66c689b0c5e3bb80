import { createHash } from "node:crypto";

/**
 * Per-request directives, for deterministic tests. lote forwards the user's body unchanged, so a test puts them
 * in a top-level "sim" object of the request body:
 *
 *   {"model": "m", "messages": [...], "sim": {"fail_first": 2, "status": 429, "retry_after": "1", "latency_ms": 30}}
 *
 * - `status` (number): answer this status instead of the normal answer (default 500 when another failure field
 *   says to fail; ignored when `hang` or `reset` is set).
 * - `retry_after` (string): sent as the Retry-After header with `status`.
 * - `hang` (true): never answer; the request stays open until the client gives up.
 * - `reset` (true): reset the connection (HTTP/1.1) or the stream (HTTP/2 RST_STREAM) without an answer.
 * - `fail_first` (N): apply the failure above only to the first N attempts of an identical body (counted by a
 *   hash of the whole body, including "sim"), then answer normally. Without it the failure applies every time.
 * - `latency_ms` (number): think this long instead of drawing from the latency distribution.
 * - `answer_bytes` (number): pad a normal answer to at least this many bytes (a "padding" member first).
 * - `not_json` (true): answer 200 with an HTML page instead of JSON, as a misrouted proxy or a web server's
 *   default page would.
 *
 * A request carrying directives is exempt from the random faults (errorRate, rateLimitRate, resetRate,
 * hangRate), so its outcome depends only on what it asked for.
 */
export interface SimDirectives {
  readonly failFirst?: number;
  readonly status?: number;
  readonly retryAfter?: string;
  readonly hang?: boolean;
  readonly reset?: boolean;
  readonly latencyMs?: number;
  readonly answerBytes?: number;
  readonly notJson?: boolean;
}

/** What the directives decide for one attempt. */
export type DirectedOutcome =
  | { readonly kind: "answer" }
  | { readonly kind: "status"; readonly status: number; readonly retryAfter: string | undefined }
  | { readonly kind: "hang" }
  | { readonly kind: "reset" }
  | { readonly kind: "not_json" };

export const answerOutcome: DirectedOutcome = { kind: "answer" };
export const hangOutcome: DirectedOutcome = { kind: "hang" };
export const resetOutcome: DirectedOutcome = { kind: "reset" };
export const notJsonOutcome: DirectedOutcome = { kind: "not_json" };

/** Reads the "sim" member of a parsed body; undefined when there is none or it is not an object. */
export function readDirectives(parsed: unknown): SimDirectives | undefined {
  const sim = (parsed as { sim?: unknown } | null)?.sim;
  if (typeof sim !== "object" || sim === null) return undefined;
  const s = sim as Record<string, unknown>;
  const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
  return {
    failFirst: num(s.fail_first),
    status: num(s.status),
    retryAfter: typeof s.retry_after === "string" || typeof s.retry_after === "number" ? String(s.retry_after) : undefined,
    hang: s.hang === true,
    reset: s.reset === true,
    latencyMs: num(s.latency_ms),
    answerBytes: num(s.answer_bytes),
    notJson: s.not_json === true,
  };
}

/** Counts attempts per identical body so `fail_first` can let the (N+1)th attempt through. */
export class AttemptCounter {
  readonly #attempts = new Map<string, number>();

  /** Records one attempt of `body` and says what the directives decide for it. */
  decide(body: string, d: SimDirectives): DirectedOutcome {
    const fails = d.hang || d.reset || d.notJson || d.status !== undefined || d.failFirst !== undefined;
    if (!fails) return answerOutcome;
    if (d.failFirst !== undefined) {
      const key = createHash("sha1").update(body).digest("base64");
      const attempt = (this.#attempts.get(key) ?? 0) + 1;
      this.#attempts.set(key, attempt);
      if (attempt > d.failFirst) return answerOutcome;
    }
    if (d.reset) return resetOutcome;
    if (d.hang) return hangOutcome;
    if (d.notJson) return notJsonOutcome;
    return { kind: "status", status: d.status ?? 500, retryAfter: d.retryAfter };
  }

  clear(): void {
    this.#attempts.clear();
  }
}
