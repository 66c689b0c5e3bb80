import type { Logger } from "pino";
import { LogThrottle } from "../log/log-throttle.ts";
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

interface ModelErrors {
  /** Failures since the last line, by kind. */
  readonly counts: Map<string, number>;
  last: { batchId: string; errorCode: string } | undefined;
}

/**
 * Logs backend call failures without flooding: the first failure of a model at once, then, while failures go on,
 * one warning per model every 10 s (`LogThrottle`) with the failures since the last one counted by kind. No bodies or
 * messages: a backend's error message may quote the request.
 */
export class CallErrorLog {
  private readonly models = new Map<string, ModelErrors>();
  /** One line per model per 10 s: a backend down for a minute at 1,000 calls/s fails 60,000 calls. */
  private readonly throttle: LogThrottle;

  constructor(private readonly log: Logger, now: () => number = () => performance.now()) {
    this.throttle = new LogThrottle(now);
  }

  record(model: string, kind: string, completion: Completion): void {
    let m = this.models.get(model);
    if (!m) this.models.set(model, (m = { counts: new Map(), last: undefined }));
    m.counts.set(kind, (m.counts.get(kind) ?? 0) + 1);
    m.last = { batchId: completion.batchId, errorCode: "errorCode" in completion ? completion.errorCode : "" };
    const admitted = this.throttle.admit(model);
    if (!admitted) return;
    const errors = Object.fromEntries(m.counts);
    const failures = [...m.counts.values()].reduce((a, b) => a + b, 0);
    m.counts.clear();
    this.log.warn({ model, failures, errors, sinceMs: admitted.sinceMs, lastBatchId: m.last.batchId, lastErrorCode: m.last.errorCode }, "backend calls failing");
  }
}
