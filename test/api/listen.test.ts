import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { connect as http2Connect, constants as http2Constants } from "node:http2";
import { request as httpsRequest } from "node:https";
import { connect as netConnect, createServer as createNetServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { BatchSchema, BatchStatus } from "../../gen/lote/v1/batch_pb.ts";
import { BatchService } from "../../gen/lote/v1/batch_service_pb.ts";
import { listen, type ListenOptions, requestIdKey, sniffProtocol } from "../../src/api/listen.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";
import { until } from "../support/until.ts";

const run = promisify(execFile);
const protoDir = new URL("../../proto", import.meta.url).pathname;

/** BatchService stub: GetBatch answers a fixed batch (id "missing" → NOT_FOUND, "slow" → waits for `release`),
 * WatchBatch sends one batch then waits for its signal and returns as a careless handler would. */
function stubRoutes(state: { release?: () => void; seenRequestIds: string[] }) {
  return (router: ConnectRouter) =>
    router.service(BatchService, {
      async getBatch(req, ctx) {
        const requestId = ctx.values.get(requestIdKey);
        state.seenRequestIds.push(requestId);
        if (req.id === "missing") throw new ConnectError("batch not found", Code.NotFound);
        if (req.id === "slow") await new Promise<void>((resolve) => (state.release = resolve));
        return create(BatchSchema, { id: req.id, model: "gpt-4o-mini", status: BatchStatus.IN_PROGRESS, metadata: { requestId } });
      },
      async *watchBatch(req, ctx) {
        yield { batch: { id: req.id, status: BatchStatus.IN_PROGRESS } };
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      },
    });
}

/** A pino logger whose lines land in `lines`, parsed. */
function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { logger, lines };
}

async function startStub(extra: Partial<ListenOptions> = {}) {
  const state: { release?: () => void; seenRequestIds: string[] } = { seenRequestIds: [] };
  const { logger, lines } = capturingLogger();
  const server = await listen({ port: 0, routes: stubRoutes(state), health: { check: async () => true }, logger, ...extra });
  return { server, state, lines };
}

type GrpcClient = grpc.Client & {
  getBatch(req: object, metadata: grpc.Metadata, callback: (err: grpc.ServiceError | null, res: any) => void): void;
  watchBatch(req: object): grpc.ClientReadableStream<unknown>;
};
const definition = protoLoader.loadSync("lote/v1/batch_service.proto", { includeDirs: [protoDir], longs: String, enums: String });
const BatchServiceClient = (grpc.loadPackageDefinition(definition) as any).lote.v1.BatchService as typeof grpc.Client;

function grpcClient(address: string, credentials = grpc.credentials.createInsecure(), options: grpc.ClientOptions = {}): GrpcClient {
  return new BatchServiceClient(address, credentials, options) as GrpcClient;
}

/**
 * The timer the kernel runs on the socket of 127.0.0.1:`localPort` connected to `remotePort` (/proc/net/tcp's `tr`
 * and `tm->when` columns: kind 0 none, 1 retransmit, 2 keepalive), or undefined when there is no such socket.
 */
async function tcpTimer(localPort: number, remotePort: number): Promise<{ kind: number; seconds: number } | undefined> {
  const hexPort = (p: number) => p.toString(16).toUpperCase().padStart(4, "0");
  for (const line of (await readFile("/proc/net/tcp", "utf8")).split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1]?.endsWith(`:${hexPort(localPort)}`) && f[2]?.endsWith(`:${hexPort(remotePort)}`)) {
      const [kind, when] = f[5]!.split(":");
      return { kind: parseInt(kind!, 16), seconds: parseInt(when!, 16) / 100 };
    }
  }
  return undefined;
}

function getBatch(client: GrpcClient, id: string, metadata = new grpc.Metadata()): Promise<any> {
  return new Promise((resolve, reject) => client.getBatch({ id }, metadata, (err, res) => (err ? reject(err) : resolve(res))));
}

async function waitFor<T>(probe: () => T | undefined, what: string, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("cleartext port", () => {
  let stub: Awaited<ReturnType<typeof startStub>>;
  let address: string;
  beforeAll(async () => {
    stub = await startStub();
    address = `127.0.0.1:${stub.server.port}`;
  });
  afterAll(() => stub.server.close(1000));

  it("serves GetBatch over gRPC on h2c to a grpc-js client", async () => {
    const client = grpcClient(address);
    const batch = await getBatch(client, "batch_1");
    client.close();
    expect(batch).toMatchObject({ id: "batch_1", model: "gpt-4o-mini", status: "BATCH_STATUS_IN_PROGRESS" });
    const line = stub.lines.find((l) => l.msg === "rpc" && l.requestId === batch.metadata.requestId);
    expect(line).toMatchObject({ procedure: "lote.v1.BatchService/GetBatch", protocol: "grpc", http: "2.0", code: "ok" });
    expect(batch.metadata.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("serves Connect JSON over HTTP/1.1 on the same port", async () => {
    const res = await fetch(`${stub.server.url}/lote.v1.BatchService/GetBatch`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": "curl-42" },
      body: JSON.stringify({ id: "batch_2" }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-request-id")).toBe("curl-42");
    expect(await res.json()).toMatchObject({ id: "batch_2", model: "gpt-4o-mini", metadata: { requestId: "curl-42" } });
    expect(stub.lines.find((l) => l.requestId === "curl-42")).toMatchObject({ protocol: "connect", http: "1.1", code: "ok" });
  });

  it("answers a Connect error as JSON with the HTTP status of its code", async () => {
    const res = await fetch(`${stub.server.url}/lote.v1.BatchService/GetBatch`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ id: "missing" }),
    });
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ code: "not_found", message: "batch not found" });
  });

  it("serves gRPC-Web over HTTP/1.1 and over h2c", async () => {
    for (const httpVersion of ["1.1", "2"] as const) {
      const transport = createGrpcWebTransport({ baseUrl: stub.server.url, httpVersion });
      const client = createClient(BatchService, transport);
      const requestId = `web-${httpVersion}`;
      const batch = await client.getBatch({ id: "batch_3" }, { headers: { "x-request-id": requestId } });
      expect(batch.id).toBe("batch_3");
      const line = stub.lines.find((l) => l.requestId === requestId);
      expect(line).toMatchObject({ protocol: "grpc-web", http: httpVersion === "2" ? "2.0" : "1.1", code: "ok" });
    }
  });

  it("logs one line per call with the client's request id and code, and never the authorization header", async () => {
    const client = grpcClient(address);
    const metadata = new grpc.Metadata();
    metadata.set("x-request-id", "req-abc");
    metadata.set("authorization", "Bearer sk-very-secret");
    await expect(getBatch(client, "missing", metadata)).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    client.close();
    expect(stub.state.seenRequestIds).toContain("req-abc");
    const lines = stub.lines.filter((l) => l.requestId === "req-abc");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 30, component: "api", procedure: "lote.v1.BatchService/GetBatch", code: "not_found" });
    expect(typeof lines[0]!.durationMs).toBe("number");
    expect(JSON.stringify(stub.lines)).not.toContain("very-secret");
  });

  it("logs a health check that answered at debug, not info, and one that failed at info", async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const server = await listen({ port: 0, routes: stubRoutes({ seenRequestIds: [] }), health: { check: async () => true }, logger });
    try {
      const client = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
      expect((await client.check({ service: "" }, { headers: { "x-request-id": "probe-1" } })).status).toBe(ServingStatus.SERVING);
      await expect(client.check({ service: "no.such.Service" }, { headers: { "x-request-id": "probe-2" } }))
        .rejects.toMatchObject({ code: Code.NotFound });
      await until("both checks logged", () => lines.filter((l) => l.msg === "rpc").length >= 2 || undefined);
      // pino levels: 20 debug, 30 info. Before, every probe wrote an info line.
      expect(lines.find((l) => l.requestId === "probe-1")).toMatchObject({ level: 20, procedure: "grpc.health.v1.Health/Check", code: "ok" });
      expect(lines.find((l) => l.requestId === "probe-2")).toMatchObject({ level: 30, procedure: "grpc.health.v1.Health/Check", code: "not_found" });
    } finally {
      await server.close(1000);
    }
  });

  it("replaces a request id that is too long or has odd characters", async () => {
    const res = await fetch(`${stub.server.url}/lote.v1.BatchService/GetBatch`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": "a b\"c" },
      body: JSON.stringify({ id: "batch_4" }),
    });
    expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("answers 404 to a path that is no procedure and logs it", async () => {
    const res = await fetch(`${stub.server.url}/nope`, { method: "POST" });
    expect(res.status).toBe(404);
    await waitFor(() => stub.lines.find((l) => l.msg === "request" && l.path === "/nope" && l.status === 404), "404 line");
  });

  it("accepts 8 MB requests, twice gRPC's usual 4 MiB limit, over gRPC and over HTTP/1.1", async () => {
    const id = "x".repeat(8 << 20);
    const client = grpcClient(address, undefined, { "grpc.max_receive_message_length": -1 });
    const batch = await getBatch(client, id);
    client.close();
    expect(batch.id.length).toBe(id.length);
    const res = await fetch(`${stub.server.url}/lote.v1.BatchService/GetBatch`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ id }),
    });
    expect(((await res.json()) as { id: string }).id.length).toBe(id.length);
  });

  it("decides the protocol when the first bytes arrive one at a time", async () => {
    const proxy = await tricklingProxy(stub.server.port);
    try {
      const port = (proxy.address() as { port: number }).port;
      const client = grpcClient(`127.0.0.1:${port}`);
      expect(await getBatch(client, "batch_h2")).toMatchObject({ id: "batch_h2" });
      client.close();
      const res = await fetch(`http://127.0.0.1:${port}/lote.v1.BatchService/GetBatch`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ id: "batch_h1" }),
      });
      expect(await res.json()).toMatchObject({ id: "batch_h1" });
    } finally {
      proxy.close();
    }
  });
});

describe("options", () => {
  it("refuses bad options with a message saying what was expected and what was found", async () => {
    const base = { routes: () => {}, health: { check: async () => true }, logger: pino({ level: "silent" }) };
    await expect(listen({ ...base, port: 70000 })).rejects.toThrow("Expected `port` to be an integer from 0 to 65535, got 70000");
    await expect(listen({ ...base, readMaxBytes: 0 })).rejects.toThrow("Expected `readMaxBytes` to be an integer from 1 to 4294967295, got 0");
    await expect(listen({ ...base, tls: { cert: "-----BEGIN x", key: "-----BEGIN y", requireClientCert: true } })).rejects.toThrow(
      "Expected `tls.ca` to be a PEM string when tls.requireClientCert is true",
    );
  });

  it("fails to listen on a port that is taken", async () => {
    const stub = await startStub();
    try {
      await expect(startStub({ port: stub.server.port })).rejects.toMatchObject({ code: "EADDRINUSE" });
    } finally {
      await stub.server.close(1000);
    }
  });
});

describe("sniffProtocol", () => {
  it("waits while the bytes could still be the HTTP/2 preface and decides at the first that cannot", () => {
    expect(sniffProtocol(Buffer.from(""))).toBeUndefined();
    expect(sniffProtocol(Buffer.from("PR"))).toBeUndefined();
    expect(sniffProtocol(Buffer.from("PRI "))).toBe("h2");
    expect(sniffProtocol(Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))).toBe("h2");
    expect(sniffProtocol(Buffer.from("P"))).toBeUndefined();
    expect(sniffProtocol(Buffer.from("PO"))).toBe("http1");
    expect(sniffProtocol(Buffer.from("GET / HTTP/1.1\r\n"))).toBe("http1");
  });
});

/** A TCP proxy that forwards the client's first 40 bytes one per write, 3 ms apart, so the server reads them
 * in separate chunks. */
async function tricklingProxy(targetPort: number): Promise<Server> {
  const proxy = createNetServer((client: Socket) => {
    const upstream = netConnect(targetPort, "127.0.0.1");
    upstream.setNoDelay(true);
    upstream.pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    let sent = 0;
    let chain = Promise.resolve();
    client.on("data", (chunk: Buffer) => {
      chain = chain.then(async () => {
        let i = 0;
        for (; i < chunk.length && sent < 40; i++, sent++) {
          upstream.write(chunk.subarray(i, i + 1));
          await new Promise((resolve) => setTimeout(resolve, 3));
        }
        if (i < chunk.length) upstream.write(chunk.subarray(i));
      });
    });
    client.on("end", () => void chain.then(() => upstream.end()));
  });
  proxy.listen(0, "127.0.0.1");
  await once(proxy, "listening");
  return proxy;
}

describe("message size limit", () => {
  it("refuses a gRPC message over readMaxBytes with RESOURCE_EXHAUSTED and logs it", async () => {
    const stub = await startStub({ readMaxBytes: 1024 });
    try {
      const client = grpcClient(`127.0.0.1:${stub.server.port}`);
      const metadata = new grpc.Metadata();
      metadata.set("x-request-id", "too-big");
      await expect(getBatch(client, "x".repeat(4096), metadata)).rejects.toMatchObject({
        code: grpc.status.RESOURCE_EXHAUSTED,
      });
      expect(await getBatch(client, "small")).toMatchObject({ id: "small" });
      client.close();
      const line = await waitFor(() => stub.lines.find((l) => l.requestId === "too-big"), "log line");
      expect(line).toMatchObject({ procedure: "lote.v1.BatchService/GetBatch", code: "resource_exhausted" });
      expect(stub.state.seenRequestIds).not.toContain("too-big");
    } finally {
      await stub.server.close(1000);
    }
  });

  it("refuses an oversized Connect JSON body with HTTP 429 resource_exhausted", async () => {
    const stub = await startStub({ readMaxBytes: 1024 });
    try {
      const res = await fetch(`${stub.server.url}/lote.v1.BatchService/GetBatch`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ id: "x".repeat(4096) }),
      });
      expect(res.status).toBe(429);
      expect(await res.json()).toMatchObject({ code: "resource_exhausted" });
    } finally {
      await stub.server.close(1000);
    }
  });
});

describe("HTTP/1.1 requests that never complete", () => {
  /** A raw TCP client that sends `text` and then nothing more, as a client that went away mid-request would. */
  function sendAndStall(port: number, text: string) {
    const state = { received: "", closed: false };
    const socket = netConnect(port, "127.0.0.1", () => socket.write(text));
    socket.on("data", (d) => (state.received += d.toString("latin1")));
    socket.on("error", () => {});
    socket.on("close", () => (state.closed = true));
    return state;
  }

  it("answers 408 and closes a cleartext connection whose headers or body stopped arriving, while a stream over HTTP/1.1 runs on", async () => {
    const stub = await startStub({ http1HeadersTimeoutMs: 300, http1RequestTimeoutMs: 600 });
    try {
      // A server stream over HTTP/1.1 whose request completed at once: the deadlines are the request's, not the call's.
      const client = createClient(BatchService, createConnectTransport({ baseUrl: stub.server.url, httpVersion: "1.1" }));
      const abort = new AbortController();
      const stream = client.watchBatch({ id: "batch_long" }, { signal: abort.signal })[Symbol.asyncIterator]();
      expect((await stream.next()).value).toMatchObject({ batch: { id: "batch_long" } });
      const path = "/lote.v1.BatchService/GetBatch";
      const headers = sendAndStall(stub.server.port, `POST ${path} HTTP/1.1\r\nHost: lote\r\ncontent-type: application/json\r\n`);
      const body = sendAndStall(stub.server.port,
        `POST ${path} HTTP/1.1\r\nHost: lote\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"id":`);
      // Node's default deadlines are 60 s and 300 s, checked every 30 s: with these, well inside the wait.
      await waitFor(() => (headers.closed && body.closed ? true : undefined), "both stalled connections to be closed", 10_000);
      expect(headers.received).toMatch(/^HTTP\/1\.1 408 /);
      expect(body.received).toMatch(/^HTTP\/1\.1 408 /);
      // The stream began before both stalled requests, so it has run past their deadlines; the server logs a call's
      // line when its response closes, and has logged none for it yet.
      const watchLine = () => stub.lines.find((l) => l.procedure === "lote.v1.BatchService/WatchBatch");
      expect(watchLine()).toBeUndefined();
      abort.abort();
      await stream.next().catch(() => {});
      expect(await waitFor(watchLine, "the stream's log line once the client left")).toMatchObject({ http: "1.1", code: "canceled" });
    } finally {
      await stub.server.close(1000);
    }
  });

  it("refuses a request deadline shorter than the headers one, saying what was expected", async () => {
    const base = { routes: () => {}, health: { check: async () => true }, logger: pino({ level: "silent" }) };
    await expect(listen({ ...base, port: 0, http1HeadersTimeoutMs: 1000, http1RequestTimeoutMs: 500 }))
      .rejects.toThrow("Expected `http1RequestTimeoutMs` to be an integer no smaller than http1HeadersTimeoutMs (1000), got 500");
  });
});

describe("a client that leaves in the middle of a stream", () => {
  it("writes no stack trace to stderr (connect-node's console.error), only a debug line, when a stream's client cancels it mid-write", async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    // Results of 256 KiB each, as fast as they can be written: the client's cancel lands while one is being written,
    // as when `lote results ID | head` exits.
    const routes = (router: ConnectRouter) =>
      router.service(BatchService, {
        async *streamResults(_req, ctx) {
          while (!ctx.signal.aborted) yield { result: { customId: "x".repeat(256 * 1024) } };
        },
      });
    const server = await listen({ port: 0, routes, health: { check: async () => true }, logger });
    const consoleErrors: unknown[][] = [];
    const consoleError = console.error;
    console.error = (...args: unknown[]) => void consoleErrors.push(args);
    try {
      // A bare HTTP/2 client: the first bytes of the stream, then RST_STREAM CANCEL, what a client's cancel sends.
      const session = http2Connect(server.url);
      const stream = session.request({ ":method": "POST", ":path": "/lote.v1.BatchService/StreamResults", "content-type": "application/grpc", te: "trailers" });
      stream.end(Buffer.from([0, 0, 0, 0, 0])); // one empty gRPC message: StreamResultsRequest {}
      await once(stream, "data");
      stream.close(http2Constants.NGHTTP2_CANCEL);
      await waitFor(() => (consoleErrors.length > 0 || lines.some((l) => l.msg === "client went away during the response") ? true : undefined),
        "the server to finish with the cancelled stream");
      session.close();
      expect(consoleErrors).toEqual([]);
      expect(lines.find((l) => l.msg === "rpc")).toMatchObject({ procedure: "lote.v1.BatchService/StreamResults", code: "canceled" });
    } finally {
      console.error = consoleError;
      await server.close(1000);
    }
  });
});

describe("HTTP/2 clients that vanish", () => {
  it("closes a session whose client stopped answering PINGs, ending its stream, and keeps an idle one that answers", async () => {
    const stub = await startStub({ http2PingIdleMs: 200, http2PingTimeoutMs: 300 });
    // The vanishing client reaches the server through a proxy that goes silent: no data, no FIN, no RST.
    const proxy = new TcpProxy({ host: "127.0.0.1", port: stub.server.port });
    const proxyPort = await proxy.start();
    const gone = grpcClient(`127.0.0.1:${proxyPort}`);
    const present = grpcClient(`127.0.0.1:${stub.server.port}`);
    try {
      const firstMessage = (client: GrpcClient, requestId: string) => new Promise<grpc.ClientReadableStream<unknown>>((resolve) => {
        const metadata = new grpc.Metadata();
        metadata.set("x-request-id", requestId);
        const stream = (client as any).watchBatch({ id: "batch_w" }, metadata) as grpc.ClientReadableStream<unknown>;
        stream.on("error", () => {});
        stream.once("data", () => resolve(stream));
      });
      const kept = await firstMessage(present, "present");
      await firstMessage(gone, "gone");
      expect(proxy.freeze()).toBe(1);
      // The server logs a call's line when its response closes. Without PINGs it never learned the client was gone:
      // nothing is written on a stream that waits for its batch to change.
      const line = (requestId: string) => stub.lines.find((l) => l.msg === "rpc" && l.requestId === requestId);
      expect(await waitFor(() => line("gone"), "the vanished client's stream to end", 10_000)).toMatchObject({ code: "canceled", http: "2.0" });
      // The other session was idle as long, and was asked too: it answered, and its stream is still open.
      expect(line("present")).toBeUndefined();
      kept.cancel();
      expect(await waitFor(() => line("present"), "the kept stream's line once its client cancels")).toMatchObject({ code: "canceled" });
    } finally {
      gone.close();
      present.close();
      await proxy.cut();
      await stub.server.close(1000);
    }
  });
});

describe("TLS", () => {
  let dir: string;
  let pem: Record<"ca" | "serverCert" | "serverKey" | "clientCert" | "clientKey", string>;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "lote-tls-"));
    pem = await makeCertificates(dir);
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("serves gRPC over h2 and Connect over HTTPS/1.1 on one port to clients that trust the CA", async () => {
    const stub = await startStub({ tls: { cert: pem.serverCert, key: pem.serverKey } });
    try {
      expect(stub.server.url).toBe(`https://127.0.0.1:${stub.server.port}`);
      const client = grpcClient(`localhost:${stub.server.port}`, grpc.credentials.createSsl(Buffer.from(pem.ca)));
      expect(await getBatch(client, "batch_tls")).toMatchObject({ id: "batch_tls" });
      client.close();
      const res = await httpsPost(stub.server.port, "/lote.v1.BatchService/GetBatch", JSON.stringify({ id: "batch_https" }), { ca: pem.ca });
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body)).toMatchObject({ id: "batch_https" });
      expect(stub.lines.filter((l) => l.msg === "rpc").map((l) => l.http)).toEqual(["2.0", "1.1"]);
    } finally {
      await stub.server.close(1000);
    }
  });

  it("runs a TCP keepalive timer on every connection it accepts, on the cleartext port and the TLS one", async () => {
    const cleartext = await startStub();
    const secure = await startStub({ tls: { cert: pem.serverCert, key: pem.serverKey } });
    const sockets: Socket[] = [];
    try {
      // Cleartext: an HTTP/1.1 request answered (404) on a connection kept open, as a stream over HTTP/1.1 would be.
      const plain = netConnect(cleartext.server.port, "127.0.0.1");
      sockets.push(plain);
      await once(plain, "connect");
      plain.write("GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
      expect(String((await once(plain, "data"))[0])).toMatch(/^HTTP\/1\.1 404/);
      const tls = netConnect(secure.server.port, "127.0.0.1");
      sockets.push(tls);
      await once(tls, "connect");
      // The kernel shows the server's socket with its keepalive timer (/proc/net/tcp's timer kind 2) and when it
      // fires. Before, none ran: a client that vanished without closing kept an HTTP/1.1 stream open for good.
      for (const [server, client] of [[cleartext.server.port, plain.localPort!], [secure.server.port, tls.localPort!]] as const) {
        const timer = await until(`the keepalive timer of the connection accepted on ${server}`, async () => {
          const t = await tcpTimer(server, client);
          return t?.kind === 2 ? t : undefined;
        }, 2_000);
        expect(timer.seconds).toBeGreaterThan(30);
        expect(timer.seconds).toBeLessThanOrEqual(60);
      }
    } finally {
      for (const s of sockets) s.destroy();
      await cleartext.server.close(1000);
      await secure.server.close(1000);
    }
  });

  it("with requireClientCert, refuses a client without a certificate and serves one with", async () => {
    const stub = await startStub({
      tls: { cert: pem.serverCert, key: pem.serverKey, ca: pem.ca, requireClientCert: true },
    });
    try {
      const anonymous = grpcClient(`localhost:${stub.server.port}`, grpc.credentials.createSsl(Buffer.from(pem.ca)));
      await expect(getBatch(anonymous, "batch_anon")).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      anonymous.close();
      await expect(httpsPost(stub.server.port, "/lote.v1.BatchService/GetBatch", "{}", { ca: pem.ca })).rejects.toThrow();
      const credentials = grpc.credentials.createSsl(Buffer.from(pem.ca), Buffer.from(pem.clientKey), Buffer.from(pem.clientCert));
      const client = grpcClient(`localhost:${stub.server.port}`, credentials);
      expect(await getBatch(client, "batch_mtls")).toMatchObject({ id: "batch_mtls" });
      client.close();
      expect(stub.state.seenRequestIds).toHaveLength(1);
    } finally {
      await stub.server.close(1000);
    }
  });
});

/** A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate, made by openssl. */
async function makeCertificates(dir: string) {
  const p = (name: string) => join(dir, name);
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await run("openssl", ["req", "-x509", ...key, "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "1", "-subj", "/CN=lote test CA"]);
  for (const [name, ext] of [
    ["server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"],
    ["client", "extendedKeyUsage=clientAuth"],
  ] as const) {
    await run("openssl", ["req", ...key, "-keyout", p(`${name}.key`), "-out", p(`${name}.csr`), "-subj", `/CN=${name}`]);
    await writeFile(p(`${name}.ext`), `${ext}\n`);
    await run("openssl", [
      "x509", "-req", "-in", p(`${name}.csr`), "-CA", p("ca.crt"), "-CAkey", p("ca.key"), "-CAcreateserial",
      "-out", p(`${name}.crt`), "-days", "1", "-extfile", p(`${name}.ext`),
    ]);
  }
  const read = (name: string) => readFile(p(name), "utf8");
  return {
    ca: await read("ca.crt"),
    serverCert: await read("server.crt"),
    serverKey: await read("server.key"),
    clientCert: await read("client.crt"),
    clientKey: await read("client.key"),
  };
}

function httpsPost(port: number, path: string, body: string, tls: { ca: string }): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      { host: "127.0.0.1", servername: "localhost", port, path, method: "POST", ca: tls.ca, agent: false, headers: { "content-type": "application/json" } },
      (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (chunk) => (text += chunk));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

describe("close", () => {
  it("ends an open stream with UNAVAILABLE, lets a unary call finish, refuses new connections and resolves", async () => {
    const stub = await startStub();
    const address = `127.0.0.1:${stub.server.port}`;
    const client = grpcClient(address);
    const stream = client.watchBatch({ id: "batch_w" });
    const messages: unknown[] = [];
    stream.on("data", (m: unknown) => messages.push(m));
    const streamEnded = new Promise<grpc.StatusObject>((resolve) => {
      stream.on("error", () => {});
      stream.on("status", resolve);
    });
    await waitFor(() => (messages.length > 0 ? true : undefined), "first stream message");
    const slow = getBatch(client, "slow");
    await waitFor(() => stub.state.release, "slow call to reach its handler");

    const closed = stub.server.close(5000);
    const status = await streamEnded;
    expect(status.code).toBe(grpc.status.UNAVAILABLE);
    expect(status.details).toBe("server is shutting down");
    stub.state.release!();
    expect(await slow).toMatchObject({ id: "slow" });
    await closed;
    client.close();
    const refused = netConnect(stub.server.port, "127.0.0.1");
    const [err] = await once(refused, "error");
    expect((err as NodeJS.ErrnoException).code).toBe("ECONNREFUSED");
    expect(stub.lines.find((l) => l.procedure === "lote.v1.BatchService/WatchBatch")).toMatchObject({ code: "unavailable" });
  });

  it("closes idle HTTP/1.1 keep-alive and HTTP/2 connections without waiting for the grace period", async () => {
    const stub = await startStub();
    const res = await fetch(`${stub.server.url}/lote.v1.BatchService/GetBatch`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ id: "batch_idle" }),
    });
    expect(res.headers.get("connection")).toBe("keep-alive");
    await res.json();
    const client = grpcClient(`127.0.0.1:${stub.server.port}`);
    await getBatch(client, "batch_idle_h2");
    const started = Date.now();
    await stub.server.close(30_000);
    expect(Date.now() - started).toBeLessThan(5000);
    client.close();
  });

  it("cuts calls still running when the grace period ends", async () => {
    const stub = await startStub();
    const client = grpcClient(`127.0.0.1:${stub.server.port}`);
    const slow = getBatch(client, "slow");
    await waitFor(() => stub.state.release, "slow call to reach its handler");
    const started = Date.now();
    await stub.server.close(100);
    expect(Date.now() - started).toBeLessThan(2000);
    await expect(slow).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    client.close();
  });

  it("on SIGTERM, a process serving a stream ends it, runs onStop and exits 0", async () => {
    const listenModule = new URL("../../src/api/listen.ts", import.meta.url).pathname;
    const shutdownModule = new URL("../../src/api/shutdown.ts", import.meta.url).pathname;
    const serviceModule = new URL("../../gen/lote/v1/batch_service_pb.ts", import.meta.url).pathname;
    const script = `
      import pino from "pino";
      import { listen } from ${JSON.stringify(listenModule)};
      import { installShutdown } from ${JSON.stringify(shutdownModule)};
      import { BatchService } from ${JSON.stringify(serviceModule)};
      const server = await listen({
        port: 0, logger: pino({ level: "silent" }), health: { check: async () => true },
        routes: (router) => router.service(BatchService, {
          async *watchBatch(req, ctx) {
            yield { batch: { id: req.id } };
            await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          },
        }),
      });
      installShutdown(server, () => console.log("stopped"), { graceMs: 5000 });
      console.log("port=" + server.port);
    `;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: new URL("../..", import.meta.url).pathname,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let stdout = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => (stdout += chunk));
    const exited = once(child, "exit");
    const port = Number(await waitFor(() => /port=(\d+)/.exec(stdout)?.[1], "child to listen", 20_000));

    const client = grpcClient(`127.0.0.1:${port}`);
    const stream = client.watchBatch({ id: "batch_sig" });
    const first = once(stream, "data");
    const status = new Promise<grpc.StatusObject>((resolve) => {
      stream.on("error", () => {});
      stream.on("status", resolve);
    });
    await first;
    child.kill("SIGTERM");
    expect((await status).code).toBe(grpc.status.UNAVAILABLE);
    const [code] = await exited;
    client.close();
    expect(code).toBe(0);
    expect(stdout).toContain("stopped");
  });
});
