import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/database.ts";
import { startLoteProcess, type LoteProcess } from "../support/lote-process.ts";

const run = promisify(execFile);
const root = new URL("../../", import.meta.url).pathname;
// Debian's interpreter, not a pyenv shim first on PATH: python3-grpcio and python3-protobuf are installed for it.
const python = "/usr/bin/python3";

/** Throws, naming the install script, when a Debian package of the Python toolchain is missing. Never skips. */
async function requireToolchain(): Promise<void> {
  const problems: string[] = [];
  const probe = async (what: string, file: string, args: string[]) => {
    try {
      await run(file, args);
    } catch {
      problems.push(what);
    }
  };
  await probe("protoc (protobuf-compiler)", "protoc", ["--version"]);
  await probe("grpc_python_plugin (protobuf-compiler-grpc)", "sh", ["-c", "command -v grpc_python_plugin"]);
  await probe("grpc and google.protobuf for /usr/bin/python3 (python3-grpcio, python3-protobuf)", python, ["-c", "import grpc, google.protobuf"]);
  if (!existsSync("/usr/include/google/protobuf/struct.proto")) problems.push("well-known .proto files (libprotobuf-dev)");
  if (problems.length > 0) {
    throw new Error(`Python client toolchain missing: ${problems.join("; ")}. Run scripts/install-python-client-deps.sh (as root).`);
  }
}

/** Runs Debian's python3 with the generated modules from `genDir`, and nothing from the caller's Python setup. */
function runPython(genDir: string, args: string[], env: Record<string, string> = {}) {
  const { PYTHONPATH: _path, PYTHONHOME: _home, ...rest } = process.env;
  return run(python, args, {
    cwd: root,
    timeout: 30_000,
    env: { ...rest, PYTHONNOUSERSITE: "1", LOTE_CLIENT_GEN_DIR: genDir, ...env },
  });
}

describe("Python client (clients/python, generated with Debian's protoc and grpc_python_plugin)", () => {
  let db: TestDatabase;
  let lote: LoteProcess;
  let genDir: string;
  // A backend behind a proxy that answers 200 with a body garbled inside its braces: shaped as a JSON object, which is
  // all the dispatcher checks (an HTML page alone is a protocol_error), but not JSON.
  let proxy: Server;
  const page = '{"id": "chatcmpl-1", <html><body>Welcome to nginx!</body></html>}\n';

  beforeAll(async () => {
    await requireToolchain();
    genDir = mkdtempSync(join(tmpdir(), "lote-python-gen-"));
    await run("sh", [join(root, "clients/python/generate.sh"), genDir]);
    db = await createTestDatabase();
    proxy = createServer((req, res) => req.resume().on("end", () => res.writeHead(200, { "content-type": "text/html" }).end(page)));
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    lote = await startLoteProcess({ databaseUrl: db.url, config: { models: [{ name: "behind-proxy", backend: { kind: "openai", urls: [url] } }] } });
  });
  afterAll(async () => {
    await lote?.stop();
    await new Promise((resolve) => proxy?.close(resolve));
    await db?.drop();
    if (genDir) rmSync(genDir, { recursive: true, force: true });
  });

  it("generates modules that import cleanly, the gRPC stub and BadRequest included", async () => {
    const { stdout } = await runPython(genDir, [
      "-c",
      "import sys; sys.path.insert(0, 'clients/python'); import lote_client; " +
        "from lote.v1 import batch_service_pb2_grpc as g; from google.rpc import error_details_pb2 as e; " +
        "import google.protobuf.struct_pb2; print(g.BatchServiceStub.__name__, e.BadRequest.DESCRIPTOR.full_name)",
    ]);
    expect(stdout.trim()).toBe("BatchServiceStub google.rpc.BadRequest");
  });

  it("runs example.py: creates the batch, watches it to COMPLETED and prints one label per sentence", async () => {
    const { stdout } = await runPython(genDir, ["clients/python/example.py", "--target", `127.0.0.1:${lote.port}`]);
    const lines = stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^created batch_[0-9a-z]{26} \(3 requests\)$/);
    // Progress lines from WatchBatch: "<STATUS> <done>/<total>", the last one terminal.
    const progress = lines.filter((l) => /^[A-Z_]+ \d+\/3$/.test(l));
    expect(progress.length).toBeGreaterThanOrEqual(1);
    expect(progress.at(-1)).toBe("COMPLETED 3/3");
    const labels = Object.fromEntries(
      lines.filter((l) => /^s\d /.test(l)).map((l) => {
        const [id, label, confidence] = l.split(" ");
        expect(Number(confidence)).toBeGreaterThan(0);
        expect(Number(confidence)).toBeLessThanOrEqual(1);
        return [id, label];
      }),
    );
    expect(labels).toEqual({ s0: "positive", s1: "negative", s2: "negative" });
  });

  it("raises LoteError with the server's BadRequest field violations for invalid input", async () => {
    const script = [
      "import sys; sys.path.insert(0, 'clients/python')",
      "from lote_client import LoteClient, LoteError",
      `c = LoteClient('127.0.0.1:${lote.port}')`,
      "try:",
      "    c.create_batch('classify', [('dup', {'model': 'lote-sentiment', 'input': 'a'}), ('dup', {'model': 'lote-sentiment', 'input': 'b'})])",
      "except LoteError as e:",
      "    print(e.code.name); [print(v.field) for v in e.field_violations]",
    ].join("\n");
    const { stdout } = await runPython(genDir, ["-c", script]);
    const [code, ...fields] = stdout.trim().split("\n");
    expect(code).toBe("INVALID_ARGUMENT");
    expect(fields.some((f) => f.includes("custom_id"))).toBe(true);
  });

  it("yields every result when a 2xx body is not JSON, that body as its text", async () => {
    const script = [
      "import sys; sys.path.insert(0, 'clients/python')",
      "from lote_client import LoteClient",
      `c = LoteClient('127.0.0.1:${lote.port}')`,
      "b = c.create_batch('chat_completions', [(f'p{i}', {'model': 'behind-proxy', 'messages': [{'role': 'user', 'content': 'hi'}]}) for i in range(2)])",
      "for r in c.results(b.id):",
      "    print(r.custom_id, repr(r.response))",
    ].join("\n");
    const { stdout } = await runPython(genDir, ["-c", script]);
    const text = `'{"id": "chatcmpl-1", <html><body>Welcome to nginx!</body></html>}\\n'`;
    expect(stdout.trim().split("\n").sort()).toEqual([`p0 ${text}`, `p1 ${text}`]);
  });

  it("raises LoteError NOT_FOUND for a batch that does not exist", async () => {
    const script = [
      "import sys; sys.path.insert(0, 'clients/python')",
      "from lote_client import LoteClient, LoteError",
      "try:",
      `    LoteClient('127.0.0.1:${lote.port}').get_batch('batch_00000000000000000000000000')`,
      "except LoteError as e:",
      "    print(e.code.name)",
    ].join("\n");
    const { stdout } = await runPython(genDir, ["-c", script]);
    expect(stdout.trim()).toBe("NOT_FOUND");
  });
});
