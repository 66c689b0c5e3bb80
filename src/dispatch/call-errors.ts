import type { Logger } from "pino";
import type { Completion } from "../store/index.ts";

/**
 * What kind of backend error a call's completion records, as a label with a bounded set of values: `http_<status>`
 * for an answer with an error status (429, 503, ...), else the transport error (`timeout`, `connection_refused`,
 * `connection_reset`, `goaway`, `protocol_error`, `response_too_large`, `invalid_request`). Undefined when the call
 * did not fail at the backend: it succeeded, or was cancelled, expired or stopped by this node's shutdown. The
 * item's `errorCode` itself cannot be the label: a backend's own `error.code` replaces it, and is any string.
 */
export function callErrorKind(completion: Completion | undefined): string | undefined {
  if (completion === undefined) return undefined;
  if (completion.outcome !== "retry" && completion.outcome !== "failed") return undefined;
  if (completion.errorCode === "worker_shutdown") return undefined;
  return completion.statusCode > 0 ? `http_${completion.statusCode}` : completion.errorCode;
}

/**
 * How often a model's failing calls are logged at most: one line per model per 10 s. A backend down for a minute
 * at 1,000 calls/s fails 60,000 calls; one line each would bury every other line (and cost a worker more than the
 * calls), while no line at all, as before, left an operator reading the logs with nothing to see.
 */
const summaryEveryMs = 10_000;

interface ModelErrors {
  /** When the last line was written (performance.now()), undefined before the first. */
  loggedAt: number | undefined;
  /** Failures since the last line, by kind. */
  readonly counts: Map<string, number>;
  last: { batchId: string; errorCode: string } | undefined;
}

/**
 * Logs backend call failures without flooding: the first failure of a model at once, then, while failures go on,
 * one warning per model every `summaryEveryMs` with the failures since the last one counted by kind. No bodies or
 * messages: a backend's error message may quote the request.
 */
export class CallErrorLog {
  private readonly models = new Map<string, ModelErrors>();

  constructor(private readonly log: Logger, private readonly now: () => number = () => performance.now()) {}

  record(model: string, kind: string, completion: Completion): void {
    let m = this.models.get(model);
    if (!m) this.models.set(model, (m = { loggedAt: undefined, counts: new Map(), last: undefined }));
    m.counts.set(kind, (m.counts.get(kind) ?? 0) + 1);
    m.last = { batchId: completion.batchId, errorCode: "errorCode" in completion ? completion.errorCode : "" };
    const now = this.now();
    if (m.loggedAt !== undefined && now - m.loggedAt < summaryEveryMs) return;
    const since = m.loggedAt === undefined ? undefined : Math.round(now - m.loggedAt);
    m.loggedAt = now;
    const errors = Object.fromEntries(m.counts);
    const failures = [...m.counts.values()].reduce((a, b) => a + b, 0);
    m.counts.clear();
    this.log.warn({ model, failures, errors, sinceMs: since, lastBatchId: m.last.batchId, lastErrorCode: m.last.errorCode }, "backend calls failing");
  }
}
