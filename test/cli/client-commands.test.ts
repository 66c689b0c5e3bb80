import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase, testPool } from "../support/database.ts";
import { startLoteProcess, type LoteProcess } from "../support/lote-process.ts";
import { freePort } from "../support/ports.ts";
import { proxyTo, type TcpProxy } from "../support/tcp-proxy.ts";
import { until } from "../support/until.ts";

const root = new URL("../../", import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), "lote-cli-"));
const execFileP = promisify(execFile);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts `lote ARGS` (the real CLI, a child process); `lines` sees stdout line by line as it is written. */
function startLote(args: string[], env: Record<string, string> = {}, onLine?: (line: string) => void) {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
    cwd: root, env: { ...process.env, LOTE_API_KEY: "", LOTE_CA: "", ...env }, stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  let partial = "";
  child.stdout.on("data", (d: Buffer) => {
    stdout += d;
    partial += d;
    const lines = partial.split("\n");
    partial = lines.pop()!;
    for (const l of lines) onLine?.(l);
  });
  child.stderr.on("data", (d) => (stderr += d));
  const done = new Promise<Run>((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

/** Writes an OpenAI batch input file from line objects (or raw strings) and returns its path. */
function inputFile(name: string, lines: (object | string)[]): string {
  const path = join(dir, name);
  writeFileSync(path, lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n") + "\n");
  return path;
}

const classify = (customId: string, input: string) => ({ custom_id: customId, method: "POST", url: "/classify", body: { model: "lote-sentiment", input } });
const portuguese = ["Eu amo estudar IA!", "Estou muito cansado hoje", "Esse filme foi terrível"];
/** An input file of n classify requests, r0..r(n-1), cycling through the Portuguese sentences. */
const bigFile = (name: string, n: number) => inputFile(name, Array.from({ length: n }, (_, i) => classify(`r${i}`, `${portuguese[i % 3]} ${i}`)));


/** Bytes in a file so far; 0 while it does not exist yet. */
function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function jsonLines(path: string): any[] {
  const text = readFileSync(path, "utf8");
  return text === "" ? [] : text.trimEnd().split("\n").map((l) => JSON.parse(l));
}

describe("lote client commands (real server and CLI as child processes)", () => {
  let db: TestDatabase;
  let server: LoteProcess;
  let pool: pg.Pool;
  const lote = (args: string[], env: Record<string, string> = {}) => startLote(args, { LOTE_SERVER: server.url, ...env }).done;
  const batchCount = async () => (await pool.query("SELECT count(*)::int AS n FROM lote.batches")).rows[0].n as number;
  const status = async (id: string) => JSON.parse((await lote(["status", id, "--json"])).stdout);

  // Requests a stopped server had claimed wait for their lease to run out before another server takes them over;
  // 2 s instead of the default 30 s keeps the restart test short.
  const config = { worker: { lease_ms: 2_000 } };

  beforeAll(async () => {
    db = await createTestDatabase();
    server = await startLoteProcess({ databaseUrl: db.url, config });
    pool = testPool(db.url);
  });
  afterAll(async () => {
    await server?.stop();
    await pool?.end();
    await db?.drop();
  });

  it("submits the Portuguese sentences with --wait, prints only the id on stdout and exits 0 when COMPLETED", async () => {
    const file = inputFile("pt.jsonl", portuguese.map((t, i) => classify(`pt-${i + 1}`, t)));
    const run = await lote(["submit", file, "--wait", "--metadata", "team=ml", "--metadata", "run=cli"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^batch_[0-9a-z]{26}\n$/);
    expect(run.stderr).toMatch(/completed: 3\/3 done, 3 completed, 0 failed/);
    const batch = await status(run.stdout.trim());
    expect(batch.status).toBe("BATCH_STATUS_COMPLETED");
    expect(batch.metadata).toEqual({ team: "ml", run: "cli" });
  });

  it("sends each body byte for byte as written in the file", async () => {
    // `input` a number: the built-in model answers 400, and a failed request keeps its stored body for RetryBatch
    // (a succeeded one lives on as its result only), so the row can be read after the batch ends.
    const body = '{"model": "lote-sentiment",  "input": 17, "seed": 12345678901234567891, "t": 1.0}';
    const file = inputFile("exact.jsonl", [`{"custom_id": "x", "method": "POST", "url": "/classify", "body": ${body}}`]);
    const run = await lote(["submit", file, "--wait"]);
    expect(run.code).toBe(0);
    const { rows } = await pool.query("SELECT body, status FROM lote.items WHERE batch_id = $1", [run.stdout.trim()]);
    expect(rows).toEqual([{ body, status: "failed" }]);
  });

  it("reports a line that is not UTF-8 (a file saved as Latin-1) with its line number, creates nothing and exits 65", async () => {
    const before = await batchCount();
    const latin1 = Buffer.from(`${JSON.stringify(classify("l1", "Esse filme foi terrível"))}\n`, "latin1");
    const path = join(dir, "latin1.jsonl");
    writeFileSync(path, Buffer.concat([Buffer.from(`${JSON.stringify(classify("l0", "bom"))}\n`), latin1]));
    const run = await lote(["submit", path]);
    expect(run.code).toBe(65);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(`${path}:2: not UTF-8 text at byte ${latin1.indexOf(0xed) + 1} of the line`);
    expect(await batchCount()).toBe(before);
  });

  it("reads a line whose JSON string holds a raw U+2028 or U+2029 as one request, in a file with CRLF line ends", async () => {
    // Raw U+2028/U+2029 are legal inside a JSON string; `input` a number keeps the stored bodies readable (see above).
    const bodies = ['{"model": "lote-sentiment", "input": 1, "note": "a\u2028b"}', '{"model": "lote-sentiment", "input": 2, "note": "c\u2029d"}'];
    const path = join(dir, "separators.jsonl");
    writeFileSync(path, bodies.map((b, i) => `{"custom_id": "u${i}", "method": "POST", "url": "/classify", "body": ${b}}\r\n`).join(""));
    const run = await lote(["submit", path, "--wait"]);
    expect(run.stderr).not.toMatch(/invalid line/);
    expect(run.code).toBe(0);
    const { rows } = await pool.query("SELECT custom_id, body FROM lote.items WHERE batch_id = $1 ORDER BY custom_id", [run.stdout.trim()]);
    expect(rows).toEqual([{ custom_id: "u0", body: bodies[0] }, { custom_id: "u1", body: bodies[1] }]);
  });

  it("leaves an existing output file as it was when the batch does not exist or the server cannot be reached", async () => {
    const out = join(dir, "kept.jsonl");
    const errors = join(dir, "kept-errors.jsonl");
    writeFileSync(out, "the previous download\n");
    writeFileSync(errors, "its errors\n");
    const missing = await lote(["results", "batch_nosuch", "-o", out, "--errors", errors]);
    expect(missing.code).toBe(1);
    const dead = await startLote(["results", "batch_nosuch", "-o", out], { LOTE_SERVER: `http://127.0.0.1:${await freePort()}` }).done;
    expect(dead.code).toBe(69);
    expect(readFileSync(out, "utf8")).toBe("the previous download\n");
    expect(readFileSync(errors, "utf8")).toBe("its errors\n");
  });

  it("returns the first batch again when submitted twice with the same --request-id", async () => {
    const file = inputFile("idem.jsonl", [classify("i", "bom")]);
    const first = await lote(["submit", file, "--request-id", "nightly-42", "--priority", "5"]);
    const second = await lote(["submit", file, "--request-id", "nightly-42", "--priority", "5"]);
    expect(first.code).toBe(0);
    expect(second.stdout).toBe(first.stdout);
    expect((await status(first.stdout.trim())).priority).toBe(5);
  });

  it("writes results and errors files in OpenAI's line shapes, one line per custom_id", async () => {
    const file = inputFile("mixed.jsonl", [classify("ok-1", portuguese[0]!), classify("bad-1", ""), classify("ok-2", portuguese[2]!)]);
    const id = (await lote(["submit", file, "--wait"])).stdout.trim();
    const out = join(dir, "out.jsonl");
    const errors = join(dir, "errors.jsonl");
    const run = await lote(["results", id, "-o", out, "--errors", errors]);
    expect(run.code).toBe(0);
    expect(run.stderr).toContain("wrote 3 results (2 succeeded, 1 failed)");
    const ok = jsonLines(out);
    expect(ok.map((l) => l.custom_id).sort()).toEqual(["ok-1", "ok-2"]);
    for (const l of ok) {
      expect(Object.keys(l)).toEqual(["id", "custom_id", "response", "error"]);
      expect(l.error).toBeNull();
      expect(Object.keys(l.response)).toEqual(["status_code", "request_id", "body"]);
      expect(l.response.status_code).toBe(200);
      expect(l.response.body.data[0].label).toBe(l.custom_id === "ok-1" ? "positive" : "negative");
    }
    // OpenAI's separators (", " and ": "), with the body as the backend sent it.
    expect(readFileSync(out, "utf8")).toMatch(/^\{"id": "res_\w+", "custom_id": "ok-\d", "response": \{"status_code": 200, "request_id": "\w+", "body": \{/);
    const failed = jsonLines(errors);
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ custom_id: "bad-1", response: null, error: { code: expect.any(String), message: expect.stringContaining("input") } });
    expect(Object.keys(failed[0].error)).toEqual(["code", "message"]);
  });

  it("writes every result once, each line whole, when --errors names the file -o writes", async () => {
    const file = inputFile("same-file.jsonl", [classify("ok-1", portuguese[0]!), classify("bad-1", ""), classify("ok-2", portuguese[2]!)]);
    const id = (await lote(["submit", file, "--wait"])).stdout.trim();
    const out = join(dir, "all.jsonl");
    const run = await lote(["results", id, "-o", out, "--errors", out]);
    expect(run.code).toBe(0);
    expect(run.stderr).toContain("wrote 3 results (2 succeeded, 1 failed)");
    // jsonLines parses every line: one written over another would not parse, and would be missing.
    expect(jsonLines(out).map((l) => l.custom_id).sort()).toEqual(["bad-1", "ok-1", "ok-2"]);
  });

  it("reports every invalid line with its line number, creates nothing and exits 65", async () => {
    const before = await batchCount();
    const file = inputFile("bad.jsonl", [
      classify("a", "bom"),
      "not json",
      { ...classify("", "bom"), method: "GET" },
      { ...classify("c", "bom"), url: "/v1/embeddings" },
      { custom_id: "d", method: "POST", url: "/classify", body: [1] },
    ]);
    const run = await lote(["submit", file]);
    expect(run.code).toBe(65);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(`${file}:2: not JSON`);
    expect(run.stderr).toContain(`${file}:3: expected "custom_id" to be a non-empty string`);
    expect(run.stderr).toContain(`${file}:3: expected "method" to be "POST", got "GET"`);
    expect(run.stderr).toContain(`${file}:4: expected "url" to be "/classify" like line 1`);
    expect(run.stderr).toContain(`${file}:5: expected "body" to be a JSON object, got an array`);
    expect(run.stderr.trimEnd().split("\n").at(-1)).toBe(`lote: ${file}: 4 invalid lines; nothing was sent`);
    expect(await batchCount()).toBe(before);
  });

  it("maps the server's field violations back to file lines and exits 65", async () => {
    const before = await batchCount();
    const file = inputFile("server-bad.jsonl", ["", classify("a", "bom"), classify("a", "bom"), { ...classify("b", "x"), body: { model: "lote-embed", input: "x" } }]);
    const run = await lote(["submit", file]);
    expect(run.code).toBe(65);
    // Line 1 is blank (skipped), so requests[1] is line 3 and requests[2] is line 4.
    expect(run.stderr).toContain(`${file}:3: custom_id: duplicate custom_id "a", first used by line 2 (DUPLICATE_CUSTOM_ID)`);
    expect(run.stderr).toMatch(new RegExp(`${file}:4: body\\.model: .*lote-embed.*\\(MODEL_MISMATCH\\)`));
    expect(run.stderr).toContain("lote: INVALID_ARGUMENT: the server refused the batch (2 problems); nothing was created");
    expect(await batchCount()).toBe(before);
    // 150 duplicates: the server reports its first 100, and the summary says it stopped there.
    const many = await lote(["submit", inputFile("server-many.jsonl", Array.from({ length: 151 }, () => classify("same", "bom")))]);
    expect(many.code).toBe(65);
    expect(many.stderr.match(/DUPLICATE_CUSTOM_ID/g)).toHaveLength(100);
    expect(many.stderr.trimEnd().split("\n").at(-1)).toBe("lote: INVALID_ARGUMENT: the server refused the batch (its first 100 problems; it stops looking there); nothing was created");
  });

  it("lists batches in a table and as JSON, filtered by metadata", async () => {
    const id = (await lote(["submit", inputFile("list.jsonl", [classify("l", "bom")]), "--metadata", "suite=list", "--wait"])).stdout.trim();
    const table = await lote(["list"]);
    expect(table.code).toBe(0);
    const [header, ...rows] = table.stdout.trimEnd().split("\n");
    expect(header!.split(/\s{2,}/)).toEqual(["ID", "STATUS", "MODEL", "DONE/TOTAL", "CREATED"]);
    expect(rows[0]!.split(/\s{2,}/)).toEqual([id, "completed", "lote-sentiment", "1/1", expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)]);
    const json = JSON.parse((await lote(["list", "--json", "--metadata", "suite=list", "--status", "completed"])).stdout);
    expect(json.map((b: any) => b.id)).toEqual([id]);
    const limited = JSON.parse((await lote(["list", "--json", "--limit", "2"])).stdout);
    expect(limited).toHaveLength(2);
  });

  it("retries the failed requests as a batch with retried_from, and --chain keeps the final result per custom_id", async () => {
    const file = inputFile("retry.jsonl", [classify("ok", portuguese[0]!), classify("empty-1", ""), classify("empty-2", "")]);
    const original = (await lote(["submit", file, "--wait"])).stdout.trim();
    const retry = await lote(["retry", original, "--wait"]);
    expect(retry.code).toBe(0);
    const retried = retry.stdout.trim();
    expect(retried).toMatch(/^batch_[0-9a-z]{26}$/);
    const batch = await status(retried);
    expect(batch.retriedFrom).toBe(original);
    expect(batch.requestCounts.total).toBe("2");
    expect((await lote(["status", retried])).stdout).toContain(`retried from: ${original}`);
    // From either end of the chain: the retry's results for what it re-ran, the original's successes otherwise.
    for (const from of [retried, original]) {
      const out = join(dir, `chain-${from}.jsonl`);
      expect((await lote(["results", from, "--chain", "-o", out])).code).toBe(0);
      const lines = jsonLines(out);
      expect(lines.map((l) => l.custom_id).sort()).toEqual(["empty-1", "empty-2", "ok"]);
      for (const l of lines) expect(l.id).toContain(l.custom_id === "ok" ? original.slice(6) : retried.slice(6));
    }
  });

  it("estimates tokens and cost without creating a batch", async () => {
    const before = await batchCount();
    const run = await lote(["estimate", inputFile("estimate.jsonl", portuguese.map((t, i) => classify(`e${i}`, t)))]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^model: +lote-sentiment$/m);
    expect(run.stdout).toMatch(/^requests: +3$/m);
    expect(run.stdout).toMatch(/^input tokens: +[1-9]\d*$/m);
    expect(run.stdout).toMatch(/^estimated cost: +unknown \(no prices configured for lote-sentiment\)$/m);
    expect(await batchCount()).toBe(before);
  });

  it("runs a small batch synchronously and prints its output lines in input order", async () => {
    const run = await lote(["run", inputFile("run.jsonl", portuguese.map((t, i) => classify(`s${i}`, t))), "--timeout", "30s"]);
    expect(run.code).toBe(0);
    const lines = run.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
    expect(lines.map((l) => l.custom_id)).toEqual(["s0", "s1", "s2"]);
    expect(lines.map((l) => l.response.body.data[0].label)).toEqual(["positive", "negative", "negative"]);
  });

  it("exits 69 naming the server and the gRPC code when nothing listens at LOTE_SERVER", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    for (const args of [["status", "batch_x"], ["watch", "batch_x"], ["results", "batch_x"]]) {
      const run = await startLote(args, { LOTE_SERVER: dead }).done;
      expect(run.code).toBe(69);
      expect(run.stderr).toBe(`lote: cannot reach ${dead}: UNAVAILABLE: connect ECONNREFUSED ${dead.slice(7)}\n`);
    }
  });

  it("exits 1 with NOT_FOUND and 2 on a bad flag, each as one lote: line", async () => {
    const missing = await lote(["status", "batch_missing"]);
    expect(missing).toMatchObject({ code: 1, stderr: 'lote: NOT_FOUND: batch "batch_missing" not found\n' });
    const usage = await lote(["submit", "x.jsonl", "--window", "soon"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^lote: option '--window <duration>' argument 'soon' is invalid\. expected a duration above zero such as 90s, 30m, 24h or 7d, got "soon"\n$/);
  });

  it("exits 2 on a wrong command line of any command, server ones too, and 66 when the input file cannot be read", async () => {
    const wrong = [["nosuch"], ["serve", "--bogus"], ["keys", "create"], ["workers", "--bogus"], ["keys", "create", "--tenant", ""],
      ["keys", "create", "--tenant", "a\tb"], ["run", "x.jsonl", "--timeout", "0s"], ["submit", "x.jsonl", "--window", "0h"]];
    for (const args of wrong) {
      const run = await lote(args);
      expect({ args, code: run.code }).toEqual({ args, code: 2 });
    }
    const zero = await lote(["run", "x.jsonl", "--timeout", "0s"]);
    expect(zero.stderr).toContain('expected a duration above zero such as 90s, 30m, 24h or 7d, got "0s"');
    const directory = await lote(["submit", dir]);
    expect(directory.code).toBe(66);
    expect(directory.stderr).toBe(`lote: cannot read ${dir}: EISDIR: illegal operation on a directory, read\n`);
    const missing = await lote(["submit", join(dir, "no-such-file.jsonl")]);
    expect(missing.code).toBe(66);
    expect(missing.stderr).toMatch(/^lote: cannot read .*no-such-file\.jsonl: ENOENT/);
  });

  // Last: it replaces the server.
  it("resumes a results stream dropped by a server restart from the last cursor, with no duplicate", async () => {
    const n = 3000;
    const id = (await lote(["submit", bigFile("restart.jsonl", n)])).stdout.trim();
    const out = join(dir, "restart-out.jsonl");
    const follow = startLote(["results", id, "--follow", "-o", out], { LOTE_SERVER: server.url });
    await until("the first results on disk", () => (sizeOf(out) > 0 ? true : undefined));
    await server.stop();
    server = await startLoteProcess({ databaseUrl: db.url, config, env: { LOTE_PORT: String(server.port) } });
    const run = await follow.done;
    expect(run.code).toBe(0);
    expect(run.stderr).toMatch(/results stream dropped \(UNAVAILABLE: .*\); resuming in/);
    const ids = jsonLines(out).map((l) => l.custom_id);
    expect(ids).toHaveLength(n);
    expect(new Set(ids).size).toBe(n);
  });
});

// The dispatcher refuses a 2xx answer that is not shaped as a JSON object (a proxy's HTML page is a protocol_error),
// but it looks at the first and last characters only: a body garbled inside its braces is stored as it came, and so
// is anything stored before that check.
describe("lote results from a backend that answers 2xx with a body garbled inside its braces", () => {
  let db: TestDatabase;
  let server: LoteProcess;
  let backend: HttpServer;
  const page = '{"id": "chatcmpl-1",\n<html><body>Welcome to nginx!</body></html>}\n';

  beforeAll(async () => {
    db = await createTestDatabase();
    backend = createHttpServer((req, res) => req.resume().on("end", () => res.writeHead(200, { "content-type": "text/html" }).end(page)));
    await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`;
    server = await startLoteProcess({ databaseUrl: db.url, config: { models: [{ name: "behind-proxy", backend: { kind: "openai", urls: [url] } }] } });
  });
  afterAll(async () => {
    await server?.stop();
    await new Promise((resolve) => backend?.close(resolve));
    await db?.drop();
  });

  it("writes every line as JSON, the body as the string the backend sent", async () => {
    const file = inputFile("proxy.jsonl", [{ custom_id: "p", method: "POST", url: "/v1/chat/completions", body: { model: "behind-proxy", messages: [{ role: "user", content: "hi" }] } }]);
    const id = (await startLote(["submit", file, "--wait"], { LOTE_SERVER: server.url }).done).stdout.trim();
    const out = join(dir, "proxy-out.jsonl");
    const run = await startLote(["results", id, "-o", out], { LOTE_SERVER: server.url }).done;
    expect(run.code).toBe(0);
    const [line] = jsonLines(out);
    expect(line).toMatchObject({ custom_id: "p", response: { status_code: 200, body: page }, error: null });
  });
});

describe("lote client over TLS with a private CA and API keys", () => {
  let db: TestDatabase;
  let server: LoteProcess;
  let ca: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    // A private CA and a server certificate for 127.0.0.1 signed by it.
    const openssl = (...args: string[]) => execFileP("openssl", args, { cwd: dir });
    await openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=lote test CA", "-keyout", "ca.key", "-out", "ca.pem");
    await openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr");
    writeFileSync(join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1\n");
    await openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem");
    ca = join(dir, "ca.pem");
    server = await startLoteProcess({
      databaseUrl: db.url,
      config: { tls: { cert_file: join(dir, "server.pem"), key_file: join(dir, "server.key") } },
      env: { LOTE_AUTH_REQUIRED: "true" },
    });
  });
  afterAll(async () => {
    await server?.stop();
    await db?.drop();
  });

  it("connects with --ca and LOTE_API_KEY, exits 77 without a key and 69 when the certificate is not trusted", async () => {
    const address = `https://127.0.0.1:${server.port}`;
    const { stdout: key } = await execFileP(process.execPath, ["--import", "tsx", "src/cli/main.ts", "keys", "create", "--tenant", "acme"], {
      cwd: root, env: { ...process.env, DATABASE_URL: db.url },
    });
    const file = inputFile("tls.jsonl", [classify("t", portuguese[0]!)]);
    const ok = await startLote(["submit", file, "--wait", "--server", address, "--ca", ca], { LOTE_API_KEY: key.trim() }).done;
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^batch_\w+\n$/);
    const noKey = await startLote(["list", "--server", address, "--ca", ca]).done;
    expect(noKey.code).toBe(77);
    expect(noKey.stderr).toMatch(/^lote: UNAUTHENTICATED: .* \(set LOTE_API_KEY\)\n$/);
    const untrusted = await startLote(["list", "--server", address], { LOTE_API_KEY: key.trim() }).done;
    expect(untrusted.code).toBe(69);
    expect(untrusted.stderr).toBe(`lote: cannot reach ${address}: TLS: unable to verify the first certificate (trust the CA that signed its certificate with --ca FILE)\n`);
    expect(server.logs()).not.toContain(key.trim());
  });
});

describe("lote watch and results --follow while a worker runs the batch (an API node; the worker starts once the CLI is up)", () => {
  // The batch waits on an API-only node until `watch` shows it, and only then does a worker start: built-in
  // requests finish at thousands a second, so a batch submitted to a serving node could end before `watch` (a
  // second Node process, 1-2 s to start under load) draws anything (a CI run saw 8,000 finish first).
  let db: TestDatabase;
  let api: LoteProcess;
  let worker: LoteProcess | undefined;
  const lote = (args: string[]) => startLote(args, { LOTE_SERVER: api.url }).done;
  const startWorker = async (config?: Record<string, unknown>) => (worker = await startLoteProcess({ databaseUrl: db.url, role: "worker", config }));

  beforeAll(async () => {
    db = await createTestDatabase();
    api = await startLoteProcess({ databaseUrl: db.url, role: "api" });
  });
  afterEach(async () => {
    await worker?.stop();
    worker = undefined;
  });
  afterAll(async () => {
    await api?.stop();
    await db?.drop();
  });

  it("watches with plain throttled lines when stdout is not a TTY, and exits 3 when the batch is cancelled", async () => {
    const id = (await lote(["submit", bigFile("cancel.jsonl", 5_000)])).stdout.trim();
    const arrivals: number[] = [];
    const spawnedAt = Date.now();
    const watch = startLote(["watch", id], { LOTE_SERVER: api.url }, () => arrivals.push(Date.now()));
    await until("the first progress line", () => (arrivals.length >= 1 ? true : undefined));
    // 2,000 requests a minute: the worker runs 2,000 at once, then waits for the minute's window to move, so the
    // cancel lands on a batch that is still running however fast the machine is.
    await startWorker({ models: [{ name: "lote-sentiment", endpoints: ["/classify"], backend: { kind: "builtin" }, requests_per_minute: 2_000 }] });
    // A second line shows the throttle at work.
    await until("a second, throttled progress line", () => (arrivals.length >= 2 ? true : undefined));
    const cancel = await lote(["cancel", id]);
    expect(cancel.code).toBe(0);
    expect(cancel.stdout).toMatch(new RegExp(`^${id} (cancelling|cancelled)\n$`));
    const run = await watch.done;
    const lifetimeMs = Date.now() - spawnedAt;
    expect(run.code).toBe(3);
    const lines = run.stdout.trimEnd().split("\n");
    expect(lines.length).toBeGreaterThanOrEqual(2);
    for (const l of lines.slice(0, -1)) expect(l).toMatch(new RegExp(`^${id} (in_progress|cancelling): \\d+/5000 done, \\d+ completed, \\d+ failed, (-|[\\d.]+)/s, ETA \\S+$`));
    expect(lines.at(-1)).toMatch(new RegExp(`^${id} cancelled: \\d+/5000 done, (\\d+) completed, 0 failed, (\\d+) cancelled`));
    const [, completed, cancelled] = new RegExp(`(\\d+) completed, 0 failed, (\\d+) cancelled`).exec(lines.at(-1)!)!;
    expect(Number(completed)).toBeLessThanOrEqual(2_000);
    expect(Number(completed) + Number(cancelled)).toBe(5_000);
    // At most one line a second, the final one excepted. Counted against the process's whole life rather than the
    // gaps between arrivals: a busy test process reads lines written a second apart in one chunk (a CI run saw two
    // arrive 4 ms apart), while n throttled lines need at least n - 1 seconds whenever they are read. Unthrottled,
    // a line per update would be hundreds.
    expect((lines.length - 2) * 1000).toBeLessThanOrEqual(lifetimeMs);
    expect((await lote(["cancel", id])).code).toBe(1);
  });

  it("writes results with --follow while the batch is still running, each exactly once", async () => {
    const n = 20_000;
    const id = (await lote(["submit", bigFile("follow.jsonl", n)])).stdout.trim();
    const out = join(dir, "follow-out.jsonl");
    const follow = startLote(["results", id, "--follow", "-o", out], { LOTE_SERVER: api.url });
    // Started together, the worker and the CLI take about as long to come up; 20,000 requests then take seconds.
    await startWorker();
    await until("the first results on disk", () => (sizeOf(out) > 0 ? true : undefined));
    const batch = JSON.parse((await lote(["status", id, "--json"])).stdout);
    expect(batch.status).not.toBe("BATCH_STATUS_COMPLETED");
    const run = await follow.done;
    expect(run.code).toBe(0);
    const ids = jsonLines(out).map((l) => l.custom_id);
    expect(ids).toHaveLength(n);
    expect(new Set(ids).size).toBe(n);
  });

  it("draws a progress bar with counts, rate and ETA when stdout is a TTY", async () => {
    const id = (await lote(["submit", bigFile("tty.jsonl", 4_000)])).stdout.trim();
    // util-linux `script` runs the command on a pseudo-terminal and copies what it draws to our pipe.
    const command = [process.execPath, "--import", "tsx", "src/cli/main.ts", "watch", id].join(" ");
    let stdout = "";
    const run = new Promise<Run>((resolve) => {
      const child = spawn("script", ["-qfec", command, "/dev/null"], { cwd: root, env: { ...process.env, LOTE_SERVER: api.url, LOTE_API_KEY: "" }, stdio: ["ignore", "pipe", "pipe"] });
      child.stdout.on("data", (d) => (stdout += d));
      child.on("close", (code) => resolve({ code, stdout, stderr: "" }));
    });
    const inProgress = new RegExp(`${id} \u2588*\u2591* \\d+% \\| \\d+/4000 done \\| \\d+ completed, 0 failed \\| (-|[\\d.]+)/s \\| ETA \\S+ \\| in_progress`);
    await until("a bar drawn while the batch is in progress", () => inProgress.test(stdout));
    await startWorker();
    const { code } = await run;
    expect(code).toBe(0);
    expect(stdout).toContain("\u2588".repeat(30) + " 100% | 4000/4000 done | 4000 completed, 0 failed");
    expect(stdout).toMatch(new RegExp(`${id} completed: 4000/4000 done, 4000 completed, 0 failed, 0 cancelled, 0 expired`));
  });
});

describe("lote results --follow through a database outage (an API node behind a TCP proxy to Postgres)", () => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  let api: LoteProcess;
  let worker: LoteProcess | undefined;

  beforeAll(async () => {
    db = await createTestDatabase();
    const proxied = await proxyTo(db.url);
    proxy = proxied.proxy;
    api = await startLoteProcess({ databaseUrl: proxied.url, role: "api" });
  });
  afterAll(async () => {
    await worker?.stop();
    await api?.stop();
    await proxy?.cut();
    await db?.drop();
  });

  it("keeps following while the API answers UNAVAILABLE for 15 s, then writes every result once", async () => {
    const n = 500;
    const submitted = await startLote(["submit", bigFile("outage.jsonl", n)], { LOTE_SERVER: api.url }).done;
    const id = submitted.stdout.trim();
    const out = join(dir, "outage-out.jsonl");
    let stderr = "";
    const follow = startLote(["results", id, "--follow", "-o", out], { LOTE_SERVER: api.url });
    follow.child.stderr.on("data", (d) => (stderr += d));
    // No worker yet: the stream is open and waits. Then Postgres becomes unreachable for the API node for longer
    // than the ~10 s of retries the CLI used to allow.
    // The CLI opens its output file once it found the batch: from then on the server is known to be reachable.
    await until("the CLI found the batch", () => (existsSync(out) ? true : undefined));
    const port = proxy.port;
    await proxy.cut();
    // The stream drops, or (if the cut comes first) the read of the batch that precedes it fails: retried alike.
    await until("the CLI retrying", () => (/(results stream dropped|reading batch \S+ failed) \(UNAVAILABLE/.test(stderr) ? true : undefined), 20_000)
      .catch((err: Error) => { throw new Error(`${err.message}; the CLI ${follow.child.exitCode === null ? "runs" : `exited ${follow.child.exitCode}`}, its stderr: ${stderr}`); });
    const cutAt = Date.now();
    // A one-off call meanwhile is told the server answered, and that it is its database that is away.
    const status = await startLote(["status", id], { LOTE_SERVER: api.url }).done;
    expect(status.code).toBe(69);
    expect(status.stderr).toMatch(new RegExp(`^lote: ${api.url.replace(/[.]/g, "\\.")} is unavailable: UNAVAILABLE: .+ \\(try again later\\)\n$`));
    // The outage itself: a fixed length, not a wait for something to happen.
    await sleep(15_000 - (Date.now() - cutAt));
    expect(follow.child.exitCode).toBeNull();
    await proxy.start(port);
    worker = await startLoteProcess({ databaseUrl: db.url, role: "worker" });
    const run = await follow.done;
    expect(run.code).toBe(0);
    const ids = jsonLines(out).map((l) => l.custom_id);
    expect(ids).toHaveLength(n);
    expect(new Set(ids).size).toBe(n);
  });
});
