/**
 * The KServe Open Inference Protocol v2 backend over gRPC: Triton, KServe and MLServer model servers. One
 * ModelInfer per call; OpenAI bodies are mapped to tensors (request-mapping.ts) and answers back (response-mapping.ts).
 */
import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { TransportError, type Backend, type InferenceCall, type InferenceReply } from "../backend.ts";
import { ReplicaSet } from "../openai/replica-set.ts";
import { outcomeOfGrpcError } from "./grpc-outcome.ts";
import { loadInferenceService, type InferenceClient, type ModelInferRequest, type ModelInferResponse } from "./inference-service.ts";
import { InvalidRequestError } from "./invalid-request-error.ts";
import { toInferRequest } from "./request-mapping.ts";
import { toAnswerBody } from "./response-mapping.ts";

export interface KServeBackendOptions {
  /** For logs and metrics, e.g. "kserve:triton-a". Never put a secret here. */
  readonly name: string;
  /**
   * Targets, each "host:port", "grpc://host:port" (plaintext) or "grpcs://host:port" (TLS). A bare host:port
   * uses TLS when `tls` is given. Several targets: each call goes to the one with the fewest calls in flight.
   */
  readonly urls: readonly string[];
  /** The model's name on the inference server (ModelInferRequest.model_name, ModelReady.name). */
  readonly modelName: string;
  /** Default: "" (the server picks a version by its policy). */
  readonly modelVersion?: string;
  /** The BYTES input tensor for text. Default "text_input", Triton's vLLM/TensorRT-LLM convention. */
  readonly inputName?: string;
  /** The BYTES output tensor with the generated text. Default "text_output". Embeddings/classify use it only when set. */
  readonly outputName?: string;
  /** TLS settings for grpcs:// targets. `ca`: PEM text of the roots to trust; default the system roots. */
  readonly tls?: { readonly ca?: string };
  /**
   * The most calls the caller runs on this backend at once (the model's max_concurrency). Default 100. Each target
   * gets one connection per 100 of them (see streamsPerConnection).
   */
  readonly maxConcurrency?: number;
  /**
   * Longest answer read, bytes (grpc-js's grpc.max_receive_message_length); a longer one fails the call as
   * "response_too_large", not retried. Default 64 MiB, as the OpenAI backend's max_response_bytes.
   */
  readonly maxResponseBytes?: number;
}

/**
 * grpc-js refuses answers over 4 MiB by default (gRPC-core's GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH). One batch of
 * 256 inputs × 4096-dim FP32 embeddings is already 4 MiB, so allow 64 MiB.
 */
const defaultMaxResponseBytes = 64 * 1024 * 1024;
/** ready() gives each target this long to answer ServerReady + ModelReady. */
const readyTimeoutMs = 5_000;
/**
 * Calls one connection is counted on to carry. grpc-js runs every call to a target over one HTTP/2 connection and
 * holds calls beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS back in the client, unseen by the server: with a
 * 4-stream server, 12 calls ran 4 at a time. RFC 9113 (§6.5.2) recommends servers allow at least 100 streams, so a
 * target gets ceil(max_concurrency / 100) connections (channels whose options differ, which grpc-js keeps apart).
 */
const streamsPerConnection = 100;

/**
 * A target that cannot be connected to is ejected for 1 s, doubling per failure in a row up to 30 s: the OpenAI
 * backend's ejectBaseMs and ejectMaxMs defaults.
 */
const ejectBaseMs = 1_000;
const ejectMaxMs = 30_000;

/** One connection to a target; a target has ceil(maxConcurrency / 100) of them. */
interface Channel {
  readonly client: InferenceClient;
  outstanding: number;
}

export function createKServeBackend(options: KServeBackendOptions): Backend {
  validate(options);
  const { Client } = loadInferenceService();
  const inputName = options.inputName ?? "text_input";
  const outputName = options.outputName ?? "text_output";
  const maxReceiveBytes = options.maxResponseBytes ?? defaultMaxResponseBytes;
  const perTarget = Math.ceil((options.maxConcurrency ?? streamsPerConnection) / streamsPerConnection);
  /** Per target (configuration order), its channels; the first is the one ready() asks. */
  const targets: Channel[][] = options.urls.map((url) => {
    const { address, secure } = parseTarget(url, options.tls !== undefined);
    const credentials = secure
      ? grpc.credentials.createSsl(options.tls?.ca ? Buffer.from(options.tls.ca) : null)
      : grpc.credentials.createInsecure();
    return Array.from({ length: perTarget }, (_, i) => ({
      // "lote.connection" means nothing to grpc-js but makes each channel's options differ, and so its connection.
      client: new Client(address, credentials, { "grpc.max_receive_message_length": maxReceiveBytes, "lote.connection": i }),
      outstanding: 0,
    }));
  });
  /** Fewest calls in flight per target, ties round-robin, and ejection of targets that cannot be connected to. */
  const replicas = new ReplicaSet(targets.length, { ejectBaseMs, ejectMaxMs, now: () => performance.now() });
  /** Cancels of the calls in flight, so close() can abort them. */
  const inFlight = new Set<() => void>();
  let closed = false;

  /** The target's channel with the fewest calls in flight. */
  function channelOf(target: number): Channel {
    const channels = targets[target]!;
    let best = channels[0]!;
    for (let i = 1; i < channels.length; i++) if (channels[i]!.outstanding < best.outstanding) best = channels[i]!;
    return best;
  }

  /**
   * ModelInfer on the least-loaded target. A target that could not be connected to never got the call (grpc-js
   * fails it with UNAVAILABLE "No connection established" before sending): it is ejected, and the call moves to
   * each other target once, as the OpenAI backend does with its replicas.
   */
  async function inferOnTargets(request: ModelInferRequest, signal: AbortSignal): Promise<ModelInferResponse | InferenceReply> {
    let tried: Set<number> | undefined;
    for (;;) {
      const target = replicas.acquire(tried);
      const channel = channelOf(target);
      channel.outstanding++;
      try {
        const answer = await modelInfer(channel, request, signal);
        replicas.markAnswered(target);
        return answer;
      } catch (error) {
        if (!(error instanceof TransportError) || error.kind !== "connection_refused" || signal.aborted || closed) throw error;
        replicas.markConnectFailure(target);
        (tried ??= new Set()).add(target);
        if (tried.size >= targets.length) throw error;
      } finally {
        channel.outstanding--;
        replicas.release(target);
      }
    }
  }

  function modelInfer(target: Channel, request: ModelInferRequest, signal: AbortSignal): Promise<ModelInferResponse | InferenceReply> {
    return new Promise((resolve, reject) => {
      let cancelledByUs = false;
      const cancel = () => {
        cancelledByUs = true;
        call.cancel(); // RST_STREAM CANCEL; the server sees its call cancelled
      };
      const call = target.client.ModelInfer(request, new grpc.Metadata(), {}, (error, response) => {
        signal.removeEventListener("abort", cancel);
        inFlight.delete(cancel);
        if (!error) return resolve(response!);
        const outcome = outcomeOfGrpcError(error, request.id!, cancelledByUs, maxReceiveBytes);
        return outcome instanceof TransportError ? reject(outcome) : resolve(outcome);
      });
      signal.addEventListener("abort", cancel, { once: true });
      inFlight.add(cancel);
    });
  }

  return {
    name: options.name,

    async infer({ endpoint, body, signal }: InferenceCall): Promise<InferenceReply> {
      if (signal.aborted) throw new TransportError("aborted", "signal aborted before the call");
      if (closed) throw new TransportError("aborted", `backend ${options.name} is closed`);
      const requestId = randomUUID();
      let mapped: ReturnType<typeof toInferRequest>;
      try {
        mapped = toInferRequest(endpoint, body, { modelName: options.modelName, modelVersion: options.modelVersion, inputName }, requestId);
      } catch (error) {
        if (!(error instanceof InvalidRequestError)) throw error;
        return { status: 400, body: JSON.stringify({ error: { message: error.message, type: "invalid_request_error", code: "invalid_request" } }), requestId };
      }
      const answer = await inferOnTargets(mapped.request, signal);
      if ("status" in answer) return answer;
      const replyId = answer.id || mapped.request.id!;
      try {
        const context = { requestId: replyId, outputName, outputNameGiven: options.outputName !== undefined, modelName: options.modelName, now: Math.floor(Date.now() / 1000) };
        return { status: 200, body: toAnswerBody(mapped.plan, answer, context), requestId: replyId };
      } catch (error) {
        if (error instanceof TransportError) throw error;
        throw new TransportError("protocol", `cannot read ModelInfer answer: ${(error as Error).message}`, { cause: error });
      }
    },

    async ready(): Promise<boolean> {
      if (closed) return false;
      const answers = await Promise.all(targets.map(async (channels) => {
        const client = channels[0]!.client;
        const deadline = Date.now() + readyTimeoutMs;
        const ask = <Req>(method: "ServerReady" | "ModelReady", request: Req) =>
          new Promise<boolean>((resolve) => {
            (client[method] as InferenceClient["ModelReady"]).call(client, request as never, new grpc.Metadata(), { deadline },
              (error, response) => resolve(!error && response?.ready === true));
          });
        return (await ask("ServerReady", {})) && (await ask("ModelReady", { name: options.modelName, version: options.modelVersion ?? "" }));
      }));
      return answers.some(Boolean);
    },

    async close(): Promise<void> {
      closed = true;
      for (const cancel of [...inFlight]) cancel();
      for (const { client } of targets.flat()) client.close();
    },
  };
}

function validate(options: KServeBackendOptions): void {
  const found = (value: unknown) => JSON.stringify(value) ?? String(value);
  if (typeof options.name !== "string" || options.name === "") throw new TypeError(`Expected \`name\` to be a non-empty string, got ${found(options.name)}`);
  if (!Array.isArray(options.urls) || options.urls.length === 0) throw new TypeError(`Expected \`urls\` to be a non-empty array of host:port targets, got ${found(options.urls)}`);
  if (typeof options.modelName !== "string" || options.modelName === "") throw new TypeError(`Expected \`modelName\` to be a non-empty string, got ${found(options.modelName)}`);
  for (const key of ["modelVersion", "inputName", "outputName"] as const) {
    const value = options[key];
    if (value !== undefined && (typeof value !== "string" || (key !== "modelVersion" && value === ""))) {
      throw new TypeError(`Expected \`${key}\` to be a non-empty string, got ${found(value)}`);
    }
  }
  for (const url of options.urls) parseTarget(url, false);
  for (const key of ["maxConcurrency", "maxResponseBytes"] as const) {
    const value = options[key];
    if (value !== undefined && (!Number.isInteger(value) || value < 1)) throw new TypeError(`Expected \`${key}\` to be an integer >= 1, got ${found(value)}`);
  }
}

/** "host:port" | "grpc://host:port" | "grpcs://host:port" (IPv6 hosts in brackets: "[::1]:8001"). */
function parseTarget(url: string, tlsByDefault: boolean): { address: string; secure: boolean } {
  const match = typeof url === "string" ? /^(?:(grpcs?):\/\/)?([^/\s]+:\d{1,5})\/?$/.exec(url) : null;
  if (!match) throw new TypeError(`Expected each of \`urls\` to be "host:port", "grpc://host:port" or "grpcs://host:port", got ${JSON.stringify(url)}`);
  const scheme = match[1];
  return { address: match[2]!, secure: scheme === "grpcs" || (scheme === undefined && tlsByDefault) };
}
