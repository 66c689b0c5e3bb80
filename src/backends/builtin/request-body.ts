/**
 * Reads and checks request bodies for the built-in models. Every problem becomes an InvalidRequestError that
 * the backend answers with HTTP 400 and OpenAI's error shape, naming the offending field in `param`, as
 * OpenAI and vLLM do ("Expected `dimensions` to be an integer from 1 to 4096, got 0").
 */
import { parseLanguageHint, type SentimentLanguage } from "./detect-language.ts";
import { embeddingDimensions } from "./hashing-embedder.ts";

export class InvalidRequestError extends Error {
  override readonly name = "InvalidRequestError";
  constructor(
    message: string,
    /** The body field at fault, or null when the body as a whole is. */
    readonly param: string | null,
  ) {
    super(message);
  }
}

/** OpenAI's limit on inputs per embeddings request, applied to /classify as well. */
export const maxInputs = 2048;
/**
 * Characters per request, all inputs together; about OpenAI's 300k-token cap on one embeddings request. The
 * models run synchronously on the event loop at ~10 MB/s (measured on one core), so this also keeps one call
 * near 100 ms and the server responsive to everything else.
 */
export const maxInputCharacters = 1_000_000;

export function parseJsonObject(body: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch (error) {
    throw new InvalidRequestError(`Expected the body to be JSON, got a parse error: ${(error as Error).message}`, null);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new InvalidRequestError(`Expected the body to be a JSON object, got ${describeValue(parsed)}`, null);
  }
  return parsed as Record<string, unknown>;
}

/** `input`: a non-empty string or a non-empty array of non-empty strings. */
export function readInputs(body: Record<string, unknown>): string[] {
  const input = body["input"];
  const inputs = typeof input === "string" ? [input] : input;
  if (!Array.isArray(inputs)) {
    throw new InvalidRequestError(`Expected \`input\` to be a string or an array of strings, got ${describeValue(input)}`, "input");
  }
  if (inputs.length === 0) throw new InvalidRequestError("Expected `input` to hold at least one string, got an empty array", "input");
  if (inputs.length > maxInputs) {
    throw new InvalidRequestError(`Expected \`input\` to hold at most ${maxInputs} strings, got ${inputs.length}`, "input");
  }
  let characters = 0;
  inputs.forEach((item: unknown, index) => {
    const where = typeof input === "string" ? "`input`" : `\`input[${index}]\``;
    if (typeof item !== "string") throw new InvalidRequestError(`Expected ${where} to be a string, got ${describeValue(item)}`, "input");
    if (item.length === 0) throw new InvalidRequestError(`Expected ${where} to be a non-empty string, got ""`, "input");
    characters += item.length;
  });
  if (characters > maxInputCharacters) {
    throw new InvalidRequestError(
      `Expected \`input\` to total at most ${maxInputCharacters} characters, got ${characters}`,
      "input",
    );
  }
  return inputs as string[];
}

/** `language` (classify only): optional pt/en hint, e.g. "pt-BR". */
export function readLanguage(body: Record<string, unknown>): SentimentLanguage | undefined {
  const hint = body["language"];
  if (hint === undefined || hint === null) return undefined;
  const language = typeof hint === "string" ? parseLanguageHint(hint) : undefined;
  if (language === undefined) {
    throw new InvalidRequestError(`Expected \`language\` to be "pt" or "en" (or a tag such as "pt-BR"), got ${describeValue(hint)}`, "language");
  }
  return language;
}

/** `dimensions` (embeddings only): integer in range, default 256. */
export function readDimensions(body: Record<string, unknown>): number {
  const dimensions = body["dimensions"];
  if (dimensions === undefined || dimensions === null) return embeddingDimensions.default;
  if (
    typeof dimensions !== "number" ||
    !Number.isInteger(dimensions) ||
    dimensions < embeddingDimensions.min ||
    dimensions > embeddingDimensions.max
  ) {
    throw new InvalidRequestError(
      `Expected \`dimensions\` to be an integer from ${embeddingDimensions.min} to ${embeddingDimensions.max}, got ${describeValue(dimensions)}`,
      "dimensions",
    );
  }
  return dimensions;
}

/** `encoding_format` (embeddings only): "float" (default) or "base64", as OpenAI accepts. */
export function readEncodingFormat(body: Record<string, unknown>): "float" | "base64" {
  const format = body["encoding_format"];
  if (format === undefined || format === null || format === "float") return "float";
  if (format === "base64") return "base64";
  throw new InvalidRequestError(`Expected \`encoding_format\` to be "float" or "base64", got ${describeValue(format)}`, "encoding_format");
}

/** A short, safe rendering of what was found: type plus a clipped value. */
export function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === "object") return "an object";
  return `${typeof value} ${String(value)}`;
}
