export interface Usage {
  readonly input: number;
  readonly output: number;
  readonly total: number;
}

const none: Usage = { input: 0, output: 0, total: 0 };

/**
 * The most tokens one answer may report. The counts are stored as bigint and summed per batch; a backend that
 * reported 1e21 (JSON "1e+21", not a bigint) or enough to overflow a batch's sum made every completion flush of the
 * node fail, and retry, forever. 2^31 − 1 per request is far beyond any real answer, and a million of them still
 * sum well inside a bigint.
 */
const maxTokens = 2 ** 31 - 1;

/** Token usage from a backend response body: OpenAI chat/completions/embeddings and the Responses API names. */
export function usageOf(body: string): Usage {
  const fast = topLevelUsage(body);
  if (fast !== undefined) return fromObject(fast);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return none;
  }
  return fromObject((parsed as { usage?: unknown } | null)?.usage);
}

function fromObject(u: unknown): Usage {
  if (!u || typeof u !== "object") return none;
  const o = u as Record<string, unknown>;
  const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? Math.min(maxTokens, Math.max(0, Math.round(v))) : 0);
  const input = num(o.prompt_tokens ?? o.input_tokens);
  const output = num(o.completion_tokens ?? o.output_tokens);
  const total = num(o.total_tokens) || input + output;
  return { input, output, total };
}

/**
 * The top-level "usage" object without parsing the whole body: JSON.parse of every response was 2.5% of a worker's
 * time at zero backend latency (bench/dispatch.ts (a)), for a few numbers near the end. Parses only the object
 * after the last `"usage":`, and only if the text after it closes exactly one level (so the key is a member of the
 * top-level object, not of a nested one, nor text inside a string). Undefined: no usage key at all (`null` then),
 * or anything unusual, and the caller parses the whole body.
 */
function topLevelUsage(body: string): unknown {
  const key = body.lastIndexOf('"usage"');
  if (key < 0) return body.includes("usage") ? undefined : null;
  if (body.charCodeAt(key - 1) === 92 /* \ */) return undefined;
  let i = key + 7;
  while (isSpace(body.charCodeAt(i))) i++;
  if (body.charCodeAt(i) !== 58 /* : */) return undefined;
  i++;
  while (isSpace(body.charCodeAt(i))) i++;
  if (body.charCodeAt(i) !== 123 /* { */) return undefined;
  const start = i;
  const end = scanClose(body, start, 0);
  if (end < 0) return undefined;
  // After the usage object: more members of the same object, then exactly its closing brace.
  if (scanClose(body, end + 1, 1) !== body.trimEnd().length - 1) return undefined;
  try {
    return JSON.parse(body.slice(start, end + 1));
  } catch {
    return undefined;
  }
}

/** Index of the bracket that takes the depth from `depth` at `from` to depth 0 (the one that closes), or -1. */
function scanClose(s: string, from: number, depth: number): number {
  let inString = false;
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (inString) {
      if (c === 92 /* \ */) i++;
      else if (c === 34 /* " */) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123 || c === 91) depth++;
    else if (c === 125 || c === 93) {
      depth--;
      if (depth === 0) return i;
      if (depth < 0) return -1;
    }
  }
  return -1;
}

function isSpace(c: number): boolean {
  return c === 32 || c === 10 || c === 13 || c === 9;
}
