/**
 * The backend that needs no model server: `lote-sentiment` on /classify and `lote-embed` on /v1/embeddings,
 * computed in-process. Replies use the same JSON shapes as vLLM's classify API and OpenAI's embeddings API,
 * so a batch moves from the built-in models to a real server by changing only the model name.
 *
 * The work is synchronous and CPU-bound (tens of thousands of short sentences per second), so there is
 * nothing to cancel halfway: an already-aborted signal is refused up front, anything else runs to the end.
 */
import { randomUUID } from "node:crypto";
import { TransportError, type Backend, type EndpointPath, type InferenceCall, type InferenceReply } from "../backend.ts";
import { builtinModels, findBuiltinModel } from "./builtin-models.ts";
import { embedText, toBase64 } from "./hashing-embedder.ts";
import {
  describeValue,
  InvalidRequestError,
  parseJsonObject,
  readDimensions,
  readEncodingFormat,
  readInputs,
  readLanguage,
} from "./request-body.ts";
import { sentimentModel } from "./sentiment-model.ts";

export interface BuiltinBackendOptions {
  /** For logs and metrics, e.g. "builtin". */
  readonly name: string;
  /** Clock for the `created` field, in milliseconds. Default: Date.now. */
  readonly now?: () => number;
}

export function createBuiltinBackend(options: BuiltinBackendOptions): Backend {
  if (typeof options.name !== "string" || options.name === "") {
    throw new TypeError(`Expected \`name\` to be a non-empty string, got ${describeValue(options.name)}`);
  }
  const now = options.now ?? Date.now;
  // Build the stemmed lexicons now (~0.15 s) rather than inside the first call's timeout.
  const sentiment = sentimentModel();
  let closed = false;

  const handle = (endpoint: EndpointPath, body: Record<string, unknown>, id: string): unknown => {
    const model = body["model"];
    if (typeof model !== "string" || model === "") {
      throw new InvalidRequestError(`Expected \`model\` to be a non-empty string, got ${describeValue(model)}`, "model");
    }
    const known = findBuiltinModel(model);
    if (known === undefined) {
      const names = builtinModels.map((m) => m.name).join(", ");
      throw new InvalidRequestError(`Expected \`model\` to be one of ${names}, got ${describeValue(model)}`, "model");
    }
    if (!(known.endpoints as readonly string[]).includes(endpoint)) {
      throw new InvalidRequestError(`Model ${known.name} is served on ${known.endpoints.join(", ")}, not ${endpoint}`, "model");
    }
    const created = Math.floor(now() / 1000);
    if (known.name === "lote-sentiment") {
      const inputs = readInputs(body);
      const language = readLanguage(body);
      let tokens = 0;
      const data = inputs.map((text, index) => {
        const result = sentiment.classify(text, language);
        tokens += result.tokens;
        return {
          index,
          label: result.label,
          probs: result.probs,
          num_classes: result.probs.length,
          confidence: result.confidence,
          language: result.language,
        };
      });
      return {
        id: `classify-${id}`,
        object: "list",
        created,
        model: known.name,
        data,
        usage: { prompt_tokens: tokens, total_tokens: tokens, completion_tokens: 0 },
      };
    }
    const inputs = readInputs(body);
    const dimensions = readDimensions(body);
    const format = readEncodingFormat(body);
    let tokens = 0;
    const data = inputs.map((text, index) => {
      const { vector, tokens: read } = embedText(text, dimensions);
      tokens += read;
      return { object: "embedding", index, embedding: format === "base64" ? toBase64(vector) : Array.from(vector) };
    });
    return { object: "list", data, model: known.name, usage: { prompt_tokens: tokens, total_tokens: tokens } };
  };

  return {
    name: options.name,
    async infer(call: InferenceCall): Promise<InferenceReply> {
      if (call.signal.aborted) throw new TransportError("aborted", "call aborted before the built-in model ran", { cause: call.signal.reason });
      if (closed) throw new TransportError("connection_refused", `built-in backend ${options.name} is closed`);
      const id = randomUUID().replaceAll("-", "");
      try {
        const reply = handle(call.endpoint, parseJsonObject(call.body), id);
        return { status: 200, body: JSON.stringify(reply), requestId: id };
      } catch (error) {
        if (error instanceof InvalidRequestError) {
          return { status: 400, body: errorBody(error.message, "invalid_request_error", error.param), requestId: id };
        }
        // A bug here is still an answer, not a transport failure: report it as a server would, with a 500.
        const message = `built-in model failed: ${error instanceof Error ? error.message : String(error)}`;
        return { status: 500, body: errorBody(message, "server_error", null), requestId: id };
      }
    },
    async ready() {
      return !closed;
    },
    async close() {
      closed = true;
    },
  };
}

/** OpenAI's error shape: `{"error":{"message","type","param","code"}}`. */
function errorBody(message: string, type: string, param: string | null): string {
  return JSON.stringify({ error: { message, type, param, code: null } });
}
