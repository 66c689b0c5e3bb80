/**
 * Token estimates without a tokenizer: ~4 characters a token, OpenAI's own rule of thumb for English text. Used for
 * tokens_per_minute accounting and EstimateBatch; real usage comes from backend responses.
 */
const charsPerToken = 4;
/**
 * The most output tokens one request is estimated at: what lote.items.est_tokens (integer) holds. A declared 1e300
 * became a bigint no int64 field of EstimateBatch's answer could carry (INTERNAL); capped, a million requests sum to
 * ~2^51, still exact in a double.
 */
const maxOutputEstimate = 2 ** 31 - 1;

/** Which field declares the body's output limit: the first present of OpenAI's three names for it. */
export function outputLimitKey(body: Record<string, unknown>): "max_completion_tokens" | "max_tokens" | "max_output_tokens" | undefined {
  if (body.max_completion_tokens != null) return "max_completion_tokens";
  if (body.max_tokens != null) return "max_tokens";
  if (body.max_output_tokens != null) return "max_output_tokens";
  return undefined;
}

export function estimateTokens(body: Record<string, unknown>, endpoint: string | undefined, defaultMaxOutput: number): { input: number; output: number } {
  const chars = textLength(body.messages) + textLength(body.prompt) + textLength(body.input) + textLength(body.instructions);
  const input = Math.max(1, Math.ceil(chars / charsPerToken));
  const key = outputLimitKey(body);
  const declared = key && body[key];
  // Embeddings and classification produce no output tokens.
  const producesText = endpoint !== "/v1/embeddings" && endpoint !== "/classify";
  const perChoice = typeof declared === "number" && declared >= 0 ? Math.min(Math.floor(declared), maxOutputEstimate) : producesText ? defaultMaxOutput : 0;
  // max_tokens bounds each choice: `n: 5` may produce five times as many tokens, and is billed so (and /v1/completions
  // generates `best_of` choices server-side, at least n, billing them all). Counted once, EstimateBatch showed a fifth
  // of the cost and tokens_per_minute let five times the limit through.
  const output = perChoice === 0 ? 0 : Math.min(perChoice * choices(body, endpoint), maxOutputEstimate);
  return { input, output };
}

/** How many completions one request asks for: n (chat, completions), or best_of when larger (completions). */
function choices(body: Record<string, unknown>, endpoint: string | undefined): number {
  if (endpoint !== "/v1/chat/completions" && endpoint !== "/v1/completions") return 1;
  const count = (v: unknown) => (typeof v === "number" && Number.isFinite(v) && v > 1 ? Math.floor(v) : 1);
  return endpoint === "/v1/completions" ? Math.max(count(body.n), count(body.best_of)) : count(body.n);
}

/**
 * Characters of text in a value: strings, arrays of them, message objects' `content` and content parts' `text`;
 * a number (a token id) counts as one token's worth.
 * A plain recursive function, not a closure made per call: ~5x faster over 50,000 chat bodies (18-24 -> 4-5 ms),
 * which matters because CreateBatch runs this for every request (bench/ingest.ts).
 */
function textLength(v: unknown): number {
  if (typeof v === "string") return v.length;
  // A token id: /v1/completions' prompt and /v1/embeddings' input may be arrays of token ids (or arrays of them),
  // one token each. Counted as nothing, 8,000 tokens were estimated at 1.
  if (typeof v === "number") return charsPerToken;
  if (typeof v !== "object" || v === null) return 0;
  if (Array.isArray(v)) {
    let n = 0;
    for (let i = 0; i < v.length; i++) n += textLength(v[i]);
    return n;
  }
  const o = v as Record<string, unknown>;
  // Message content parts ({type: "text", text}) and plain contents.
  let n = typeof o.text === "string" ? o.text.length : 0;
  if (o.content !== undefined) n += textLength(o.content);
  return n;
}
