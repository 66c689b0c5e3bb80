import { AnswerBodies, errorBody, estimatePromptTokens, inferencePaths, type InferencePath } from "./answer-bodies.ts";
import { latencySampler, seededRandom } from "./latency-sampler.ts";
import { answerOutcome, AttemptCounter, hangOutcome, readDirectives, resetOutcome, type DirectedOutcome } from "./sim-directives.ts";
import { resolveBehaviour, type ResolvedBehaviour, type SimulatorBehaviour } from "./simulator-options.ts";
import { StatsRecorder } from "./simulator-stats.ts";

/** One request as the protocol adapters (HTTP/1.1, HTTP/2) present it to the core. */
export interface Exchange {
  /** Counted in the stats: an inference call (see `SimulatorCore.tracks`). */
  readonly tracked: boolean;
  readonly method: string;
  readonly path: string;
  readonly authorization: string | undefined;
  /** True once the response/stream closed: answered, reset, or abandoned by the client. */
  readonly closed: boolean;
  /** performance.now() when the request arrived (its headers), before its body was read. */
  readonly arrivedAt: number;
  /** Sends a JSON answer with `x-request-id` (and `retry-after` when given). */
  respond(status: number, body: string, requestId: string, retryAfter?: string): void;
  /** Ends the request with no answer: TCP reset for HTTP/1.1, RST_STREAM for HTTP/2. */
  reset(): void;
}

const healthBody = `{"status":"ok"}`;
const modelRegex = /"model"\s*:\s*("(?:[^"\\]|\\.)*")/;

/** The protocol-independent simulator: routing, faults, latency, answers and stats. */
export class SimulatorCore {
  readonly stats = new StatsRecorder();
  readonly #attempts = new AttemptCounter();
  #b!: ResolvedBehaviour;
  #random!: () => number;
  #latency!: () => number;
  #bodies!: AnswerBodies;
  #expectedAuth: string | undefined;
  #modelsBody = "";
  #n = 0;

  constructor(behaviour: ResolvedBehaviour) {
    this.#apply(behaviour);
  }

  configure(patch: SimulatorBehaviour): void {
    this.#apply(resolveBehaviour(this.#b, patch), patch.seed === undefined);
  }

  /** Zeroes the stats and forgets `fail_first` attempt counts. */
  resetStats(): void {
    this.stats.reset();
    this.#attempts.clear();
  }

  #apply(b: ResolvedBehaviour, keepRandom = false): void {
    if (!keepRandom || !this.#random) this.#random = seededRandom(b.seed);
    this.#b = b;
    this.#latency = latencySampler(b.latency, this.#random);
    this.#bodies = new AnswerBodies(b.completionTokens, b.embeddingDimensions);
    this.#expectedAuth = b.requireApiKey === undefined ? undefined : `Bearer ${b.requireApiKey}`;
    const created = Math.floor(Date.now() / 1000);
    this.#modelsBody = JSON.stringify({
      object: "list",
      data: b.models.map((id) => ({ id, object: "model", created, owned_by: "lote-simulator" })),
    });
  }

  /**
   * Only inference calls are counted: a readiness probe (GET /health, /v1/models) or a stats read must not move
   * `maxInFlight`, which tests use to prove a concurrency limit held.
   */
  tracks(path: string): boolean {
    const q = path.indexOf("?");
    return inferencePaths.has(q < 0 ? path : path.slice(0, q));
  }

  handle(ex: Exchange, body: string): void {
    const n = ++this.#n;
    const requestId = `sim-${n}`;
    const q = ex.path.indexOf("?");
    const path = q < 0 ? ex.path : ex.path.slice(0, q);
    const isPost = ex.method === "POST";
    if (path === "/health") return this.#send(ex, ex.method === "GET" ? 200 : 405, healthBody, requestId);
    if (path === "/sim/stats") return this.#send(ex, 200, JSON.stringify(this.stats.snapshot()), requestId);
    if (path === "/sim/reset" && isPost) {
      this.resetStats();
      return this.#send(ex, 200, `{"ok":true}`, requestId);
    }
    const isModels = path === "/v1/models";
    if (!isModels && !inferencePaths.has(path)) {
      return this.#send(ex, 404, errorBody(404, `no route for ${ex.method} ${path}`), requestId);
    }
    if (this.#expectedAuth !== undefined && ex.authorization !== this.#expectedAuth) {
      return this.#send(ex, 401, errorBody(401, "Incorrect API key provided."), requestId);
    }
    if (isModels) return this.#send(ex, ex.method === "GET" ? 200 : 405, this.#modelsBody, requestId);
    if (!isPost) return this.#send(ex, 405, errorBody(405, `use POST for ${path}`), requestId);

    // Parse only when needed: directives, or counting the inputs of a batched embeddings/classify call. The
    // model is picked out with a regex, which is several times cheaper than JSON.parse of a whole chat body.
    let parsed: unknown;
    const counts = path === "/v1/embeddings" || path === "/classify";
    if (body.includes(`"sim"`) || (counts && body.includes("["))) {
      try {
        parsed = JSON.parse(body);
      } catch {
        return this.#send(ex, 400, errorBody(400, "request body is not valid JSON"), requestId);
      }
    }
    const directives = parsed === undefined ? undefined : readDirectives(parsed);
    const outcome = directives ? this.#attempts.decide(body, directives) : this.#drawFault();
    if (outcome.kind === "hang") {
      this.stats.hangs++;
      return;
    }
    // The latency counts from the request's arrival, as a server's time to answer does: the time its body took to
    // come in and be read counts toward it. Timed from the body's end, a fixed 50 ms held each call 53-57 ms when
    // 256 arrived together (bench/dispatch.ts (b)): the wait for the loop to read every body came on top.
    const delay = (directives?.latencyMs ?? this.#latency()) - (performance.now() - ex.arrivedAt);
    // Unref'd: an open request keeps the process alive through its socket; a timer alone must not.
    const padTo = directives?.answerBytes;
    if (delay > 0) setTimeout(this.#finish, delay, ex, outcome, path as InferencePath, body, parsed, n, padTo).unref();
    else this.#finish(ex, outcome, path as InferencePath, body, parsed, n, padTo);
  }

  #drawFault(): DirectedOutcome {
    const b = this.#b;
    if (b.resetRate + b.hangRate + b.errorRate + b.rateLimitRate === 0) return answerOutcome;
    let u = this.#random();
    if ((u -= b.resetRate) < 0) return resetOutcome;
    if ((u -= b.hangRate) < 0) return hangOutcome;
    if ((u -= b.errorRate) < 0) return { kind: "status", status: 500, retryAfter: undefined };
    if ((u -= b.rateLimitRate) < 0) return { kind: "status", status: 429, retryAfter: String(b.retryAfterSeconds) };
    return answerOutcome;
  }

  readonly #finish = (ex: Exchange, o: DirectedOutcome, path: InferencePath, body: string, parsed: unknown, n: number, padTo?: number): void => {
    if (ex.closed) return;
    const requestId = `sim-${n}`;
    if (o.kind === "reset") {
      this.stats.resets++;
      ex.reset();
    } else if (o.kind === "not_json") {
      this.#send(ex, 200, notJsonBody, requestId);
    } else if (o.kind === "status") {
      const message = o.status === 429 ? "simulated rate limit" : `simulated status ${o.status}`;
      this.#send(ex, o.status, errorBody(o.status, message), requestId, o.retryAfter);
    } else {
      const answer = this.#bodies.render(path, {
        n,
        modelJson: modelOf(body, parsed) ?? JSON.stringify(this.#b.models[0]),
        promptTokens: estimatePromptTokens(body),
        inputs: inputsOf(parsed),
      });
      this.#send(ex, 200, padTo === undefined ? answer : padded(answer, padTo), requestId);
    }
  };

  #send(ex: Exchange, status: number, body: string, requestId: string, retryAfter?: string): void {
    if (ex.closed) return;
    if (ex.tracked) this.stats.answered(status);
    ex.respond(status, body, requestId, retryAfter);
  }
}

/** The `not_json` directive's answer: a web server's default page where an OpenAI-compatible server should be. */
const notJsonBody = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>\n";

/** The answer with a "padding" member in front, so that it is at least `bytes` long (ASCII: bytes = characters). */
function padded(answer: string, bytes: number): string {
  const fill = Math.max(0, Math.floor(bytes) - answer.length - `"padding":"",`.length);
  return `{"padding":"${"x".repeat(fill)}",${answer.slice(1)}`;
}

function modelOf(body: string, parsed: unknown): string | undefined {
  if (parsed !== undefined) {
    const m = (parsed as { model?: unknown }).model;
    return typeof m === "string" ? JSON.stringify(m) : undefined;
  }
  // The match is a JSON string literal taken verbatim from the request, so it is valid JSON as it stands.
  return modelRegex.exec(body)?.[1];
}

function inputsOf(parsed: unknown): number {
  const input = (parsed as { input?: unknown } | undefined)?.input;
  return Array.isArray(input) && input.length > 0 && typeof input[0] !== "number" ? input.length : 1;
}
