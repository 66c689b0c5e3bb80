/**
 * Checks a batch's requests the way CreateBatch, RunBatch and EstimateBatch all do, and turns them into the rows the
 * store writes. Every problem becomes a field violation naming the request index and custom_id; nothing is written
 * unless there are none.
 */
import type { EndpointPath } from "../backends/backend.ts";
import type { ModelConfig } from "../config/config.ts";
import { estimateTokens, outputLimitKey } from "./estimate-tokens.ts";
import type { RequestDigest } from "./request-digest.ts";

export interface FieldViolation {
  readonly field: string;
  readonly description: string;
  readonly reason: string;
}

export interface RequestInput {
  readonly customId: string;
  /** google.protobuf.Struct arrives as a plain object. */
  readonly body?: Record<string, unknown>;
  readonly bodyJson: Uint8Array;
}

export interface ValidRequest {
  readonly customId: string;
  readonly body: string;
  /** body_json's bytes when the body came that way: the store copies them as they are instead of re-encoding `body`. */
  readonly bodyUtf8?: Uint8Array;
  readonly estTokens: number;
  readonly inputTokens: number;
  readonly outputTokens: number;
}

export interface RequestLimits {
  readonly maxRequests: number;
  readonly maxBodyBytes: number;
  readonly models: ReadonlyMap<string, ModelConfig>;
}

// OpenAI does not publish a custom_id limit; 64 keeps ids index- and log-friendly while fitting UUIDs and paths.
export const maxCustomIdLength = 64;
// Reporting stops here: a 50,000-line batch with one systematic mistake should not produce a 5 MB error.
export const maxViolations = 100;

// ignoreBOM: a byte-order mark stays in the text, and JSON.parse refuses it (RFC 8259 §8.1: JSON text MUST NOT begin
// with one). Dropped here, it was dropped from small batches only: a batch stored by COPY keeps the bytes as sent
// (bodyUtf8), and every request of a 1,001-request batch with a BOM then failed at the backend.
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export function validateRequests(
  endpoint: EndpointPath | undefined,
  requests: readonly RequestInput[],
  limits: RequestLimits,
): { ok: true; model: string; requests: ValidRequest[] } | { ok: false; violations: FieldViolation[] } {
  const checker = new RequestChecker(endpoint, requests, limits);
  const out: ValidRequest[] = new Array(requests.length);
  while (!checker.done) {
    const i = checker.checked;
    const row = checker.checkNext();
    if (row) out[i] = row;
  }
  if (checker.violations.length > 0) return { ok: false, violations: checker.violations };
  return { ok: true, model: checker.model!, requests: out };
}

// Built only for messages, by a plain function rather than a closure per request: under tsx each closure also
// costs a __name() call (Object.defineProperty); closure and template together were ~20 ms of a 50,000-request batch.
function label(r: RequestInput): string {
  return r.customId ? ` (custom_id "${r.customId.slice(0, maxCustomIdLength)}")` : "";
}

/** Thrown by RequestChecker.rows() at the first invalid request, once the rest was checked too. */
export class InvalidRequests extends Error {
  constructor(readonly violations: readonly FieldViolation[]) {
    super(`${violations.length} invalid request field(s), first ${violations[0]?.field}`);
  }
}

/**
 * validateRequests one request at a time, so CreateBatch can check a big batch while its COPY runs (Node checks
 * on one core while Postgres inserts on the other; see src/store/create-batch.ts). Same checks, same order, same
 * violations as validateRequests.
 */
export class RequestChecker {
  /** Problems found so far, in request order, at most 100. */
  readonly violations: FieldViolation[] = [];
  /** The batch's model: that of the first request naming one. */
  model: string | undefined;
  /** How many requests were checked; the next one is requests[checked]. */
  checked = 0;
  #modelAt = -1;
  readonly #seen = new Map<string, number>();

  constructor(
    private readonly endpoint: EndpointPath | undefined,
    private readonly requests: readonly RequestInput[],
    private readonly limits: RequestLimits,
    /** Fed every valid request, in order, when the call has a request_id. */
    private readonly digest?: RequestDigest,
  ) {
    if (!endpoint) this.#add("endpoint", "expected one of ENDPOINT_CHAT_COMPLETIONS, ENDPOINT_COMPLETIONS, ENDPOINT_EMBEDDINGS, ENDPOINT_RESPONSES, ENDPOINT_CLASSIFY", "ENDPOINT_UNSPECIFIED");
    if (requests.length === 0) this.#add("requests", "expected at least one request, got an empty batch", "EMPTY_BATCH");
    if (requests.length > limits.maxRequests) {
      this.#add("requests", `expected at most ${limits.maxRequests} requests, got ${requests.length}`, "TOO_MANY_REQUESTS");
      this.checked = requests.length; // none is looked at
    }
  }

  /** True when nothing is left to check: every request was, or 100 violations were found. */
  get done(): boolean {
    return this.checked >= this.requests.length || this.violations.length >= maxViolations;
  }

  /**
   * The rows of the requests not checked yet, checked as they are pulled. At the first violation (or if there
   * already was one) it checks the rest for more, then throws InvalidRequests with all of them.
   */
  *rows(): Generator<ValidRequest, void, undefined> {
    while (!this.done && this.violations.length === 0) {
      const row = this.checkNext();
      if (this.violations.length === 0) yield row!;
    }
    if (this.violations.length > 0) {
      this.finish();
      throw new InvalidRequests(this.violations);
    }
  }

  /** Checks what is left, for its violations only. */
  finish(): readonly FieldViolation[] {
    while (!this.done) this.checkNext();
    return this.violations;
  }

  /** Checks requests[checked]: its row, or undefined when it has a problem (then recorded in `violations`). */
  checkNext(): ValidRequest | undefined {
    const i = this.checked++;
    const r = this.requests[i]!;
    const { limits, endpoint } = this;
    const where = `requests[${i}]`;
    if (!r.customId) this.#add(`${where}.custom_id`, "expected a non-empty custom_id", "MISSING_CUSTOM_ID");
    else if (longerThan(r.customId, maxCustomIdLength)) this.#add(`${where}.custom_id`, `expected at most ${maxCustomIdLength} characters, got ${characters(r.customId)}`, "CUSTOM_ID_TOO_LONG");
    else if (r.customId.includes("\0")) this.#add(`${where}.custom_id`, expectedNoNul("a custom_id", r.customId), "NUL_CHARACTER");
    else {
      const first = this.#seen.get(r.customId);
      if (first !== undefined) this.#add(`${where}.custom_id`, `duplicate custom_id "${r.customId}", first used by requests[${first}]`, "DUPLICATE_CUSTOM_ID");
      else this.#seen.set(r.customId, i);
    }
    const hasStruct = r.body !== undefined;
    const hasJson = r.bodyJson.length > 0;
    if (hasStruct && hasJson) return this.#add(`${where}.body`, `expected exactly one of body and body_json, got both${label(r)}`, "AMBIGUOUS_BODY");
    if (!hasStruct && !hasJson) return this.#add(`${where}.body`, `expected a JSON object body${label(r)}, got none`, "MISSING_BODY");
    let text: string;
    let parsed: unknown;
    if (hasJson) {
      if (r.bodyJson.length > limits.maxBodyBytes) return this.#add(`${where}.body_json`, `expected at most ${limits.maxBodyBytes} bytes${label(r)}, got ${r.bodyJson.length}`, "BODY_TOO_LARGE");
      try {
        text = decoder.decode(r.bodyJson);
        parsed = JSON.parse(text);
      } catch (err) {
        const bom = r.bodyJson[0] === 0xef && r.bodyJson[1] === 0xbb && r.bodyJson[2] === 0xbf ? " (it begins with a UTF-8 byte-order mark)" : "";
        return this.#add(`${where}.body_json`, `expected UTF-8 JSON${label(r)}${bom}: ${(err as Error).message}`, "INVALID_JSON");
      }
    } else {
      parsed = r.body;
      text = JSON.stringify(r.body);
      // The limit is in UTF-8 bytes, as for body_json; a UTF-16 length under a third of it cannot be over it.
      const bytes = text.length * 3 <= limits.maxBodyBytes ? text.length : Buffer.byteLength(text);
      if (bytes > limits.maxBodyBytes) return this.#add(`${where}.body`, `expected at most ${limits.maxBodyBytes} bytes${label(r)}, got ${bytes}`, "BODY_TOO_LARGE");
    }
    const field = hasJson ? `${where}.body_json` : `${where}.body`;
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      return this.#add(field, `expected a JSON object${label(r)}, got ${Array.isArray(parsed) ? "an array" : parsed === null ? "null" : typeof parsed}`, "BODY_NOT_OBJECT");
    }
    const m = (parsed as Record<string, unknown>).model;
    if (typeof m !== "string" || m === "") return this.#add(`${field}.model`, `expected a non-empty string model${label(r)}`, "MISSING_MODEL");
    if (this.model === undefined) {
      this.model = m;
      this.#modelAt = i;
      const config = limits.models.get(m);
      if (!config) this.#add(`${field}.model`, `no backend serves model "${m}"; configured models: ${[...limits.models.keys()].join(", ")}`, "UNKNOWN_MODEL");
      else if (endpoint && !config.endpoints.includes(endpoint)) this.#add("endpoint", `model "${m}" does not serve ${endpoint}; it serves ${config.endpoints.join(", ")}`, "ENDPOINT_NOT_SERVED");
    } else if (m !== this.model) {
      return this.#add(`${field}.model`, `expected model "${this.model}" (as requests[${this.#modelAt}]) since a batch has one model, got "${m}"${label(r)}`, "MODEL_MISMATCH");
    }
    // A streamed answer arrives as server-sent events: there is no one JSON answer to store, and the usage may be
    // missing. Said now rather than stored as a 200 result nobody can read as JSON.
    if ((parsed as Record<string, unknown>).stream === true) {
      return this.#add(`${field}.stream`, `expected stream to be absent or false${label(r)}: a batch stores each answer whole`, "STREAMING_NOT_SUPPORTED");
    }
    // JSON.parse reads a number beyond a double (1e400) as Infinity: no count to estimate, and no backend takes it.
    const limitKey = outputLimitKey(parsed as Record<string, unknown>);
    const limit = limitKey && (parsed as Record<string, unknown>)[limitKey];
    if (typeof limit === "number" && !Number.isFinite(limit)) {
      return this.#add(`${field}.${limitKey}`, `expected a finite number of tokens${label(r)}, got one beyond a double's range (read as ${limit})`, "TOKENS_OUT_OF_RANGE");
    }
    const config = limits.models.get(m);
    const est = estimateTokens(parsed as Record<string, unknown>, endpoint, config?.defaultMaxOutputTokens ?? 1024);
    this.digest?.addRequest(r.customId, hasJson ? r.bodyJson : (parsed as Record<string, unknown>));
    return {
      customId: r.customId, body: text, bodyUtf8: hasJson ? r.bodyJson : undefined,
      estTokens: est.input + est.output, inputTokens: est.input, outputTokens: est.output,
    };
  }

  #add(field: string, description: string, reason: string): undefined {
    if (this.violations.length < maxViolations) this.violations.push({ field, description, reason });
    return undefined;
  }
}

export interface BatchOptionsInput {
  readonly metadata: Record<string, string>;
  readonly completionWindowSeconds: number | undefined;
  readonly priority: number;
  readonly requestId: string;
}

export const defaultCompletionWindowSeconds = 24 * 3600;
/** The priorities users may set. RunBatch's batches run above them (src/api/run-batch.ts). */
export const minPriority = -100;
export const maxPriority = 100;

/**
 * Says why `value` cannot be stored when it holds U+0000: PostgreSQL text and jsonb cannot, and such a value failed
 * its whole statement (22021 invalid byte sequence, 22P05 unsupported Unicode escape) as INTERNAL. Request bodies
 * need no check: JSON text cannot hold a raw NUL, and a body is stored as its JSON text, a NUL in it escaped.
 */
export function expectedNoNul(what: string, value: string): string {
  return `expected ${what} without NUL characters (U+0000), which PostgreSQL cannot store; got one at index ${value.indexOf("\0")}`;
}

/** A batch id a call names: anything else is looked up, and not finding it is NOT_FOUND. */
export function validateBatchId(field: string, id: string): FieldViolation[] {
  if (id === "") return [{ field, description: "expected a batch id (batch_...), got an empty string", reason: "MISSING_BATCH_ID" }];
  if (id.includes("\0")) return [{ field, description: expectedNoNul("a batch id", id), reason: "NUL_CHARACTER" }];
  return [];
}

/** metadata (OpenAI: ≤ 16 pairs, key ≤ 64, value ≤ 512), completion window (1 min to 7 days), priority, request_id; no NULs. */
export function validateBatchOptions(o: BatchOptionsInput): FieldViolation[] {
  const v: FieldViolation[] = [];
  const keys = Object.keys(o.metadata);
  if (keys.length > 16) v.push({ field: "metadata", description: `expected at most 16 pairs, got ${keys.length}`, reason: "TOO_MANY_METADATA_PAIRS" });
  for (const k of keys) {
    const field = `metadata[${JSON.stringify(k.slice(0, 64))}]`;
    const value = o.metadata[k]!;
    if (longerThan(k, 64)) v.push({ field: `metadata[${JSON.stringify(k.slice(0, 20) + "…")}]`, description: `expected a key of at most 64 characters, got ${characters(k)}`, reason: "METADATA_KEY_TOO_LONG" });
    else if (k.includes("\0")) v.push({ field, description: expectedNoNul("a key", k), reason: "NUL_CHARACTER" });
    if (longerThan(value, 512)) v.push({ field, description: `expected a value of at most 512 characters, got ${characters(value)}`, reason: "METADATA_VALUE_TOO_LONG" });
    else if (value.includes("\0")) v.push({ field, description: expectedNoNul("a value", value), reason: "NUL_CHARACTER" });
  }
  const w = o.completionWindowSeconds;
  if (w !== undefined && (w < 60 || w > 7 * 24 * 3600)) {
    v.push({ field: "completion_window", description: `expected 1 minute to 7 days (60s to 604800s), got ${w}s`, reason: "WINDOW_OUT_OF_RANGE" });
  }
  if (o.priority < minPriority || o.priority > maxPriority) v.push({ field: "priority", description: `expected ${minPriority} to ${maxPriority}, got ${o.priority}`, reason: "PRIORITY_OUT_OF_RANGE" });
  if (longerThan(o.requestId, 128)) v.push({ field: "request_id", description: `expected at most 128 characters, got ${characters(o.requestId)}`, reason: "REQUEST_ID_TOO_LONG" });
  else if (o.requestId.includes("\0")) v.push({ field: "request_id", description: expectedNoNul("a request_id", o.requestId), reason: "NUL_CHARACTER" });
  return v;
}

/**
 * Characters as the limits state them and Postgres's length() counts them: code points, not UTF-16 units. Counted by
 * `.length`, a custom_id of 40 emoji was refused as "got 80" against a limit of 64 characters.
 */
function characters(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/** `characters(s) > max`, without walking the string when its UTF-16 length already fits (every code point is 1-2 units). */
function longerThan(s: string, max: number): boolean {
  return s.length > max && characters(s) > max;
}
