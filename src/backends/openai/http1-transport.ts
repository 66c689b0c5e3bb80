import { Pool, type Dispatcher } from "undici";
import { TransportError, type InferenceReply } from "../backend.ts";
import { describeCall, makeReply, tlsConnectOptions, tooLarge, type ReplicaTransport, type TransportContext } from "./replica-transport.ts";
import { toTransportError } from "./transport-errors.ts";

/**
 * HTTP/1.1 keep-alive over an undici Pool (cleartext, or TLS offering only http/1.1 in ALPN). Pipelining stays
 * at 1: an inference call takes seconds, and a pipelined call behind it would wait for all of it.
 */
export class Http1Transport implements ReplicaTransport {
  readonly #ctx: TransportContext;
  readonly #pool: Pool;

  constructor(ctx: TransportContext) {
    this.#ctx = ctx;
    this.#pool = new Pool(ctx.target.origin, {
      // By default the model's max_concurrency: a call beyond the sockets would wait in undici's queue, unseen by
      // the backend, its timeout running (64 sockets held a 256-call model at 64 on one replica). undici opens
      // sockets only as calls need them.
      connections: ctx.connections,
      pipelining: 1,
      // The dispatcher's signal carries the per-call deadline; undici's own 300 s timers would be a second one.
      headersTimeout: 0,
      bodyTimeout: 0,
      connectTimeout: ctx.connectTimeoutMs,
      ...(ctx.target.secure ? { connect: tlsConnectOptions(ctx) } : {}),
    });
    // Emitted once per failed connect; a mid-call reset does not eject the replica.
    this.#pool.on("connectionError", (_origin, _targets, err) => ctx.onConnectFailure(err));
  }

  request(method: "GET" | "POST", path: string, body: string | undefined, signal: AbortSignal): Promise<InferenceReply> {
    return new Promise((resolve, reject) => {
      const call = new Http1Call(resolve, reject, signal, this.#ctx, method, path);
      if (signal.aborted) return call.fail(new Error("aborted before start"));
      signal.addEventListener("abort", call);
      this.#pool.dispatch({ method, path, headers: this.#ctx.headers, body: body ?? null }, call);
    });
  }

  async close(): Promise<void> {
    // Calls in flight or queued fail with this error, which already says "aborted".
    await this.#pool.destroy(new TransportError("aborted", `${this.#ctx.name}: backend closed`));
  }
}

/** Collects one answer. A class with handleEvent rather than closures: one allocation per call on the hot path. */
class Http1Call implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | undefined;
  #settled = false;
  #status = 0;
  #headers: Record<string, string | string[] | undefined> = {};
  #chunks: Buffer[] = [];
  #bytes = 0;

  constructor(
    private readonly resolve: (r: InferenceReply) => void,
    private readonly reject: (e: unknown) => void,
    private readonly signal: AbortSignal,
    private readonly ctx: TransportContext,
    private readonly method: string,
    private readonly path: string,
  ) {}

  /** The signal fired: reject now, even if undici still has the call queued, and tear the request down. */
  handleEvent(): void {
    this.fail(new Error("aborted by signal"));
    this.#controller?.abort(new Error("aborted by signal"));
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    if (this.#settled) controller.abort(new Error("aborted before start"));
    else this.#controller = controller;
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    this.#status = statusCode;
    this.#headers = headers;
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if ((this.#bytes += chunk.length) <= this.ctx.maxResponseBytes) return void this.#chunks.push(chunk);
    const err = tooLarge(this.ctx, this.method, this.path);
    this.#chunks = [];
    this.fail(err);
    controller.abort(err);
  }

  onResponseEnd(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.signal.removeEventListener("abort", this);
    const c = this.#chunks;
    const body = c.length === 1 ? c[0]!.toString("utf8") : Buffer.concat(c).toString("utf8");
    this.resolve(makeReply(this.#status, body, this.#headers["x-request-id"], this.#headers["retry-after"]));
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    this.fail(err);
  }

  fail(err: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    this.signal.removeEventListener("abort", this);
    this.reject(toTransportError(err, describeCall(this.ctx, this.method, this.path), { signal: this.signal }));
  }
}
