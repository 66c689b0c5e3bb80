/**
 * Checks a batch's requests the way CreateBatch, RunBatch and EstimateBatch all do, and turns them into the rows the
 * store writes. Every problem becomes a field violation naming the request index and custom_id; nothing is written
 * unless there are none.
 */
import type { EndpointPath } from "../backends/backend.ts";
import type { ModelConfig } from "../config/config.ts";
import { estimateTokens } from "./estimate-tokens.ts";

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
const maxViolations = 100;

const decoder = new TextDecoder("utf-8", { fatal: true });

export function validateRequests(
  endpoint: EndpointPath | undefined,
  requests: readonly RequestInput[],
  limits: RequestLimits,
): { ok: true; model: string; requests: ValidRequest[] } | { ok: false; violations: FieldViolation[] } {
  const violations: FieldViolation[] = [];
  const add = (field: string, description: string, reason: string) => {
    if (violations.length < maxViolations) violations.push({ field, description, reason });
  };
  if (!endpoint) add("endpoint", "expected one of ENDPOINT_CHAT_COMPLETIONS, ENDPOINT_COMPLETIONS, ENDPOINT_EMBEDDINGS, ENDPOINT_RESPONSES, ENDPOINT_CLASSIFY", "ENDPOINT_UNSPECIFIED");
  if (requests.length === 0) add("requests", "expected at least one request, got an empty batch", "EMPTY_BATCH");
  if (requests.length > limits.maxRequests) {
    add("requests", `expected at most ${limits.maxRequests} requests, got ${requests.length}`, "TOO_MANY_REQUESTS");
    return { ok: false, violations };
  }
  const seen = new Map<string, number>();
  const out: ValidRequest[] = new Array(requests.length);
  let model: string | undefined;
  let modelAt = -1;
  for (let i = 0; i < requests.length && violations.length < maxViolations; i++) {
    const r = requests[i]!;
    const where = `requests[${i}]`;
    const label = r.customId ? ` (custom_id "${r.customId.slice(0, maxCustomIdLength)}")` : "";
    if (!r.customId) add(`${where}.custom_id`, "expected a non-empty custom_id", "MISSING_CUSTOM_ID");
    else if (r.customId.length > maxCustomIdLength) add(`${where}.custom_id`, `expected at most ${maxCustomIdLength} characters, got ${r.customId.length}`, "CUSTOM_ID_TOO_LONG");
    else {
      const first = seen.get(r.customId);
      if (first !== undefined) add(`${where}.custom_id`, `duplicate custom_id "${r.customId}", first used by requests[${first}]`, "DUPLICATE_CUSTOM_ID");
      else seen.set(r.customId, i);
    }
    const hasStruct = r.body !== undefined;
    const hasJson = r.bodyJson.length > 0;
    if (hasStruct && hasJson) { add(`${where}.body`, `expected exactly one of body and body_json, got both${label}`, "AMBIGUOUS_BODY"); continue; }
    if (!hasStruct && !hasJson) { add(`${where}.body`, `expected a JSON object body${label}, got none`, "MISSING_BODY"); continue; }
    let text: string;
    let parsed: unknown;
    if (hasJson) {
      if (r.bodyJson.length > limits.maxBodyBytes) { add(`${where}.body_json`, `expected at most ${limits.maxBodyBytes} bytes${label}, got ${r.bodyJson.length}`, "BODY_TOO_LARGE"); continue; }
      try {
        text = decoder.decode(r.bodyJson);
        parsed = JSON.parse(text);
      } catch (err) {
        add(`${where}.body_json`, `expected UTF-8 JSON${label}: ${(err as Error).message}`, "INVALID_JSON");
        continue;
      }
    } else {
      parsed = r.body;
      text = JSON.stringify(r.body);
      if (text.length > limits.maxBodyBytes) { add(`${where}.body`, `expected at most ${limits.maxBodyBytes} bytes${label}, got ${text.length}`, "BODY_TOO_LARGE"); continue; }
    }
    const field = hasJson ? `${where}.body_json` : `${where}.body`;
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      add(field, `expected a JSON object${label}, got ${Array.isArray(parsed) ? "an array" : parsed === null ? "null" : typeof parsed}`, "BODY_NOT_OBJECT");
      continue;
    }
    const m = (parsed as Record<string, unknown>).model;
    if (typeof m !== "string" || m === "") { add(`${field}.model`, `expected a non-empty string model${label}`, "MISSING_MODEL"); continue; }
    if (model === undefined) {
      model = m;
      modelAt = i;
      const config = limits.models.get(m);
      if (!config) add(`${field}.model`, `no backend serves model "${m}"; configured models: ${[...limits.models.keys()].join(", ")}`, "UNKNOWN_MODEL");
      else if (endpoint && !config.endpoints.includes(endpoint)) add("endpoint", `model "${m}" does not serve ${endpoint}; it serves ${config.endpoints.join(", ")}`, "ENDPOINT_NOT_SERVED");
    } else if (m !== model) {
      add(`${field}.model`, `expected model "${model}" (as requests[${modelAt}]) since a batch has one model, got "${m}"${label}`, "MODEL_MISMATCH");
      continue;
    }
    const config = limits.models.get(m);
    const est = estimateTokens(parsed as Record<string, unknown>, endpoint, config?.defaultMaxOutputTokens ?? 1024);
    out[i] = { customId: r.customId, body: text, estTokens: est.input + est.output, inputTokens: est.input, outputTokens: est.output };
  }
  if (violations.length > 0) return { ok: false, violations };
  return { ok: true, model: model!, requests: out };
}

export interface BatchOptionsInput {
  readonly metadata: Record<string, string>;
  readonly completionWindowSeconds: number | undefined;
  readonly priority: number;
  readonly requestId: string;
}

export const defaultCompletionWindowSeconds = 24 * 3600;

/** metadata (OpenAI: ≤ 16 pairs, key ≤ 64, value ≤ 512), completion window (1 min to 7 days), priority, request_id. */
export function validateBatchOptions(o: BatchOptionsInput): FieldViolation[] {
  const v: FieldViolation[] = [];
  const keys = Object.keys(o.metadata);
  if (keys.length > 16) v.push({ field: "metadata", description: `expected at most 16 pairs, got ${keys.length}`, reason: "TOO_MANY_METADATA_PAIRS" });
  for (const k of keys) {
    if (k.length > 64) v.push({ field: `metadata[${JSON.stringify(k.slice(0, 20) + "…")}]`, description: `expected a key of at most 64 characters, got ${k.length}`, reason: "METADATA_KEY_TOO_LONG" });
    if (o.metadata[k]!.length > 512) v.push({ field: `metadata[${JSON.stringify(k.slice(0, 64))}]`, description: `expected a value of at most 512 characters, got ${o.metadata[k]!.length}`, reason: "METADATA_VALUE_TOO_LONG" });
  }
  const w = o.completionWindowSeconds;
  if (w !== undefined && (w < 60 || w > 7 * 24 * 3600)) {
    v.push({ field: "completion_window", description: `expected 1 minute to 7 days (60s to 604800s), got ${w}s`, reason: "WINDOW_OUT_OF_RANGE" });
  }
  if (o.priority < -100 || o.priority > 100) v.push({ field: "priority", description: `expected -100 to 100, got ${o.priority}`, reason: "PRIORITY_OUT_OF_RANGE" });
  if (o.requestId.length > 128) v.push({ field: "request_id", description: `expected at most 128 characters, got ${o.requestId.length}`, reason: "REQUEST_ID_TOO_LONG" });
  return v;
}
