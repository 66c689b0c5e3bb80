/** Per-model configuration: which backend serves a model, and the limits that hold across the whole fleet. */
import { endpointPaths, type EndpointPath } from "../backends/backend.ts";
import { DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_STREAMS_PER_SESSION } from "../backends/openai/openai-backend-options.ts";
import { readFileSync } from "node:fs";
import { builtinModels, findBuiltinModel } from "../backends/builtin/builtin-models.ts";
import { ConfigError, field, kindOf, mapping } from "./validate.ts";
import type { Env } from "./config.ts";

export type BackendConfig =
  | {
      readonly kind: "openai";
      /** Replica base URLs: http:// (HTTP/1.1 keep-alive), h2c:// (HTTP/2 prior knowledge), https:// (ALPN h2 or 1.1). */
      readonly urls: readonly string[];
      /** The API key's value, read from the environment variable named by `api_key_env`. Never logged. */
      readonly apiKey?: string;
      readonly apiKeyEnv?: string;
      readonly protocol: "auto" | "http1" | "h2" | "h2c";
      /** PEM CA to trust for https:// replicas (self-signed deployments). */
      readonly caFile?: string;
      /** HTTP/2: streams per session before another opens (the backend's `streamsPerSession`). Default 16. */
      readonly streamsPerSession: number;
      /** Longest answer body read; a longer one fails the request as `response_too_large`. Default 64 MiB. */
      readonly maxResponseBytes: number;
    }
  | {
      readonly kind: "kserve";
      /** grpc://host:port or grpcs://host:port targets. */
      readonly urls: readonly string[];
      /** Model name on the inference server; default the lote model name. */
      readonly modelName: string;
      readonly inputName?: string;
      readonly outputName?: string;
      /** Longest ModelInfer answer read; a longer one fails the request as `response_too_large`. Default 64 MiB. */
      readonly maxResponseBytes: number;
    }
  | { readonly kind: "builtin" };

export interface ModelConfig {
  /** The `model` value request bodies carry. */
  readonly name: string;
  /** Endpoints this model serves. Default: all five. */
  readonly endpoints: readonly EndpointPath[];
  readonly backend: BackendConfig;
  /** Most calls in flight for this model across every node sharing the database. Default 64. */
  readonly maxConcurrency: number;
  /** Fleet-wide calls started per minute; 0 = unlimited. Default 0. */
  readonly requestsPerMinute: number;
  /** Fleet-wide estimated tokens (prompt + max output) started per minute; 0 = unlimited. Default 0. */
  readonly tokensPerMinute: number;
  /** Per-call timeout. Default 600,000 ms (10 min: long generations on busy self-hosted servers). */
  readonly timeoutMs: number;
  /** Backend calls per request before it fails. Default 5. */
  readonly maxAttempts: number;
  /** US dollars per million tokens, for EstimateBatch. */
  readonly inputPricePerMillion?: number;
  readonly outputPricePerMillion?: number;
  /** Output tokens assumed when a request sets no max_tokens. Default 1,024. */
  readonly defaultMaxOutputTokens: number;
}

const priceKeys = ["input_per_million_tokens", "output_per_million_tokens"];

/** The keys each kind of backend takes (`url`, one URL, is kept as the older spelling of `urls`). */
const backendKeys = {
  openai: ["kind", "urls", "url", "api_key_env", "protocol", "ca_file", "streams_per_session", "max_response_bytes"],
  kserve: ["kind", "urls", "url", "model_name", "input_name", "output_name", "max_response_bytes"],
  builtin: ["kind"],
} as const;

/** The URL schemes each kind of backend speaks. */
const schemes = { openai: ["http:", "https:", "h2c:"], kserve: ["grpc:", "grpcs:"] } as const;

const modelKeys = new Set(["name", "endpoints", "backend", "max_concurrency", "requests_per_minute", "tokens_per_minute",
  "timeout_ms", "max_attempts", "price", "default_max_output_tokens"]);

export function parseModel(raw: unknown, where: string, env: Env): ModelConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new ConfigError(`${where}: expected a mapping, got ${kindOf(raw)}`);
  const m = raw as Record<string, unknown>;
  for (const key of Object.keys(m)) {
    if (!modelKeys.has(key)) throw new ConfigError(`${where}: unknown key \`${key}\`; expected one of ${[...modelKeys].join(", ")}`);
  }
  const f = field(where);
  const name = f.string("name", m.name, "");
  if (!name) throw new ConfigError(`${where}: \`name\`: expected the model name request bodies use, got nothing`);
  const backend = parseBackend(m.backend, `${where}.backend`, env, name);
  // The built-in backend computes two models, each on one endpoint, and answers 400 to anything else: a model it
  // cannot compute (or an endpoint it does not serve) was accepted here and every request of its batches failed.
  const builtin = backend.kind === "builtin" ? findBuiltinModel(name) : undefined;
  if (backend.kind === "builtin" && !builtin) {
    const names = builtinModels.map((b) => b.name);
    throw new ConfigError(`${where}: \`name\`: expected ${names.slice(0, -1).join(", ")} or ${names.at(-1)} with kind builtin (the models it computes), got ${JSON.stringify(name)}`);
  }
  const allowed: readonly string[] = builtin ? builtin.endpoints : endpointPaths;
  const endpointsRaw = m.endpoints ?? [...allowed];
  if (!Array.isArray(endpointsRaw) || endpointsRaw.some((e) => !allowed.includes(e))) {
    const expected = builtin ? `${allowed.join(", ")} only for built-in model ${name}` : `a list of ${allowed.join(", ")}`;
    throw new ConfigError(`${where}: \`endpoints\`: expected ${expected}, got ${JSON.stringify(endpointsRaw)}`);
  }
  const price = mapping(`${where}.price`, m.price, priceKeys);
  return {
    name,
    endpoints: endpointsRaw as EndpointPath[],
    backend,
    maxConcurrency: f.int("max_concurrency", m.max_concurrency, 64, 1, 100_000),
    requestsPerMinute: f.int("requests_per_minute", m.requests_per_minute, 0, 0, 100_000_000),
    tokensPerMinute: f.int("tokens_per_minute", m.tokens_per_minute, 0, 0, 10_000_000_000),
    timeoutMs: f.int("timeout_ms", m.timeout_ms, 600_000, 100, 86_400_000),
    maxAttempts: f.int("max_attempts", m.max_attempts, 5, 1, 100),
    inputPricePerMillion: price.input_per_million_tokens === undefined ? undefined : f.number("price.input_per_million_tokens", price.input_per_million_tokens, 0, 0, 1e6),
    outputPricePerMillion: price.output_per_million_tokens === undefined ? undefined : f.number("price.output_per_million_tokens", price.output_per_million_tokens, 0, 0, 1e6),
    defaultMaxOutputTokens: f.int("default_max_output_tokens", m.default_max_output_tokens, 1024, 1, 10_000_000),
  };
}

function parseBackend(raw: unknown, where: string, env: Env, modelName: string): BackendConfig {
  // Never show the value: a backend written as a string may well be a URL with a key in it.
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${where}: expected a mapping with \`kind\` (openai, kserve or builtin), got ${kindOf(raw)}`);
  }
  const f = field(where);
  const kind = f.oneOf("kind", (raw as Record<string, unknown>).kind, "openai", ["openai", "kserve", "builtin"] as const);
  const b = mapping(`${where} (kind ${kind})`, raw, backendKeys[kind]);
  if (kind === "builtin") return { kind };
  const urls = parseUrls(b, where, kind);
  if (kind === "kserve") {
    return {
      kind,
      urls,
      modelName: f.string("model_name", b.model_name, modelName),
      inputName: f.optionalString("input_name", b.input_name),
      outputName: f.optionalString("output_name", b.output_name),
      maxResponseBytes: f.int("max_response_bytes", b.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES, 1_024, 2 ** 30),
    };
  }
  const apiKeyEnv = f.optionalString("api_key_env", b.api_key_env);
  let apiKey: string | undefined;
  if (apiKeyEnv) {
    apiKey = env[apiKeyEnv];
    // Say which variable is missing, never what a key looks like.
    if (!apiKey) throw new ConfigError(`${where}: \`api_key_env\`: environment variable ${apiKeyEnv} is not set`);
    // The backend refuses these too (openai-backend-options.ts says why), but here the message can name the
    // variable and the model. Where the character is, never what the key looks like.
    const bad = apiKey.search(/[^\x20-\x7e]/);
    if (bad >= 0) {
      const what = apiKey.charCodeAt(bad) < 0x80 ? "a control character (a trailing newline?)"
        : "a non-ASCII character (a key copied masked, as \"sk-…\", or with a typographic quote?)";
      throw new ConfigError(`${where}: \`api_key_env\`: expected environment variable ${apiKeyEnv} to hold the key alone, in ASCII, got ${what} at index ${bad}`);
    }
  }
  const protocol = f.oneOf("protocol", b.protocol, "auto", ["auto", "http1", "h2", "h2c"] as const);
  const secure = urls.findIndex((u) => u.startsWith("https:"));
  if (protocol === "h2c" && secure >= 0) {
    throw new ConfigError(`${where}: \`protocol\`: expected auto, http1 or h2 with the https:// URL urls[${secure}] (h2c is cleartext), got "h2c"`);
  }
  const caFile = f.optionalString("ca_file", b.ca_file);
  if (caFile !== undefined) {
    try {
      readFileSync(caFile);
    } catch (err) {
      throw new ConfigError(`${where}: \`ca_file\`: expected a readable PEM file, got ${caFile} (${(err as Error).message})`);
    }
  }
  return {
    kind,
    urls,
    apiKey,
    apiKeyEnv,
    protocol,
    caFile,
    streamsPerSession: f.int("streams_per_session", b.streams_per_session, DEFAULT_STREAMS_PER_SESSION, 1, 1_000_000),
    maxResponseBytes: f.int("max_response_bytes", b.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES, 1_024, 2 ** 30),
  };
}

/**
 * The replica URLs, each with a scheme its backend kind speaks. A bad one is named by its index and never shown:
 * a URL may carry a user:password, which lote refuses (keys belong in the environment variable `api_key_env` names).
 */
function parseUrls(b: Record<string, unknown>, where: string, kind: "openai" | "kserve"): string[] {
  const urls = b.urls ?? (b.url === undefined ? undefined : [b.url]);
  const key = b.urls === undefined && b.url !== undefined ? "url" : "urls";
  const example = kind === "openai" ? "http://127.0.0.1:8000" : "grpc://127.0.0.1:8001";
  if (!Array.isArray(urls) || urls.length === 0) {
    throw new ConfigError(`${where}: \`${key}\`: expected a non-empty list of URLs (e.g. ["${example}"]), got ${kindOf(urls)}`);
  }
  const names = schemes[kind].map((s) => `${s}//`);
  const expected = `expected a URL starting ${names.slice(0, -1).join(", ")} or ${names.at(-1)} (kind ${kind})`;
  urls.forEach((u: unknown, j) => {
    const at = `${where}: \`${key === "url" ? "url" : `urls[${j}]`}\``;
    const fail = (got: string): never => {
      throw new ConfigError(`${at}: ${expected}, got ${got}`);
    };
    if (typeof u !== "string") return fail(kindOf(u));
    let url: URL;
    try {
      url = new URL(u);
    } catch {
      return fail(`text that is not an absolute URL (e.g. ${example})`);
    }
    if (url.username || url.password) {
      const instead = kind === "openai" ? "put the key in an environment variable and name it in `api_key_env`" : "kserve backends take none";
      throw new ConfigError(`${at}: expected a URL without a user:password part (${instead}), got one with it (not shown)`);
    }
    if (!(schemes[kind] as readonly string[]).includes(url.protocol)) {
      const other = kind === "openai" ? "kserve" : "openai";
      if ((schemes[other] as readonly string[]).includes(url.protocol)) fail(`${url.protocol === "http:" ? "an" : "a"} ${url.protocol}// URL, which is for kind ${other}`);
      fail(`a URL without such a scheme (e.g. ${example})`);
    }
  });
  return urls as string[];
}

/** The built-in models, served in-process so the embedded default does real work with no model server. */
export function builtinModelConfigs(): ModelConfig[] {
  const base = { backend: { kind: "builtin" } as const, maxConcurrency: 8, requestsPerMinute: 0, tokensPerMinute: 0,
    timeoutMs: 30_000, maxAttempts: 3, defaultMaxOutputTokens: 1 };
  return [
    { ...base, name: "lote-sentiment", endpoints: ["/classify"] },
    { ...base, name: "lote-embed", endpoints: ["/v1/embeddings"] },
  ];
}
