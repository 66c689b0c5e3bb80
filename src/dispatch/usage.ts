/** Token usage from a backend response body: OpenAI chat/completions/embeddings and the Responses API names. */
export function usageOf(body: string): { input: number; output: number; total: number } {
  // Most bodies are small; one parse per result is ~2 µs, far below a backend round trip.
  let u: Record<string, unknown> | undefined;
  try {
    u = JSON.parse(body)?.usage;
  } catch {
    return { input: 0, output: 0, total: 0 };
  }
  if (!u || typeof u !== "object") return { input: 0, output: 0, total: 0 };
  const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? Math.max(0, Math.round(v)) : 0);
  const input = num(u.prompt_tokens ?? u.input_tokens);
  const output = num(u.completion_tokens ?? u.output_tokens);
  const total = num(u.total_tokens) || input + output;
  return { input, output, total };
}
