import { TransportError, type Backend, type InferenceCall, type InferenceReply } from "../backend.ts";
import { AlpnTransport } from "./alpn-transport.ts";
import { H2Transport } from "./h2-transport.ts";
import { Http1Transport } from "./http1-transport.ts";
import { resolveOptions, type OpenAIBackendOptions, type ReplicaTarget } from "./openai-backend-options.ts";
import { ReplicaSet, type ReplicaState } from "./replica-set.ts";
import type { ReplicaTransport } from "./replica-transport.ts";

/** How long `ready()` waits for a replica to answer its health probe. */
const READY_TIMEOUT_MS = 2_000;

export interface OpenAIReplicaState extends ReplicaState {
  /** The URL as configured, without credentials. */
  readonly url: string;
  /** The wire protocol in use; for https:// with "auto", "alpn" until the first connect decided it. */
  readonly protocol: "http1" | "h2" | "alpn";
}

/**
 * The OpenAI-compatible HTTP backend (vLLM, SGLang, TGI, llama.cpp server, Ollama, OpenAI). POSTs the user's
 * body unchanged to `<replica base><endpoint>` on the least-loaded replica and reports the answer; retries are
 * the dispatcher's, except one case handled here: a call whose connection could not even be established (refused,
 * or not done within connectTimeoutMs) was never sent, so it moves to the next replica at once rather than burning
 * an attempt.
 */
export class OpenAIBackend implements Backend {
  readonly name: string;
  readonly #targets: readonly ReplicaTarget[];
  readonly #transports: readonly ReplicaTransport[];
  readonly #replicas: ReplicaSet;
  readonly #timeoutMs: number | undefined;
  #closed = false;

  constructor(options: OpenAIBackendOptions) {
    const o = resolveOptions(options);
    this.name = o.name;
    this.#targets = o.targets;
    this.#timeoutMs = o.requestTimeoutMs;
    this.#replicas = new ReplicaSet(o.targets.length, { ejectBaseMs: o.ejectBaseMs, ejectMaxMs: o.ejectMaxMs, now: o.now });
    const headers: Record<string, string> = { "content-type": "application/json", "user-agent": "lote" };
    if (o.apiKey !== undefined) headers.authorization = `Bearer ${o.apiKey}`;
    this.#transports = o.targets.map((target, i) => {
      const ctx = {
        name: o.name,
        target,
        headers,
        connections: o.connectionsPerReplica,
        streamsPerSession: o.streamsPerSession,
        now: o.now,
        connectTimeoutMs: o.connectTimeoutMs,
        maxResponseBytes: o.maxResponseBytes,
        tls: o.tls,
        onConnectFailure: () => this.#replicas.markConnectFailure(i),
      };
      return target.wire === "http1" ? new Http1Transport(ctx) : target.wire === "h2" ? new H2Transport(ctx) : new AlpnTransport(ctx);
    });
  }

  infer(call: InferenceCall): Promise<InferenceReply> {
    if (this.#closed) return Promise.reject(new TransportError("aborted", `${this.name}: backend closed`));
    if (this.#timeoutMs === undefined) return this.#attempt(call.endpoint, call.body, call.signal, undefined);
    return this.#withTimeout(call, this.#timeoutMs);
  }

  /**
   * One call on the least-loaded replica; on a connect failure (`TransportError.connectFailed`: refused or timed
   * out), the same call on each other replica once. A 5xx,
   * a reset or a timeout counts against the replica (outlier ejection, ReplicaSet.markCallFailure); a timeout is
   * our signal fired with reason "timeout", the dispatcher's or #withTimeout's.
   */
  #attempt(endpoint: string, body: string, signal: AbortSignal, tried: Set<number> | undefined): Promise<InferenceReply> {
    const i = this.#replicas.acquire(tried);
    const t = this.#targets[i]!;
    return this.#transports[i]!.request("POST", t.basePath + endpoint, body, signal).then(
      (reply) => {
        this.#replicas.release(i);
        if (reply.status >= 500) this.#replicas.markCallFailure(i);
        else this.#replicas.markAnswered(i);
        return reply;
      },
      (err: TransportError) => {
        this.#replicas.release(i);
        if (this.#closed) throw err;
        if (err.kind === "connection_reset" || err.kind === "timeout" || (err.kind === "aborted" && signal.reason === "timeout")) {
          this.#replicas.markCallFailure(i);
        }
        // A connect that timed out sent nothing either: a replica whose host is gone (no RST, SYN unanswered) or
        // that accepts but never completes TLS or sends SETTINGS failed each call placed on it as "timeout" after
        // connectTimeoutMs (10 s), one attempt spent each, while the other replicas were healthy.
        if (!err.connectFailed || signal.aborted) throw err;
        const next = tried ?? new Set<number>();
        next.add(i);
        if (next.size >= this.#targets.length) throw err;
        return this.#attempt(endpoint, body, signal, next);
      },
    );
  }

  /** Backend-own deadline: a child signal that also fires after `ms`, reported as "timeout", not "aborted". */
  #withTimeout(call: InferenceCall, ms: number): Promise<InferenceReply> {
    const ac = new AbortController();
    const onAbort = () => ac.abort(call.signal.reason);
    if (call.signal.aborted) onAbort();
    else call.signal.addEventListener("abort", onAbort, { once: true });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort("timeout");
    }, ms);
    return this.#attempt(call.endpoint, call.body, ac.signal, undefined).then(
      (reply) => {
        clearTimeout(timer);
        call.signal.removeEventListener("abort", onAbort);
        return reply;
      },
      (err: TransportError) => {
        clearTimeout(timer);
        call.signal.removeEventListener("abort", onAbort);
        if (timedOut && !call.signal.aborted) throw new TransportError("timeout", `${this.name}: no answer within ${ms} ms`, { cause: err });
        throw err;
      },
    );
  }

  /** True when at least one replica answers GET /health or GET /v1/models with a status below 500 within 2 s. */
  async ready(): Promise<boolean> {
    if (this.#closed) return false;
    const signal = AbortSignal.timeout(READY_TIMEOUT_MS);
    const probe = async (i: number): Promise<void> => {
      const base = this.#targets[i]!.basePath;
      for (const path of ["/health", "/v1/models"]) {
        const reply = await this.#transports[i]!.request("GET", base + path, undefined, signal).catch(() => undefined);
        if (reply && reply.status < 500) return;
      }
      throw new Error("not ready");
    };
    return Promise.any(this.#targets.map((_, i) => probe(i))).then(() => true, () => false);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#transports.map((t) => t.close()));
  }

  /** Per replica: load, ejection and protocol, in configuration order. */
  state(): OpenAIReplicaState[] {
    return this.#replicas.state().map((s, i) => {
      const t = this.#transports[i]!;
      const protocol = t instanceof AlpnTransport ? (t.negotiated ?? "alpn") : this.#targets[i]!.wire;
      return { ...s, url: this.#targets[i]!.display, protocol };
    });
  }
}

export function createOpenAIBackend(options: OpenAIBackendOptions): OpenAIBackend {
  return new OpenAIBackend(options);
}
