/**
 * Answer bodies in the shapes OpenAI (and vLLM, for /classify) return, built by string concatenation from parts
 * serialised once: at zero latency the benchmark spends most simulator time here, and JSON.stringify of a
 * fresh object per answer costs several times more than joining a handful of constant strings.
 */

export type InferencePath = "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/responses" | "/classify";

export const inferencePaths: ReadonlySet<string> = new Set<InferencePath>([
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/embeddings",
  "/v1/responses",
  "/classify",
]);

/** One answer's variable parts. */
export interface AnswerInput {
  /** Sequence number; ids are "<prefix>-sim-<n>". */
  readonly n: number;
  /** The model as a JSON string literal, quotes included (echoed from the request). */
  readonly modelJson: string;
  readonly promptTokens: number;
  /** Number of inputs of an embeddings/classify call (1 for a single string). */
  readonly inputs: number;
}

const words = "the quick brown fox jumps over the lazy dog while simulated tokens stream out".split(" ");

/** Rough and cheap: about four bytes of JSON per token, as OpenAI's rule of thumb for English text. */
export function estimatePromptTokens(body: string): number {
  return Math.max(1, Math.ceil(body.length / 4));
}

export class AnswerBodies {
  readonly #completionTokens: number;
  readonly #textJson: string;
  readonly #embeddingJson: string;

  constructor(completionTokens: number, embeddingDimensions: number) {
    this.#completionTokens = completionTokens;
    const text = Array.from({ length: completionTokens }, (_, i) => words[i % words.length]).join(" ");
    this.#textJson = JSON.stringify(text);
    // A fixed unit vector: same length as the model's, norm 1, so cosine similarity math downstream still works.
    const v = embeddingDimensions > 0 ? Math.round((1 / Math.sqrt(embeddingDimensions)) * 1e6) / 1e6 : 0;
    this.#embeddingJson = `[${Array.from({ length: embeddingDimensions }, (_, i) => (i % 2 ? -v : v)).join(",")}]`;
  }

  render(path: InferencePath, a: AnswerInput): string {
    const created = Math.floor(Date.now() / 1000);
    const p = a.promptTokens;
    const c = this.#completionTokens;
    switch (path) {
      case "/v1/chat/completions":
        return `{"id":"chatcmpl-sim-${a.n}","object":"chat.completion","created":${created},"model":${a.modelJson},"choices":[{"index":0,"message":{"role":"assistant","content":${this.#textJson}},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":${p},"completion_tokens":${c},"total_tokens":${p + c}}}`;
      case "/v1/completions":
        return `{"id":"cmpl-sim-${a.n}","object":"text_completion","created":${created},"model":${a.modelJson},"choices":[{"index":0,"text":${this.#textJson},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":${p},"completion_tokens":${c},"total_tokens":${p + c}}}`;
      case "/v1/responses":
        return `{"id":"resp_sim${a.n}","object":"response","created_at":${created},"status":"completed","model":${a.modelJson},"output":[{"type":"message","id":"msg_sim${a.n}","status":"completed","role":"assistant","content":[{"type":"output_text","text":${this.#textJson},"annotations":[]}]}],"usage":{"input_tokens":${p},"output_tokens":${c},"total_tokens":${p + c}}}`;
      case "/v1/embeddings": {
        let data = "";
        for (let i = 0; i < a.inputs; i++) {
          data += `${i ? "," : ""}{"object":"embedding","index":${i},"embedding":${this.#embeddingJson}}`;
        }
        // vLLM reports completion_tokens: 0 for embeddings; OpenAI omits it. Keeping it lets every usage
        // consumer read the same three fields.
        return `{"object":"list","data":[${data}],"model":${a.modelJson},"usage":{"prompt_tokens":${p},"completion_tokens":0,"total_tokens":${p}}}`;
      }
      case "/classify": {
        let data = "";
        for (let i = 0; i < a.inputs; i++) {
          data += `${i ? "," : ""}{"index":${i},"label":"positive","probs":[0.1,0.9],"num_classes":2}`;
        }
        return `{"id":"classify-sim-${a.n}","object":"list","created":${created},"model":${a.modelJson},"data":[${data}],"usage":{"prompt_tokens":${p},"completion_tokens":0,"total_tokens":${p}}}`;
      }
    }
  }
}

/** OpenAI's error body shape: {"error": {"message", "type", "code"}}. */
export function errorBody(status: number, message: string): string {
  const type = status === 429 ? "rate_limit_error" : status === 401 ? "invalid_request_error" : status >= 500 ? "server_error" : "invalid_request_error";
  const code = status === 429 ? `"rate_limit_exceeded"` : status === 401 ? `"invalid_api_key"` : "null";
  return `{"error":{"message":${JSON.stringify(message)},"type":"${type}","param":null,"code":${code}}}`;
}
