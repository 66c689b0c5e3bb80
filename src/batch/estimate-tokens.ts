/**
 * Token estimates without a tokenizer: ~4 characters a token, OpenAI's own rule of thumb for English text. Used for
 * tokens_per_minute accounting and EstimateBatch; real usage comes from backend responses.
 */
const charsPerToken = 4;

export function estimateTokens(body: Record<string, unknown>, endpoint: string | undefined, defaultMaxOutput: number): { input: number; output: number } {
  let chars = 0;
  const count = (v: unknown): void => {
    if (typeof v === "string") chars += v.length;
    else if (Array.isArray(v)) for (const x of v) count(x);
    else if (v && typeof v === "object") {
      const o = v as Record<string, unknown>;
      // Message content parts ({type: "text", text}) and plain contents.
      if (typeof o.text === "string") chars += o.text.length;
      if (o.content !== undefined) count(o.content);
    }
  };
  count(body.messages);
  count(body.prompt);
  count(body.input);
  count(body.instructions);
  const input = Math.max(1, Math.ceil(chars / charsPerToken));
  const declared = body.max_completion_tokens ?? body.max_tokens ?? body.max_output_tokens;
  // Embeddings and classification produce no output tokens.
  const producesText = endpoint !== "/v1/embeddings" && endpoint !== "/classify";
  const output = typeof declared === "number" && declared >= 0 ? Math.floor(declared) : producesText ? defaultMaxOutput : 0;
  return { input, output };
}
