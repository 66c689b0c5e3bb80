/**
 * What a node tells Prometheus: the API's calls by method and code, the worker pool's claims and calls per model,
 * what it has in flight, the completions waiting to be written, and prom-client's default process metrics (CPU,
 * memory, event-loop delay, GC). Counters and histograms are fed as things happen (an interceptor on the API, the
 * DispatchObserver in the dispatcher); gauges are read from the dispatcher at scrape time.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ModelConfig } from "../config/config.ts";
import type { CallOutcome, DatabaseOperation, Dispatcher, DispatchObserver } from "../dispatch/index.ts";
import type { QueueDepth } from "../store/index.ts";

/**
 * Inference calls take from a few ms (a small model, a cache hit) to minutes (long generations): buckets from 5 ms
 * to 10 min, about doubling, the last at the default per-request timeout (`timeout_ms`, 600 s), so the calls that
 * ran into it are told apart from those just over 2 minutes. A claim is one Postgres round trip: 0.5 ms to 1 s.
 */
const callBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
const claimBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
/**
 * How long a scrape waits for the queue's reading before it answers without those two series: Prometheus gives up
 * on a whole scrape after 10 s by default, and the node's other series matter most while Postgres is slow or down.
 */
const queueReadTimeoutMs = 2_000;

/** A GetBatch answers in 1-3 ms, a CreateBatch of 50,000 requests in ~0.5 s, a RunBatch or a stream until it ends. */
const apiBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export class LoteMetrics implements DispatchObserver {
  readonly registry = new Registry();
  readonly #claims: Counter<"model">;
  readonly #claimedItems: Counter<"model">;
  readonly #claimSeconds: Histogram<"model">;
  readonly #calls: Counter<"model" | "outcome">;
  readonly #callSeconds: Histogram<"model" | "outcome">;
  readonly #callErrors: Counter<"model" | "error">;
  readonly #apiCalls: Counter<"method" | "code">;
  readonly #apiSeconds: Histogram<"method" | "code">;
  readonly #databaseErrors: Counter<"operation">;
  readonly #rescued: Counter<"model">;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.#claims = new Counter({ name: "lote_claims_total", help: "Claims this node ran against the queue, empty ones included.", labelNames: ["model"], registers });
    this.#claimedItems = new Counter({ name: "lote_claimed_items_total", help: "Requests this node claimed (one per backend call it started).", labelNames: ["model"], registers });
    this.#claimSeconds = new Histogram({ name: "lote_claim_duration_seconds", help: "Time of one claim, from the node's side.", labelNames: ["model"], buckets: claimBuckets, registers });
    this.#calls = new Counter({
      name: "lote_calls_total",
      // Counted as the call ends, from what it asks to write, not once Postgres took it: the completer's later
      // flush may fence a completion out (its lease was rescued) or store it as result_not_storable, and "by what
      // was written" was not what the numbers said.
      help: "Backend calls ended, by the call's outcome (succeeded, failed, retry (back to pending), cancelled, expired), "
        + "counted when the call ends, before its completion is written: one later fenced out or stored as result_not_storable counts as it ended.",
      labelNames: ["model", "outcome"], registers,
    });
    this.#callSeconds = new Histogram({
      name: "lote_call_duration_seconds", help: "Time of one backend call, retries of the transport included.",
      labelNames: ["model", "outcome"], buckets: callBuckets, registers,
    });
    this.#callErrors = new Counter({
      name: "lote_call_errors_total",
      help: "Backend calls that failed, retried or not, by error: http_<status> (http_429, http_503, ...) or the transport error (timeout, connection_refused, connection_reset, goaway, protocol_error, response_too_large, invalid_request).",
      labelNames: ["model", "error"], registers,
    });
    this.#apiCalls = new Counter({
      name: "lote_api_calls_total", help: "API calls ended, by method (service/method) and status code (OK, NotFound, ...).",
      labelNames: ["method", "code"], registers,
    });
    this.#apiSeconds = new Histogram({
      name: "lote_api_call_duration_seconds", help: "Time of one API call; for a stream, until its last message.",
      labelNames: ["method", "code"], buckets: apiBuckets, registers,
    });
    this.#databaseErrors = new Counter({
      name: "lote_dispatch_database_errors_total",
      help: "Dispatcher statements that failed and will be retried (a lost or timed-out connection, most often), by operation: claim, completion, heartbeat, workers, maintenance.",
      labelNames: ["operation"], registers,
    });
    this.#rescued = new Counter({
      name: "lote_rescued_items_total",
      help: "Requests whose lease had lapsed (the node running them crashed, hung or lost Postgres) that this node's maintenance put back to pending, failed at max_attempts, or cancelled. Every node looks: an item two nodes found in the same instant counts on both.",
      labelNames: ["model"], registers,
    });
  }

  /** Counts and times every API call; a stream is counted when it ends, with the code it ended with. */
  apiInterceptor(): Interceptor {
    return (next) => async (req) => {
      const method = `${req.service.typeName}/${req.method.name}`;
      const started = performance.now();
      const ended = (err: unknown) => {
        // A stream's handler returns as its signal aborts, so a stream the client cancelled (or whose deadline
        // passed, or that the server's shutdown ended) finishes without an error: the signal's reason says how it
        // ended, as in the "rpc" log line. Counted as OK, a client cancelling 1,000 WatchBatch streams made 1,000
        // successful calls.
        const { aborted, reason } = req.signal;
        const code = err !== undefined ? Code[ConnectError.from(err).code] : aborted && reason instanceof ConnectError ? Code[reason.code] : "OK";
        this.#apiCalls.inc({ method, code });
        this.#apiSeconds.observe({ method, code }, (performance.now() - started) / 1000);
      };
      let res;
      try {
        res = await next(req);
      } catch (err) {
        ended(err);
        throw err;
      }
      if (!res.stream) {
        ended(undefined);
        return res;
      }
      const messages = res.message;
      async function* observed() {
        let outcome: { err: unknown } | undefined;
        try {
          yield* messages;
          outcome = { err: undefined };
        } catch (err) {
          outcome = { err };
          throw err;
        } finally {
          // Neither finished nor failed: the server stopped reading it, because the client went away.
          ended(outcome ? outcome.err : new ConnectError("stream abandoned", Code.Canceled));
        }
      }
      return { ...res, message: observed() };
    };
  }

  claimed(model: string, items: number, seconds: number): void {
    this.#claims.inc({ model });
    if (items > 0) this.#claimedItems.inc({ model }, items);
    this.#claimSeconds.observe({ model }, seconds);
  }

  callEnded(model: string, outcome: CallOutcome, seconds: number): void {
    this.#calls.inc({ model, outcome });
    this.#callSeconds.observe({ model, outcome }, seconds);
  }

  callFailed(model: string, kind: string): void {
    this.#callErrors.inc({ model, error: kind });
  }

  rescued(model: string, items: number): void {
    this.#rescued.inc({ model }, items);
  }

  databaseFailed(operation: DatabaseOperation): void {
    this.#databaseErrors.inc({ operation });
  }

  /**
   * Gauges read from the dispatcher at each scrape, and each model's configured fleet-wide limit. With `readQueue`,
   * also each model's queue, fleet-wide, read from Postgres once per scrape.
   */
  watch(dispatcher: Dispatcher, models: ReadonlyMap<string, ModelConfig>, readQueue?: () => Promise<ReadonlyMap<string, QueueDepth>>): void {
    const registers = [this.registry];
    if (readQueue) this.watchQueue(models, readQueue);
    const limit = new Gauge({
      name: "lote_model_max_concurrency",
      help: "The model's max_concurrency, fleet-wide: sum(lote_calls_in_flight) by (model) over it is the model's saturation.",
      labelNames: ["model"], registers,
    });
    for (const [model, config] of models) limit.set({ model }, config.maxConcurrency);
    new Gauge({
      name: "lote_calls_in_flight", help: "Backend calls this node has running now.", labelNames: ["model"], registers,
      collect() {
        for (const [model, m] of Object.entries(dispatcher.state().models)) this.set({ model }, m.inFlight);
      },
    });
    new Gauge({
      name: "lote_model_share",
      help: "Slots of the model's max_concurrency this node takes: its share among lote_model_workers, by what each can run.",
      labelNames: ["model"], registers,
      collect() {
        for (const [model, m] of Object.entries(dispatcher.state().models)) this.set({ model }, m.share);
      },
    });
    new Gauge({
      name: "lote_model_workers", help: "Worker nodes alive for the model (lote.workers), as this node last read them.",
      labelNames: ["model"], registers,
      collect() {
        for (const [model, m] of Object.entries(dispatcher.state().models)) this.set({ model }, m.workers);
      },
    });
    new Gauge({
      name: "lote_completion_backlog", help: "Finished calls whose results are not yet written to Postgres.", registers,
      collect() {
        this.set(dispatcher.state().backlog);
      },
    });
  }

  private watchQueue(models: ReadonlyMap<string, ModelConfig>, readQueue: () => Promise<ReadonlyMap<string, QueueDepth>>): void {
    const registers = [this.registry];
    // One reading serves both gauges of a scrape (each collect() asks; the second gets the first's answer).
    let reading: { at: number; depth: Promise<ReadonlyMap<string, QueueDepth> | undefined> } | undefined;
    const read = () => {
      if (reading && performance.now() - reading.at < 1_000) return reading.depth;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), queueReadTimeoutMs)));
      const depth = Promise.race([readQueue().catch(() => undefined), timedOut]).finally(() => clearTimeout(timer));
      reading = { at: performance.now(), depth };
      return depth;
    };
    // Every configured model has a sample (0 when it has no work), so an alert on it does not see "absent" instead;
    // none at all when Postgres did not answer, rather than the last reading as if it were current.
    const set = async (gauge: Gauge<"model">, value: (d: QueueDepth | undefined) => number) => {
      const depth = await read();
      gauge.reset();
      if (depth) for (const model of models.keys()) gauge.set({ model }, value(depth.get(model)));
    };
    new Gauge({
      name: "lote_pending_requests",
      help: "Requests of the model waiting for a call, fleet-wide (batches in progress; retries waiting out their backoff included), read from Postgres at each scrape.",
      labelNames: ["model"], registers,
      async collect() {
        await set(this, (d) => d?.pending ?? 0);
      },
    });
    new Gauge({
      name: "lote_oldest_batch_age_seconds",
      help: "Age of the model's oldest batch in progress with unfinished requests, fleet-wide (0 when none), read from Postgres at each scrape.",
      labelNames: ["model"], registers,
      async collect() {
        await set(this, (d) => d?.oldestBatchSeconds ?? 0);
      },
    });
  }
}
