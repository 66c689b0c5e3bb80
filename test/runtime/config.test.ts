import { execFile, spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildConfig, ConfigError, loadConfig } from "../../src/config/config.ts";
import { createTestDatabase, type TestDatabase } from "../support/database.ts";
import { writeConfig } from "../support/lote-process.ts";
import { freePort } from "../support/ports.ts";
import { until } from "../support/until.ts";

const root = new URL("../../", import.meta.url).pathname;
const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), "lote-config-"));
// As root, PostgreSQL runs as the postgres user, which must be able to enter the directory.
chmodSync(dir, 0o755);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The ConfigError message buildConfig throws for `file`. */
function refusal(file: Record<string, unknown>, env: Record<string, string> = {}): string {
  try {
    buildConfig(file, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error(`accepted ${JSON.stringify(file)}`);
}

const openai = (backend: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  ({ models: [{ name: "m", backend: { kind: "openai", urls: ["http://127.0.0.1:8000"], ...backend }, ...extra }] });

describe("the configuration", () => {
  it("refuses an API key with a control or non-ASCII character, naming the variable and the index, never the key", () => {
    expect(refusal(openai({ api_key_env: "LOTE_K" }), { LOTE_K: "sk-proj-…secretXYZ" })).toBe("config: models[0].backend: " +
      "`api_key_env`: expected environment variable LOTE_K to hold the key alone, in ASCII, got a non-ASCII character " +
      "(a key copied masked, as \"sk-…\", or with a typographic quote?) at index 8");
    expect(refusal(openai({ api_key_env: "LOTE_K" }), { LOTE_K: "sk-secret\n" })).toMatch(/LOTE_K .* a control character \(a trailing newline\?\) at index 9$/);
    expect(buildConfig(openai({ api_key_env: "LOTE_K" }), { LOTE_K: "sk-plain-0123_ABC.xyz" }).models.get("m")!.backend).toMatchObject({ apiKey: "sk-plain-0123_ABC.xyz" });
  });

  it("treats an empty environment variable as unset, leaving the file's value in force", () => {
    const cert = join(dir, "cert.pem");
    const key = join(dir, "key.pem");
    writeFileSync(cert, "CERT");
    writeFileSync(key, "KEY");
    const file = { database_url: "postgres://db.internal/lote", auth_required: true, tls: { cert_file: cert, key_file: key } };
    const config = buildConfig(file, { DATABASE_URL: "", LOTE_AUTH_REQUIRED: "", LOTE_TLS_CERT: "", LOTE_TLS_KEY: "", LOTE_PORT: "", LOTE_LOG_LEVEL: "" });
    expect(config.databaseUrl).toBe("postgres://db.internal/lote");
    expect(config.authRequired).toBe(true);
    expect(config.tls?.cert).toBe("CERT");
    expect(config.port).toBe(50051);
  });

  it("names the environment variable, not the file, when the variable set the bad value", () => {
    const file = { port: 50052, auth_required: false, worker: { concurrency: 8 }, metrics: { port: 9464 } };
    expect(refusal(file, { LOTE_PORT: "abc" })).toBe('LOTE_PORT: `port`: expected an integer from 0 to 65535, got "abc"');
    expect(refusal(file, { LOTE_AUTH_REQUIRED: "yes" })).toBe('LOTE_AUTH_REQUIRED: `auth_required`: expected true or false, got "yes"');
    expect(refusal(file, { LOTE_WORKER_CONCURRENCY: "0" })).toBe('LOTE_WORKER_CONCURRENCY: `concurrency`: expected an integer from 1 to 100000, got "0"');
    expect(refusal(file, { LOTE_METRICS_PORT: "70000" })).toBe('LOTE_METRICS_PORT: `port`: expected an integer from 0 to 65535, got "70000"');
    expect(refusal(file, { LOTE_LOG_LEVEL: "verbose" })).toMatch(/^LOTE_LOG_LEVEL: `log_level`: expected one of trace, /);
    expect(refusal(file, { DATABASE_URL: "mysql://db/lote" })).toMatch(/^DATABASE_URL: `database_url`: expected a postgres:\/\/ /);
    // The file's own mistakes are still the file's.
    expect(refusal({ port: "abc" }, {})).toBe('config: `port`: expected an integer from 0 to 65535, got "abc"');
  });

  it("takes max_response_bytes for a kserve backend as for an openai one, and checks its range", () => {
    const model = (b: Record<string, unknown>) => ({ models: [{ name: "k", backend: { kind: "kserve", urls: ["grpc://127.0.0.1:8001"], ...b } }] });
    const backend = buildConfig(model({ max_response_bytes: 2_048 }), {}).models.get("k")!.backend;
    expect(backend).toMatchObject({ kind: "kserve", maxResponseBytes: 2_048 });
    expect(buildConfig(model({}), {}).models.get("k")!.backend).toMatchObject({ maxResponseBytes: 64 * 1024 * 1024 });
    expect(refusal(model({ max_response_bytes: 10 }))).toContain("max_response_bytes");
  });

  it("refuses unknown and mistyped nested keys, and duplicate model names, naming each field", () => {
    expect(refusal({ tls: { cert: "c.pem", key: "k.pem" } })).toMatch(/^config: tls: unknown key `cert`; expected one of cert_file, key_file/);
    expect(refusal({ worker: { concurency: 3 } })).toMatch(/^config: worker: unknown key `concurency`; expected one of concurrency,/);
    expect(refusal({ worker: "lots" })).toMatch(/^config: worker: expected a mapping with keys concurrency, .*, got a string$/);
    const leaked = refusal(openai({ api_key: "sk-abc123" }));
    expect(leaked).toMatch(/^config: models\[0\]\.backend \(kind openai\): unknown key `api_key`; expected one of .*api_key_env/);
    expect(leaked).not.toContain("sk-abc123");
    expect(refusal(openai({}, { price: { input: 0.15 } }))).toMatch(/^config: models\[0\]\.price: unknown key `input`; expected one of input_per_million_tokens/);
    const kserve = (extra: Record<string, unknown>) => ({ models: [{ name: "k", backend: { kind: "kserve", urls: ["grpc://127.0.0.1:8001"], ...extra } }] });
    expect(refusal(kserve({ api_key_env: "K" }))).toMatch(/^config: models\[0\]\.backend \(kind kserve\): unknown key `api_key_env`/);
    expect(refusal(kserve({ protocol: "h2" }))).toMatch(/^config: models\[0\]\.backend \(kind kserve\): unknown key `protocol`/);
    expect(refusal({ database_url: 5432 })).toBe("config: `database_url`: expected a non-empty string (a postgres:// URL), got a number (not shown: it may hold a password)");
    const twice = { models: [openai({}).models[0], { name: "m", backend: { kind: "openai", urls: ["http://127.0.0.1:8001"] } }] };
    expect(refusal(twice)).toMatch(/^config: models\[1\]: `name`: expected a name no other model has, got "m", the name of models\[0\] too$/);
    expect(refusal({ metrics: { host: "0.0.0.0" } })).toMatch(/^config: metrics: `host` \(metrics\.host\) is set but `port` is not/);
  });

  it("refuses a database_url that is not a string, or a config file that is not YAML, without showing the password", () => {
    const listed = refusal({ database_url: ["postgres://lote:s3cret-pw@db.internal/lote"] });
    expect(listed).toBe("config: `database_url`: expected a non-empty string (a postgres:// URL), got a list (not shown: it may hold a password)");
    const path = join(dir, "broken.yaml");
    writeFileSync(path, "port: 50051\ndatabase_url: postgres://lote:s3cret-pw@db.internal/lote: x\n");
    let message = "";
    try {
      loadConfig({ configPath: path, env: {} });
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      message = (err as Error).message;
    }
    expect(message).toBe(`config file ${path}: not valid YAML/JSON (Nested mappings are not allowed in compact mappings at line 2, column 15)`);
    expect(message).not.toContain("s3cret-pw");
  });

  it("refuses a backend URL of the wrong scheme or with a credential in it, naming its index and never showing it", () => {
    const message = refusal(openai({ urls: ["https://u:sk-LEAKME@api.example.com", "api2.example.com:443"] }));
    expect(message).toMatch(/^config: models\[0\]\.backend: `urls\[0\]`: expected a URL without a user:password part .*api_key_env/);
    expect(message).not.toContain("LEAKME");
    expect(message).not.toContain("api.example.com");
    expect(refusal(openai({ urls: ["https://api.example.com", "api2.example.com:443"] })))
      .toMatch(/^config: models\[0\]\.backend: `urls\[1\]`: expected a URL starting http:\/\/, https:\/\/ or h2c:\/\/ \(kind openai\)/);
    expect(refusal(openai({ urls: ["grpc://127.0.0.1:9"] })))
      .toBe("config: models[0].backend: `urls[0]`: expected a URL starting http://, https:// or h2c:// (kind openai), got a grpc:// URL, which is for kind kserve");
    expect(refusal({ models: [{ name: "k", backend: { kind: "kserve", urls: ["http://127.0.0.1:8001"] } }] }))
      .toMatch(/^config: models\[0\]\.backend: `urls\[0\]`: expected a URL starting grpc:\/\/ or grpcs:\/\/ \(kind kserve\), got an http:\/\/ URL/);
    expect(refusal(openai({ urls: ["https://api.example.com"], ca_file: "/nonexistent.pem" })))
      .toMatch(/^config: models\[0\]\.backend: `ca_file`: expected a readable PEM file, got \/nonexistent\.pem \(ENOENT/);
  });

  it("refuses client-certificate settings without a server certificate instead of serving plaintext with no mTLS", () => {
    const ca = join(dir, "ca.pem");
    writeFileSync(ca, "CA");
    expect(refusal({ tls: { ca_file: ca, require_client_cert: true } }))
      .toMatch(/^config: tls: `ca_file` and `require_client_cert` need cert_file and key_file \(LOTE_TLS_CERT, LOTE_TLS_KEY\)/);
    expect(refusal({}, { LOTE_TLS_CA: ca, LOTE_TLS_REQUIRE_CLIENT_CERT: "true" })).toMatch(/^config: tls: `ca_file` and `require_client_cert` need cert_file/);
    expect(refusal({ tls: { require_client_cert: "yes" } })).toBe("config: tls: `require_client_cert`: expected true or false, got \"yes\"");
    // Saying no to client certificates asks for nothing.
    expect(buildConfig({ tls: { require_client_cert: false } }, {}).tls).toBeUndefined();
  });

  it("refuses a built-in backend for a model it cannot answer, and serves a built-in model on its own endpoint by default", () => {
    expect(refusal({ models: [{ name: "my-sentiment", backend: { kind: "builtin" } }] }))
      .toBe("config: models[0]: `name`: expected lote-sentiment or lote-embed with kind builtin (the models it computes), got \"my-sentiment\"");
    expect(refusal({ models: [{ name: "lote-sentiment", endpoints: ["/classify", "/v1/chat/completions"], backend: { kind: "builtin" } }] }))
      .toBe("config: models[0]: `endpoints`: expected /classify only for built-in model lote-sentiment, got [\"/classify\",\"/v1/chat/completions\"]");
    // Re-declared to change a limit: the endpoint stays the one the model answers on.
    const config = buildConfig({ models: [{ name: "lote-sentiment", backend: { kind: "builtin" }, max_concurrency: 4 }] }, {});
    expect(config.models.get("lote-sentiment")).toMatchObject({ endpoints: ["/classify"], maxConcurrency: 4 });
  });
});

describe("a server's start with a bad backend (real processes)", () => {
  const serve = async (config: Record<string, unknown>) => {
    const dataDir = join(dir, `pg-${Math.random().toString(36).slice(2)}`);
    const env: NodeJS.ProcessEnv = { ...process.env, LOTE_DATA_DIR: dataDir, LOTE_EMBEDDED_PG_PORT: String(await freePort()), LOTE_PORT: String(await freePort()) };
    delete env.DATABASE_URL;
    const err = await run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve", "--config", writeConfig(config)], { cwd: root, env })
      .then(() => undefined, (e: { code: number; stderr: string }) => e);
    return { err, dataDir };
  };

  it("exits 78 naming the model's URL when an openai backend has a kserve scheme, and leaves no PostgreSQL running", async () => {
    const { err, dataDir } = await serve(openai({ urls: ["grpc://127.0.0.1:9"] }));
    expect(err?.code).toBe(78);
    expect(err?.stderr).toContain("lote: invalid configuration: ");
    expect(err?.stderr).toContain("models[0].backend: `urls[0]`");
    expect(existsSync(join(dataDir, "postmaster.pid"))).toBe(false);
  });

  it("exits 78 naming ca_file when the CA file cannot be read", async () => {
    const { err } = await serve(openai({ urls: ["https://127.0.0.1:9"], ca_file: "/nonexistent.pem" }));
    expect(err?.code).toBe(78);
    expect(err?.stderr).toContain("models[0].backend: `ca_file`");
  });
});

describe("a server whose PostgreSQL cannot be reached (real process)", () => {
  it("exits 69 with one line naming the database, never its password", async () => {
    const port = await freePort();
    const env = { ...process.env, DATABASE_URL: `postgres://lote:s3cret-pw@127.0.0.1:${port}/lotedb`, LOTE_PORT: String(await freePort()) };
    const err = await run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve"], { cwd: root, env })
      .then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(err?.code).toBe(69);
    expect(err?.stderr).toBe(`lote: cannot connect to PostgreSQL at 127.0.0.1:${port}/lotedb as lote: connect ECONNREFUSED 127.0.0.1:${port}\n`);
  });

  it("names the host and port given as query parameters (pg's socket form), never the password, in the same one line", async () => {
    const port = await freePort();
    const env = { ...process.env, DATABASE_URL: `postgres://lote:s3cret-pw@/lotedb?host=127.0.0.1&port=${port}`, LOTE_PORT: String(await freePort()) };
    const err = await run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve"], { cwd: root, env })
      .then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(err?.stderr).not.toContain("s3cret-pw");
    expect(err?.code).toBe(69);
    expect(err?.stderr).toBe(`lote: cannot connect to PostgreSQL at 127.0.0.1:${port}/lotedb as lote: connect ECONNREFUSED 127.0.0.1:${port}\n`);
  });

  it("refuses a database URL pg cannot parse as a configuration error (78), and names a socket directory with no server in one line (69), never the password", async () => {
    const serve = async (databaseUrl: string) => run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve"], {
      cwd: root, env: { ...process.env, DATABASE_URL: databaseUrl, LOTE_PORT: String(await freePort()) },
    }).then(() => undefined, (e: { code: number; stderr: string }) => e);
    // A password with an unencoded "#": WHATWG's URL parser, which pg uses, fails on it.
    const unparsed = await serve("postgres://lote:s3cret#pw@127.0.0.1:5432/lotedb");
    expect(unparsed?.code).toBe(78);
    expect(unparsed?.stderr).toMatch(/^lote: invalid configuration: .*`database_url`: expected a postgres:\/\/ or postgresql:\/\/ URL that parses, .*\(not shown: it may hold a password\)\n$/);
    expect(unparsed?.stderr).not.toContain("s3cret");
    const noSocket = mkdtempSync(join(tmpdir(), "lote-no-socket-"));
    const socketless = await serve(`postgres://lote:s3cret-pw@/lotedb?host=${noSocket}`);
    expect(socketless?.code).toBe(69);
    expect(socketless?.stderr).toMatch(new RegExp(`^lote: cannot connect to PostgreSQL at ${noSocket}:5432/lotedb as lote: connect ENOENT .*\\n$`));
    expect(socketless?.stderr).not.toContain("s3cret");
  });
});

describe("a server whose port is taken (real processes)", () => {
  let db: TestDatabase;
  let taken: Server;
  let port: number;
  beforeAll(async () => {
    db = await createTestDatabase();
    taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    port = (taken.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((resolve) => taken.close(resolve));
    await db.drop();
  });
  const serve = (env: Record<string, string>) => run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve"], {
    cwd: root, env: { ...process.env, DATABASE_URL: db.url, LOTE_LOG_LEVEL: "silent", ...env },
  }).then(() => undefined, (e: { code: number; stderr: string }) => e);

  it("exits 1 with one line naming the API's address and the key that sets it, not a stack trace", async () => {
    const err = await serve({ LOTE_PORT: String(port) });
    expect(err?.code).toBe(1);
    expect(err?.stderr).toBe(`lote: cannot serve the API on 127.0.0.1:${port}: the address is already in use ` +
      "(another lote node, or another program, listens there); choose another with port (LOTE_PORT) or host (LOTE_HOST)\n");
  });

  it("names the metrics port the same way when it is the one taken", async () => {
    const err = await serve({ LOTE_PORT: String(await freePort()), LOTE_METRICS_PORT: String(port) });
    expect(err?.code).toBe(1);
    expect(err?.stderr).toBe(`lote: cannot serve metrics on 127.0.0.1:${port}: the address is already in use ` +
      "(another lote node, or another program, listens there); choose another with metrics.port (LOTE_METRICS_PORT) or metrics.host (LOTE_METRICS_HOST)\n");
  });
});

describe("a closed terminal (real process)", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });

  it("stops a server cleanly on SIGHUP, like SIGTERM: exit 0 and its worker row removed", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve"], {
      cwd: root, env: { ...process.env, DATABASE_URL: db.url, LOTE_PORT: String(await freePort()), LOTE_LOG_LEVEL: "info" }, stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const exited = new Promise<number | string>((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? -1)));
    await until("listening", () => stdout.includes('"listening"') || (child.exitCode !== null && Promise.reject(new Error(stderr))), 30_000);
    child.kill("SIGHUP");
    expect(await exited).toBe(0);
    expect(stderr).toContain('"msg":"stopped"');
    const workers = await run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "workers", "--all", "--json"], { cwd: root, env: { ...process.env, DATABASE_URL: db.url } });
    expect(JSON.parse(workers.stdout)).toEqual([]);
  });
});
