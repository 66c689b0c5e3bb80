/**
 * What the simulator has seen since start or the last reset; GET /sim/stats serves the same object. Only
 * inference calls (POST to the five OpenAI/vLLM endpoints) count; health, models and /sim/* calls do not.
 */
export interface SimulatorStats {
  /** Inference calls received, counted when their headers arrive. */
  readonly requests: number;
  /** Requests received whose stream/response has not closed yet (answered, reset, or abandoned by the client). */
  readonly inFlight: number;
  /** The highest `inFlight` ever reached: exact, not sampled. */
  readonly maxInFlight: number;
  /** Answers sent, by HTTP status. */
  readonly byStatus: Record<number, number>;
  /** Requests by the protocol they came over. */
  readonly byProtocol: { readonly http1: number; readonly h2: number };
  /** TCP connections accepted (keep-alive and HTTP/2 reuse keep this low). */
  readonly connections: number;
  /** Connections/streams reset on purpose. */
  readonly resets: number;
  /** Requests left hanging on purpose. */
  readonly hangs: number;
}

export class StatsRecorder {
  requests = 0;
  inFlight = 0;
  maxInFlight = 0;
  byStatus: Record<number, number> = {};
  http1 = 0;
  h2 = 0;
  connections = 0;
  resets = 0;
  hangs = 0;

  /** MUST be paired with exactly one `end()`: callers hook it to the one 'close' event of the response/stream. */
  begin(protocol: "http1" | "h2"): void {
    this.requests++;
    if (protocol === "h2") this.h2++;
    else this.http1++;
    if (++this.inFlight > this.maxInFlight) this.maxInFlight = this.inFlight;
  }

  end(): void {
    this.inFlight--;
  }

  answered(status: number): void {
    this.byStatus[status] = (this.byStatus[status] ?? 0) + 1;
  }

  /** Zeroes the counters; requests still in flight stay counted in `inFlight` (and so in `maxInFlight`). */
  reset(): void {
    this.requests = 0;
    this.maxInFlight = this.inFlight;
    this.byStatus = {};
    this.http1 = 0;
    this.h2 = 0;
    this.connections = 0;
    this.resets = 0;
    this.hangs = 0;
  }

  snapshot(): SimulatorStats {
    return {
      requests: this.requests,
      inFlight: this.inFlight,
      maxInFlight: this.maxInFlight,
      byStatus: { ...this.byStatus },
      byProtocol: { http1: this.http1, h2: this.h2 },
      connections: this.connections,
      resets: this.resets,
      hangs: this.hangs,
    };
  }
}
