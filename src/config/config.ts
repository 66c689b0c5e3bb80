/**
 * lote's configuration, read in exactly one place: `loadConfig()` merges defaults, an optional YAML/JSON file
 * (`--config` or LOTE_CONFIG) and environment variables, validates everything, and fails at start-up with a
 * message naming the key, what was expected and what was found. Nothing else in lote reads process.env.
 * README.md ("Configuration") lists every key with its default.
 */
import pg from "pg";
import { readFileSync } from "node:fs";
import { LineCounter, parse as parseYaml, YAMLError } from "yaml";
import { endpointPaths, type EndpointPath } from "../backends/backend.ts";
import { ConfigError, field, kindOf, mapping } from "./validate.ts";
import { builtinModelConfigs, parseModel, type ModelConfig } from "./model-config.ts";

export { ConfigError } from "./validate.ts";
export type { ModelConfig, BackendConfig } from "./model-config.ts";

export interface TlsConfig {
  /** PEM certificate chain. */
  readonly cert: string;
  /** PEM private key. */
  readonly key: string;
  /** PEM CA bundle for client certificates (mTLS). */
  readonly ca?: string;
  /** Refuse clients without a certificate signed by `ca`. Default false. */
  readonly requireClientCert: boolean;
}

export interface Config {
  /** Listen host. Default 127.0.0.1 (LOTE_HOST). */
  readonly host: string;
  /** Listen port. Default 50051 (LOTE_PORT). */
  readonly port: number;
  readonly tls?: TlsConfig;
  /** Postgres URL; unset means an embedded PostgreSQL in `dataDir` (DATABASE_URL). */
  readonly databaseUrl?: string;
  /** Where the embedded PostgreSQL keeps its data. Default ./.lote/postgres (LOTE_DATA_DIR). */
  readonly dataDir: string;
  /** Port of the embedded PostgreSQL. Default 54329 (LOTE_EMBEDDED_PG_PORT). */
  readonly embeddedPostgresPort: number;
  /** Require "authorization: Bearer <key>" on every call. Default false; false is only allowed on loopback. */
  readonly authRequired: boolean;
  /** Largest request message, bytes. Default 256 MiB: a 50,000-request chat batch is ~25-50 MB. */
  readonly maxMessageBytes: number;
  /** Most requests in one CreateBatch. Default 1,000,000. */
  readonly maxBatchRequests: number;
  /** Most requests in one RunBatch. Default 1,000. */
  readonly runBatchMaxRequests: number;
  /** Largest single request body, bytes. Default 1 MiB. */
  readonly maxBodyBytes: number;
  /** Graceful shutdown: how long streams and calls get to finish. Default 10,000 ms. */
  readonly shutdownGraceMs: number;
  /**
   * The longest a bounded query (API reads, claims, completions, heartbeats, ...) may take before lote gives up on it
   * and its connection, and how often the LISTEN connection is pinged. Default 10,000 ms (LOTE_QUERY_TIMEOUT_MS).
   */
  readonly queryTimeoutMs: number;
  readonly worker: WorkerConfig;
  /** Models by name (the `model` field of request bodies). */
  readonly models: ReadonlyMap<string, ModelConfig>;
  /** pino level. Default info (LOTE_LOG_LEVEL). */
  readonly logLevel: string;
  /** Prometheus metrics over plain HTTP at /metrics; absent when no port is set. */
  readonly metrics?: MetricsConfig;
}

export interface MetricsConfig {
  /** Default 127.0.0.1 (LOTE_METRICS_HOST): like the API, metrics leave the machine only when configured to. */
  readonly host: string;
  /** No default (LOTE_METRICS_PORT): metrics are served only when a port is set. */
  readonly port: number;
}

export interface WorkerConfig {
  /** Most backend calls this node runs at once, over all models. Default 512. */
  readonly concurrency: number;
  /** Lease on a claimed item; a heartbeat renews it every lease/3. Default 30,000 ms. */
  readonly leaseMs: number;
  /** Polling interval when no notification arrives, for claims and for the API's following streams; polling is the source of truth. Default 1,000 ms. */
  readonly pollIntervalMs: number;
  /** Completions are written in one statement per this many items or per flush interval. Default 500 / 5 ms. */
  readonly completionBatchSize: number;
  readonly completionFlushMs: number;
  /** How often expiry, finalisation and lease rescue run. Default 1,000 ms. */
  readonly maintenanceIntervalMs: number;
}

export type Env = Readonly<Record<string, string | undefined>>;

/** Reads the config file named by `configPath` (or env LOTE_CONFIG) and the environment. */
export function loadConfig(options: { env?: Env; configPath?: string; overrides?: Record<string, unknown> } = {}): Config {
  const env = options.env ?? process.env;
  const path = options.configPath ?? env.LOTE_CONFIG;
  let file: Record<string, unknown> = {};
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      throw new ConfigError(`config file ${path}: cannot read it (${(err as Error).message})`);
    }
    // Without yaml's pretty errors: they quote the offending line, which in a config file may be the one holding a
    // password (`database_url: postgres://lote:pw@...`), into the start-up error and so into the service's logs.
    // The line and column say where to look.
    const lines = new LineCounter();
    try {
      const parsed = parseYaml(text, { prettyErrors: false, lineCounter: lines }) ?? {};
      if (typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("expected a mapping at the top level");
      file = parsed as Record<string, unknown>;
    } catch (err) {
      const at = err instanceof YAMLError && err.pos[0] >= 0 ? lines.linePos(err.pos[0]) : undefined;
      const where = at ? ` at line ${at.line}, column ${at.col}` : "";
      throw new ConfigError(`config file ${path}: not valid YAML/JSON (${(err as Error).message}${where})`);
    }
  }
  return buildConfig({ ...file, ...options.overrides }, env, path ?? "config");
}

const knownKeys = new Set(["host", "port", "tls", "database_url", "data_dir", "embedded_postgres_port", "auth_required",
  "max_message_bytes", "max_batch_requests", "run_batch_max_requests", "max_body_bytes", "shutdown_grace_ms", "query_timeout_ms",
  "worker", "models", "log_level", "include_builtin_models", "metrics"]);

const tlsKeys = ["cert_file", "key_file", "ca_file", "require_client_cert"] as const;
const workerKeys = ["concurrency", "lease_ms", "poll_interval_ms", "completion_batch_size", "completion_flush_ms", "maintenance_interval_ms"] as const;

export function buildConfig(file: Record<string, unknown>, rawEnv: Env, source = "config"): Config {
  for (const key of Object.keys(file)) {
    if (!knownKeys.has(key)) throw new ConfigError(`${source}: unknown key \`${key}\`; expected one of ${[...knownKeys].join(", ")}`);
  }
  // An empty variable (`DATABASE_URL= lote serve`, or `LOTE_TLS_CERT=` left by a template) is unset: it must not
  // override the file's value with nothing (an embedded database instead of the file's, TLS or auth turned off).
  const env = withoutEmptyValues(rawEnv);
  const f = field(source);
  // A value an environment variable set is refused under the variable's name: "config.yaml: `port`: ... got "abc""
  // sent the reader to a file whose port was fine, or to no file at all ("config:"), when LOTE_PORT was the typo.
  const fromEnv = (variable: string) => (env[variable] === undefined ? undefined : field(variable));
  const host = (fromEnv("LOTE_HOST") ?? f).string("host", env.LOTE_HOST ?? file.host, "127.0.0.1");
  const port = (fromEnv("LOTE_PORT") ?? f).int("port", env.LOTE_PORT ?? file.port, 50051, 0, 65535);
  const tlsRaw = mapping(`${source}: tls`, file.tls, tlsKeys);
  const ft = field(`${source}: tls`);
  const certFile = (fromEnv("LOTE_TLS_CERT") ?? ft).optionalString("cert_file", env.LOTE_TLS_CERT ?? tlsRaw.cert_file);
  const keyFile = (fromEnv("LOTE_TLS_KEY") ?? ft).optionalString("key_file", env.LOTE_TLS_KEY ?? tlsRaw.key_file);
  const caFile = (fromEnv("LOTE_TLS_CA") ?? ft).optionalString("ca_file", env.LOTE_TLS_CA ?? tlsRaw.ca_file);
  const requireClientCert = (fromEnv("LOTE_TLS_REQUIRE_CLIENT_CERT") ?? ft).bool("require_client_cert", env.LOTE_TLS_REQUIRE_CLIENT_CERT ?? tlsRaw.require_client_cert, false);
  let tls: TlsConfig | undefined;
  if (certFile || keyFile) {
    if (!certFile || !keyFile) throw new ConfigError(`${source}: tls needs both cert_file and key_file (LOTE_TLS_CERT, LOTE_TLS_KEY); got only ${certFile ? "cert_file" : "key_file"}`);
    tls = {
      cert: readPem("tls.cert_file", certFile),
      key: readPem("tls.key_file", keyFile),
      ca: caFile ? readPem("tls.ca_file", caFile) : undefined,
      requireClientCert,
    };
    if (tls.requireClientCert && !tls.ca) throw new ConfigError(`${source}: tls.require_client_cert needs tls.ca_file (LOTE_TLS_CA)`);
  } else if (caFile || requireClientCert) {
    // Without a server certificate lote serves plaintext, where no client certificate can be asked for: a server
    // configured for mTLS that started anyway accepted every client, unencrypted.
    throw new ConfigError(`${source}: tls: \`ca_file\` and \`require_client_cert\` need cert_file and key_file (LOTE_TLS_CERT, LOTE_TLS_KEY), ` +
      `as client certificates are checked only over TLS; got ${caFile ? "ca_file" : "require_client_cert"} without them`);
  }
  const authRequired = (fromEnv("LOTE_AUTH_REQUIRED") ?? f).bool("auth_required", env.LOTE_AUTH_REQUIRED ?? file.auth_required, false);
  if (!authRequired && !isLoopback(host)) {
    throw new ConfigError(
      `${source}: auth_required is false but host is ${host}; without authentication lote only listens on loopback ` +
        `(127.0.0.1, ::1, localhost). Set auth_required: true (LOTE_AUTH_REQUIRED=true) and create keys with \`lote keys create\`.`,
    );
  }
  const w = mapping(`${source}: worker`, file.worker, workerKeys);
  const fw = field(`${source}: worker`);
  const worker: WorkerConfig = {
    concurrency: (fromEnv("LOTE_WORKER_CONCURRENCY") ?? fw).int("concurrency", env.LOTE_WORKER_CONCURRENCY ?? w.concurrency, 512, 1, 100_000),
    leaseMs: fw.int("lease_ms", w.lease_ms, 30_000, 1_000, 3_600_000),
    pollIntervalMs: fw.int("poll_interval_ms", w.poll_interval_ms, 1_000, 10, 60_000),
    completionBatchSize: fw.int("completion_batch_size", w.completion_batch_size, 500, 1, 10_000),
    completionFlushMs: fw.int("completion_flush_ms", w.completion_flush_ms, 5, 0, 10_000),
    maintenanceIntervalMs: fw.int("maintenance_interval_ms", w.maintenance_interval_ms, 1_000, 10, 60_000),
  };
  const m = (file.metrics ?? {}) as Record<string, unknown>;
  if (typeof m !== "object" || Array.isArray(m)) throw new ConfigError(`${source}: metrics: expected a mapping with port and host, got ${typeof m}`);
  for (const key of Object.keys(m)) {
    if (key !== "port" && key !== "host") throw new ConfigError(`${source}: metrics: unknown key \`${key}\`; expected port, host`);
  }
  const fm = field(`${source}: metrics`);
  const metricsPort = env.LOTE_METRICS_PORT ?? m.port;
  const metricsHost = env.LOTE_METRICS_HOST ?? m.host;
  const noMetricsPort = metricsPort === undefined || metricsPort === null || metricsPort === "";
  if (noMetricsPort && metricsHost !== undefined && metricsHost !== null) {
    throw new ConfigError(`${source}: metrics: \`host\` (${env.LOTE_METRICS_HOST ? "LOTE_METRICS_HOST" : "metrics.host"}) is set but \`port\` is not; ` +
      `expected metrics.port (LOTE_METRICS_PORT) too: metrics are served only on a port`);
  }
  const metrics: MetricsConfig | undefined = noMetricsPort
    ? undefined
    : {
      port: (fromEnv("LOTE_METRICS_PORT") ?? fm).int("port", metricsPort, 0, 0, 65535),
      host: (fromEnv("LOTE_METRICS_HOST") ?? fm).string("host", metricsHost, "127.0.0.1"),
    };
  const models = new Map<string, ModelConfig>();
  if (f.bool("include_builtin_models", file.include_builtin_models, true)) {
    for (const m of builtinModelConfigs()) models.set(m.name, m);
  }
  const modelsRaw = file.models ?? [];
  if (!Array.isArray(modelsRaw)) throw new ConfigError(`${source}: models: expected a list, got ${typeof modelsRaw}`);
  const indexOfName = new Map<string, number>();
  modelsRaw.forEach((raw, i) => {
    const model = parseModel(raw, `${source}: models[${i}]`, env);
    const first = indexOfName.get(model.name);
    if (first !== undefined) {
      throw new ConfigError(`${source}: models[${i}]: \`name\`: expected a name no other model has, got ${JSON.stringify(model.name)}, the name of models[${first}] too`);
    }
    indexOfName.set(model.name, i);
    models.set(model.name, model);
  });
  return {
    host,
    port,
    tls,
    databaseUrl: databaseUrl(env.DATABASE_URL === undefined ? source : "DATABASE_URL", env.DATABASE_URL ?? file.database_url),
    dataDir: (fromEnv("LOTE_DATA_DIR") ?? f).string("data_dir", env.LOTE_DATA_DIR ?? file.data_dir, ".lote/postgres"),
    embeddedPostgresPort: (fromEnv("LOTE_EMBEDDED_PG_PORT") ?? f).int("embedded_postgres_port", env.LOTE_EMBEDDED_PG_PORT ?? file.embedded_postgres_port, 54329, 1, 65535),
    authRequired,
    maxMessageBytes: f.int("max_message_bytes", file.max_message_bytes, 256 * 1024 * 1024, 1024, 2 ** 31 - 1),
    maxBatchRequests: f.int("max_batch_requests", file.max_batch_requests, 1_000_000, 1, 10_000_000),
    runBatchMaxRequests: f.int("run_batch_max_requests", file.run_batch_max_requests, 1_000, 1, 100_000),
    maxBodyBytes: f.int("max_body_bytes", file.max_body_bytes, 1024 * 1024, 16, 64 * 1024 * 1024),
    shutdownGraceMs: f.int("shutdown_grace_ms", file.shutdown_grace_ms, 10_000, 0, 600_000),
    queryTimeoutMs: (fromEnv("LOTE_QUERY_TIMEOUT_MS") ?? f).int("query_timeout_ms", env.LOTE_QUERY_TIMEOUT_MS ?? file.query_timeout_ms, 10_000, 100, 3_600_000),
    worker,
    models,
    logLevel: (fromEnv("LOTE_LOG_LEVEL") ?? f).oneOf("log_level", env.LOTE_LOG_LEVEL ?? file.log_level, "info", ["trace", "debug", "info", "warn", "error", "fatal", "silent"]),
    metrics,
  };
}

/** database_url, refused without being shown: it holds the database's password (`field` echoes what it got). */
function databaseUrl(source: string, value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string" || value === "") {
    throw new ConfigError(`${source}: \`database_url\`: expected a non-empty string (a postgres:// URL), got ${value === "" ? "an empty string" : `${kindOf(value)} (not shown: it may hold a password)`}`);
  }
  // Read here as pg will read it, so a URL pg cannot parse is a configuration error at start, not a TypeError's stack
  // trace once the first connection is tried: a password with an unencoded "#", "/" or "@" is the usual cause.
  let parses = /^postgres(ql)?:\/\//i.test(value) || /^socket:/i.test(value);
  if (parses) {
    try {
      new pg.Client({ connectionString: value });
    } catch {
      parses = false;
    }
  }
  if (!parses) {
    throw new ConfigError(`${source}: \`database_url\`: expected a postgres:// or postgresql:// URL that parses, with any "#", "/", "@", ":" or "%" in the user or password percent-encoded (%23, %2F, %40, %3A, %25); got one that does not (not shown: it may hold a password)`);
  }
  return value;
}

function withoutEmptyValues(env: Env): Env {
  return Object.fromEntries(Object.entries(env).filter(([, v]) => v !== ""));
}

function readPem(key: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(`${key}: cannot read ${path} (${(err as Error).message})`);
  }
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export function isEndpointPath(value: string): value is EndpointPath {
  return (endpointPaths as readonly string[]).includes(value);
}
