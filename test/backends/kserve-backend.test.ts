import { EventEmitter, once } from "node:events";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TransportError, type Backend, type EndpointPath } from "../../src/backends/backend.ts";
import { createBackends } from "../../src/backends/index.ts";
import { buildConfig } from "../../src/config/config.ts";
import { executeCall } from "../../src/dispatch/execute-call.ts";
import type { ClaimedItem } from "../../src/store/index.ts";
import {
  createKServeBackend,
  loadInferenceService,
  type InferTensor,
  type ModelInferRequest,
  type ModelInferResponse,
} from "../../src/backends/kserve/index.ts";

/**
 * A real GRPCInferenceService on 127.0.0.1, served from the same vendored proto. The model name picks the
 * behaviour: "echo" upper-cases text, "echo-raw" does too but answers in raw_output_contents like Triton,
 * "embedder" returns [length, count of "a", first char code, 0.1] per text, "classifier" returns probabilities,
 * "tensors" echoes its inputs, "busy"/"invalid" fail ("overloaded" too, asking not to be retried), "slow" never answers.
 */
interface InferenceServer {
  readonly url: string;
  readonly requests: ModelInferRequest[];
  /** "call" (request) when ModelInfer starts, "cancelled" (request id) when the client cancels it. */
  readonly events: EventEmitter;
  /** Most ModelInfer calls running at once, and the client connections (peers) they came over. */
  readonly concurrency: { now: number; max: number; peers: Set<string> };
  stop(): void;
}

const models = new Set(["echo", "echo-raw", "embedder", "classifier", "tensors", "busy", "overloaded", "invalid", "slow", "hold", "large"]);

function textsIn(request: ModelInferRequest): string[] {
  return (request.inputs[0]?.contents?.bytes_contents ?? []).map((b) => b.toString("utf8"));
}

function lengthPrefixed(texts: string[]): Buffer {
  return Buffer.concat(texts.flatMap((text) => {
    const bytes = Buffer.from(text, "utf8");
    const length = Buffer.alloc(4);
    length.writeUInt32LE(bytes.length);
    return [length, bytes];
  }));
}

function answer(request: ModelInferRequest, outputs: InferTensor[], raw: Buffer[] = []): Partial<ModelInferResponse> {
  return { model_name: request.model_name, model_version: "1", id: request.id, outputs, raw_output_contents: raw };
}

async function startInferenceServer(serverOptions: grpc.ServerOptions = {}): Promise<InferenceServer> {
  const server = new grpc.Server(serverOptions);
  const requests: ModelInferRequest[] = [];
  const events = new EventEmitter();
  const concurrency = { now: 0, max: 0, peers: new Set<string>() };
  server.addService(loadInferenceService().definition, {
    ServerReady: (_call: unknown, callback: grpc.sendUnaryData<object>) => callback(null, { ready: true }),
    ModelReady: (call: grpc.ServerUnaryCall<{ name: string }, object>, callback: grpc.sendUnaryData<object>) =>
      callback(null, { ready: models.has(call.request.name) }),
    ModelInfer: (call: grpc.ServerUnaryCall<ModelInferRequest, ModelInferResponse>, callback: grpc.sendUnaryData<Partial<ModelInferResponse>>) => {
      const request = call.request;
      requests.push(request);
      events.emit("call", request);
      const texts = textsIn(request);
      switch (request.model_name) {
        case "echo":
          return callback(null, answer(request, [{ name: "text_output", datatype: "BYTES", shape: [texts.length], contents: { bytes_contents: texts.map((t) => Buffer.from(t.toUpperCase())) } }]));
        case "echo-raw":
          return callback(null, answer(request, [
            { name: "text_output", datatype: "BYTES", shape: [texts.length] },
            { name: "byte_lengths", datatype: "INT64", shape: [texts.length] },
            { name: "scores", datatype: "FP32", shape: [texts.length] },
          ], [
            lengthPrefixed(texts.map((t) => t.toUpperCase())),
            Buffer.from(new BigInt64Array(texts.map((t) => BigInt(Buffer.byteLength(t)))).buffer),
            Buffer.from(new Float32Array(texts.map((_, i) => 1 / (i + 2))).buffer),
          ]));
        case "embedder": {
          const vectors = texts.flatMap((t) => [t.length, t.split("a").length - 1, t.charCodeAt(0), 0.1]);
          return callback(null, answer(request, [{ name: "embedding", datatype: "FP32", shape: [texts.length, 4], contents: { fp32_contents: vectors } }]));
        }
        case "classifier": {
          const probs = texts.flatMap((t) => [0, 1, 2].map((k) => (k === t.length % 3 ? 0.5 : 0.25)));
          return callback(null, answer(request, [{ name: "probs", datatype: "FP32", shape: [texts.length, 3], contents: { fp32_contents: probs } }]));
        }
        case "tensors":
          // Raw inputs come back as raw outputs, as Triton answers.
          return callback(null, { ...answer(request, request.inputs.map((input) => ({ ...input, name: `${input.name}_out` })), request.raw_input_contents), parameters: request.parameters });
        case "busy": {
          const metadata = new grpc.Metadata();
          metadata.set("grpc-retry-pushback-ms", "1500");
          return callback({ code: grpc.status.RESOURCE_EXHAUSTED, details: "queue full", metadata });
        }
        case "overloaded": {
          // gRFC A6: a negative pushback tells the client not to retry.
          const metadata = new grpc.Metadata();
          metadata.set("grpc-retry-pushback-ms", "-1");
          return callback({ code: grpc.status.RESOURCE_EXHAUSTED, details: "overloaded, do not retry", metadata });
        }
        case "invalid":
          return callback({ code: grpc.status.INVALID_ARGUMENT, details: "unexpected shape for input 'text_input'" });
        case "large": // a 100 KB answer
          return callback(null, answer(request, [{ name: "text_output", datatype: "BYTES", shape: [1], contents: { bytes_contents: [Buffer.alloc(100_000, "x")] } }]));
        case "slow":
          call.on("cancelled", () => events.emit("cancelled", request.id));
          return; // never answers
        case "hold": // answers after 200 ms, counting the calls it holds at once
          concurrency.max = Math.max(concurrency.max, ++concurrency.now);
          concurrency.peers.add(call.getPeer());
          setTimeout(() => {
            concurrency.now--;
            callback(null, answer(request, [{ name: "text_output", datatype: "BYTES", shape: [texts.length], contents: { bytes_contents: texts.map((t) => Buffer.from(t)) } }]));
          }, 200);
          return;
      }
      return callback({ code: grpc.status.NOT_FOUND, details: `unknown model ${request.model_name}` });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))));
  return { url: `grpc://127.0.0.1:${port}`, requests, events, concurrency, stop: () => server.forceShutdown() };
}

function infer(backend: Backend, endpoint: EndpointPath, body: unknown, signal = new AbortController().signal) {
  return backend.infer({ endpoint, body: JSON.stringify(body), signal });
}

describe("KServe v2 gRPC backend", () => {
  let server: InferenceServer;
  const backends: Backend[] = [];
  const backendFor = (modelName: string, urls = [server.url]) => {
    const backend = createKServeBackend({ name: `kserve:${modelName}`, urls, modelName });
    backends.push(backend);
    return backend;
  };
  beforeAll(async () => { server = await startInferenceServer(); });
  afterAll(async () => {
    await Promise.all(backends.map((b) => b.close()));
    server.stop();
  });

  it("answers a chat completion with the model's text_output and sends sampling fields as parameters", async () => {
    const reply = await infer(backendFor("echo"), "/v1/chat/completions", {
      model: "llama",
      messages: [{ role: "system", content: "be loud" }, { role: "user", content: [{ type: "text", text: "hello" }] }],
      max_tokens: 16,
      temperature: 0.5,
    });
    expect(reply.status).toBe(200);
    const body = JSON.parse(reply.body);
    expect(body).toMatchObject({ object: "chat.completion", model: "echo", id: `chatcmpl-${reply.requestId}` });
    expect(body.choices[0].message).toEqual({ role: "assistant", content: "BE LOUD\nHELLO" });
    // "be loud\nhello" is 13 characters: 4 tokens at ~4 characters a token, both ways.
    expect(body.usage).toEqual({ prompt_tokens: 4, completion_tokens: 4, total_tokens: 8 });
    const sent = server.requests.at(-1)!;
    expect(sent.inputs[0]).toMatchObject({ name: "text_input", datatype: "BYTES", shape: [1] });
    expect(sent.parameters?.max_tokens).toMatchObject({ int64_param: 16 });
    expect(sent.parameters?.temperature).toMatchObject({ string_param: "0.5" });
  });

  it("returns one embedding of the model's dimension per input, as floats or base64", async () => {
    const backend = backendFor("embedder");
    const input = ["hello", "banana", "x"];
    const reply = await infer(backend, "/v1/embeddings", { model: "e", input });
    const body = JSON.parse(reply.body);
    expect(body.object).toBe("list");
    expect(body.data).toHaveLength(3);
    expect(body.data.map((d: { index: number }) => d.index)).toEqual([0, 1, 2]);
    // 0.1 went over the wire as float32; the answer prints it as 0.1, not 0.10000000149011612.
    expect(body.data[1].embedding).toEqual([6, 3, 98, 0.1]);
    expect(server.requests.at(-1)!.inputs[0]!.shape).toEqual([3]);

    const base64 = JSON.parse((await infer(backend, "/v1/embeddings", { input, encoding_format: "base64" })).body);
    const floats = new Float32Array(Uint8Array.from(Buffer.from(base64.data[1].embedding, "base64")).buffer);
    expect([...floats].map((f) => Number(f.toPrecision(6)))).toEqual([6, 3, 98, 0.1]);
  });

  it("answers /classify with probabilities, the argmax label and the class count per input", async () => {
    const reply = await infer(backendFor("classifier"), "/classify", { model: "c", input: ["ab", "abcd"] });
    const body = JSON.parse(reply.body);
    expect(body).toMatchObject({ object: "list", model: "classifier", id: `classify-${reply.requestId}` });
    expect(body.data).toEqual([
      { index: 0, label: "LABEL_2", probs: [0.25, 0.25, 0.5], num_classes: 3 },
      { index: 1, label: "LABEL_1", probs: [0.25, 0.5, 0.25], num_classes: 3 },
    ]);
  });

  it("passes v2 tensors through with typed contents and answers in the v2 JSON shape", async () => {
    const reply = await infer(backendFor("tensors"), "/v1/completions", {
      id: "req-7",
      inputs: [
        { name: "matrix", shape: [2, 2], datatype: "FP32", data: [[1, 2.5], [3, 4]] },
        { name: "ids", shape: [3], datatype: "INT64", data: [7, 8, 9] },
        { name: "flags", shape: [2], datatype: "BOOL", data: [true, false] },
        { name: "words", shape: [1], datatype: "BYTES", data: ["héllo"] },
      ],
      parameters: { priority: 2, note: "x" },
    });
    expect(reply).toMatchObject({ status: 200, requestId: "req-7" });
    const sent = server.requests.at(-1)!;
    expect(sent.inputs[0]!.contents!.fp32_contents).toEqual([1, 2.5, 3, 4]);
    expect(sent.inputs[1]!.contents!.int64_contents).toEqual([7, 8, 9]);
    expect(JSON.parse(reply.body)).toEqual({
      model_name: "tensors",
      model_version: "1",
      id: "req-7",
      parameters: { priority: 2, note: "x" },
      outputs: [
        { name: "matrix_out", datatype: "FP32", shape: [2, 2], data: [1, 2.5, 3, 4] },
        { name: "ids_out", datatype: "INT64", shape: [3], data: [7, 8, 9] },
        { name: "flags_out", datatype: "BOOL", shape: [2], data: [true, false] },
        { name: "words_out", datatype: "BYTES", shape: [1], data: ["héllo"] },
      ],
    });
  });

  it("sends FP16 and BF16 inputs as raw_input_contents, rounded to nearest, with every other input of the request raw too", async () => {
    // Before, any FP16 or BF16 input was answered 400 "FP16 inputs are not supported": a half-precision model,
    // common on Triton, could not be called at all. The proto has no typed field for them and forbids mixing.
    const reply = await infer(backendFor("tensors"), "/v1/completions", {
      inputs: [
        { name: "half", shape: [2, 3], datatype: "FP16", data: [[1, 0.1, -2.5], [65504, 70000, 1e-7]] },
        { name: "brain", shape: [2], datatype: "BF16", data: [1, 0.1] },
        { name: "ids", shape: [1], datatype: "INT64", data: [7] },
        { name: "words", shape: [1], datatype: "BYTES", data: ["héllo"] },
      ],
    });
    expect(reply.status, reply.body).toBe(200);
    const sent = server.requests.at(-1)!;
    expect(sent.inputs.map((input) => input.contents ?? null)).toEqual([null, null, null, null]);
    expect(sent.raw_input_contents!.map((b) => b.toString("hex"))).toEqual([
      // 1, 0.1, -2.5, 65504 (the largest half), 70000 (beyond it: infinity), 1e-7 (subnormal: 2 × 2^-24)
      "003c662e00c1ff7b007c0200",
      "803fcd3d",
      "0700000000000000",
      "06000000" + Buffer.from("héllo").toString("hex"),
    ]);
    expect(JSON.parse(reply.body).outputs).toEqual([
      { name: "half_out", datatype: "FP16", shape: [2, 3], data: [1, 0.0999755859375, -2.5, 65504, null, 2 * 2 ** -24] },
      { name: "brain_out", datatype: "BF16", shape: [2], data: [1, 0.10009765625] },
      { name: "ids_out", datatype: "INT64", shape: [1], data: [7] },
      { name: "words_out", datatype: "BYTES", shape: [1], data: ["héllo"] },
    ]);
  });

  it("decodes raw_output_contents: length-prefixed BYTES, little-endian INT64 and FP32", async () => {
    const backend = backendFor("echo-raw");
    const tensors = JSON.parse((await infer(backend, "/v1/completions", {
      inputs: [{ name: "text_input", shape: [2], datatype: "BYTES", data: ["ab", "héllo"] }],
    })).body);
    expect(tensors.outputs).toEqual([
      { name: "text_output", datatype: "BYTES", shape: [2], data: ["AB", "HÉLLO"] },
      { name: "byte_lengths", datatype: "INT64", shape: [2], data: [2, 6] },
      { name: "scores", datatype: "FP32", shape: [2], data: [0.5, 0.33333334] },
    ]);
    const completion = JSON.parse((await infer(backend, "/v1/completions", { prompt: ["ab", "héllo"] })).body);
    expect(completion.object).toBe("text_completion");
    expect(completion.choices.map((c: { text: string }) => c.text)).toEqual(["AB", "HÉLLO"]);
  });

  it("maps RESOURCE_EXHAUSTED to 429 with the server's retry pushback", async () => {
    const reply = await infer(backendFor("busy"), "/v1/chat/completions", { messages: [{ role: "user", content: "hi" }] });
    expect(reply.status).toBe(429);
    expect(reply.retryAfterMs).toBe(1500);
    expect(JSON.parse(reply.body).error).toMatchObject({ message: "queue full", code: "RESOURCE_EXHAUSTED" });
  });

  it("fails a call whose RESOURCE_EXHAUSTED carries a negative retry pushback at once, not retried, with the status's error", async () => {
    const config = buildConfig({ include_builtin_models: false, models: [{ name: "overloaded", max_attempts: 3, backend: { kind: "kserve", urls: [server.url] } }] }, {});
    const model = config.models.get("overloaded")!;
    const item: ClaimedItem = {
      batchId: "batch_x", idx: 0, customId: "c0", attempt: 1, endpoint: "/v1/chat/completions",
      body: JSON.stringify({ model: "overloaded", messages: [{ role: "user", content: "hi" }] }), estTokens: 1, tenantId: "t1",
    };
    const completion = await executeCall(backendFor("overloaded"), model, item, new AbortController(), () => 0.5);
    // Before, the negative pushback was ignored and the 429 retried with backoff, up to max_attempts.
    expect(completion).toMatchObject({ outcome: "failed", statusCode: 429, errorCode: "RESOURCE_EXHAUSTED", errorMessage: "overloaded, do not retry" });
  });

  it("maps INVALID_ARGUMENT to 400 with the server's message", async () => {
    const reply = await infer(backendFor("invalid"), "/v1/completions", { prompt: "hi" });
    expect(reply.status).toBe(400);
    expect(JSON.parse(reply.body).error).toMatchObject({ message: "unexpected shape for input 'text_input'", code: "INVALID_ARGUMENT" });
  });

  it("rejects an answer longer than maxResponseBytes as response_too_large, which is not retried", async () => {
    const backend = createKServeBackend({ name: "kserve:large", urls: [server.url], modelName: "large", maxResponseBytes: 64 * 1024 });
    backends.push(backend);
    const error = await infer(backend, "/v1/completions", { prompt: "hi" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TransportError);
    expect(error).toMatchObject({ kind: "response_too_large" });
    expect((error as Error).message).toContain("longer than 65536 bytes");
    expect((await infer(backendFor("large"), "/v1/completions", { prompt: "hi" })).status).toBe(200);
  });

  it("answers 400 naming the input and the element for an integer its datatype cannot hold, instead of sending it wrapped", async () => {
    const backend = backendFor("tensors");
    const cases: [datatype: string, data: unknown[], bad: string][] = [
      ["UINT8", [0, 255, -1], "element 2 to be an integer from 0 to 255 for UINT8, got -1"],
      ["UINT8", [256], "element 0 to be an integer from 0 to 255 for UINT8, got 256"],
      ["INT8", [-128, 127, 128], "element 2 to be an integer from -128 to 127 for INT8, got 128"],
      ["INT16", [40_000], "element 0 to be an integer from -32768 to 32767 for INT16, got 40000"],
      ["INT32", [1, 2147483648], "element 1 to be an integer from -2147483648 to 2147483647 for INT32, got 2147483648"],
      ["UINT32", [-1], "element 0 to be an integer from 0 to 4294967295 for UINT32, got -1"],
      ["INT64", [1e20], "element 0 to be an integer from -9007199254740991 to 9007199254740991 for INT64, got 100000000000000000000"],
      ["UINT64", [-5], "element 0 to be an integer from 0 to 9007199254740991 for UINT64, got -5"],
      ["INT32", [1.5], "element 0 to be an integer from -2147483648 to 2147483647 for INT32, got 1.5"],
      ["FP32", ["1"], "element 0 to be a number for FP32, got \"1\""],
    ];
    const before = server.requests.length;
    for (const [datatype, data, bad] of cases) {
      const reply = await infer(backend, "/v1/completions", { inputs: [{ name: "x", shape: [data.length], datatype, data }] });
      expect(reply.status, datatype).toBe(400);
      expect(JSON.parse(reply.body).error.message).toBe(`Expected \`inputs[0]\`.data ${bad}`);
    }
    expect(server.requests.length).toBe(before);
    const edges = await infer(backend, "/v1/completions", { inputs: [
      { name: "u32", shape: [2], datatype: "UINT32", data: [0, 4294967295] },
      { name: "i64", shape: [1], datatype: "INT64", data: [-9007199254740991] },
    ] });
    expect(edges.status).toBe(200);
    expect(JSON.parse(edges.body).outputs.map((o: { data: number[] }) => o.data)).toEqual([[0, 4294967295], [-9007199254740991]]);
  });

  it("answers 400 without calling the server for a body the protocol cannot carry", async () => {
    const before = server.requests.length;
    const reply = await infer(backendFor("echo"), "/v1/completions", { prompt: [1, 2, 3] });
    expect(reply.status).toBe(400);
    expect(JSON.parse(reply.body).error.message).toMatch(/Token-id `prompt`/);
    expect(server.requests.length).toBe(before);
  });

  it("rejects with a connection_refused TransportError once the server has stopped", async () => {
    const doomed = await startInferenceServer();
    const backend = backendFor("echo", [doomed.url]);
    expect((await infer(backend, "/v1/completions", { prompt: "up" })).status).toBe(200);
    doomed.stop();
    const error = await infer(backend, "/v1/completions", { prompt: "down" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TransportError);
    expect((error as TransportError).kind).toBe("connection_refused");
  });

  it("ejects a target it cannot connect to and moves the call to another, so every call is answered", async () => {
    const dead = await startInferenceServer();
    dead.stop();
    const backend = backendFor("echo", [dead.url, server.url]);
    const before = server.requests.length;
    for (let i = 0; i < 10; i++) expect((await infer(backend, "/v1/completions", { prompt: `p${i}` })).status).toBe(200);
    expect(server.requests.length - before).toBe(10);
    const alone = backendFor("echo", [dead.url]);
    expect(await infer(alone, "/v1/completions", { prompt: "down" }).catch((e: unknown) => e)).toMatchObject({ kind: "connection_refused" });
  });

  it("cancels the server-side call when the signal aborts mid-call", async () => {
    const controller = new AbortController();
    const started = once(server.events, "call");
    const pending = infer(backendFor("slow"), "/v1/completions", { prompt: "wait" }, controller.signal);
    const [request] = (await started) as [ModelInferRequest];
    const cancelled = once(server.events, "cancelled");
    controller.abort();
    await expect(pending).rejects.toMatchObject({ name: "TransportError", kind: "aborted" });
    expect(await cancelled).toEqual([request.id]);
  });

  it("aborts calls in flight on close()", async () => {
    const backend = createKServeBackend({ name: "kserve:closing", urls: [server.url], modelName: "slow" });
    const started = once(server.events, "call");
    const pending = infer(backend, "/v1/completions", { prompt: "wait" });
    await started;
    const cancelled = once(server.events, "cancelled");
    await backend.close();
    await expect(pending).rejects.toMatchObject({ kind: "aborted" });
    await cancelled;
  });

  it("sends concurrent calls to the target with the fewest in flight", async () => {
    const other = await startInferenceServer();
    try {
      const backend = backendFor("slow", [server.url, other.url]);
      const seen = { first: 0, second: 0 };
      const count = (key: keyof typeof seen) => () => { seen[key]++; };
      server.events.on("call", count("first"));
      other.events.on("call", count("second"));
      const controller = new AbortController();
      const calls = [1, 2, 3, 4].map(() => infer(backend, "/v1/completions", { prompt: "wait" }, controller.signal).catch((e: unknown) => e));
      const deadline = Date.now() + 5_000;
      while (seen.first + seen.second < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(seen).toEqual({ first: 2, second: 2 });
      controller.abort();
      for (const error of await Promise.all(calls)) expect(error).toMatchObject({ kind: "aborted" });
      server.events.removeAllListeners("call");
    } finally {
      other.stop();
    }
  });

  it("opens a connection per 100 calls of maxConcurrency, so a server's per-connection stream limit does not hold calls back", async () => {
    // A server that allows 4 streams per connection (RFC 9113 recommends at least 100): with one connection, 12
    // calls ran 4 at a time, the other 8 waiting in grpc-js. maxConcurrency 300 gives each target three.
    const limited = await startInferenceServer({ "grpc.max_concurrent_streams": 4 });
    try {
      const calls = (backend: Backend) => Promise.all(Array.from({ length: 12 }, (_, i) => infer(backend, "/v1/completions", { prompt: `p${i}` })));
      const three = createKServeBackend({ name: "kserve:hold", urls: [limited.url], modelName: "hold", maxConcurrency: 300 });
      backends.push(three);
      expect((await calls(three)).map((r) => r.status)).toEqual(Array(12).fill(200));
      expect(limited.concurrency.max).toBe(12);
      expect(limited.concurrency.peers.size).toBe(3);

      // From the config file: the model's max_concurrency reaches the backend.
      limited.concurrency.max = 0;
      limited.concurrency.peers.clear();
      const config = buildConfig({ include_builtin_models: false, models: [{ name: "hold", max_concurrency: 300, backend: { kind: "kserve", urls: [limited.url] } }] }, {});
      const configured = (await createBackends(config.models)).get("hold")!;
      backends.push(configured);
      expect((await calls(configured)).map((r) => r.status)).toEqual(Array(12).fill(200));
      expect(limited.concurrency.peers.size).toBe(3);

      limited.concurrency.max = 0;
      const one = createKServeBackend({ name: "kserve:hold", urls: [limited.url], modelName: "hold" });
      backends.push(one);
      expect((await calls(one)).map((r) => r.status)).toEqual(Array(12).fill(200));
      expect(limited.concurrency.max).toBe(4);
    } finally {
      limited.stop();
    }
  });

  it("is ready when the server and the model are, and not for a model the server lacks", async () => {
    expect(await backendFor("echo").ready()).toBe(true);
    expect(await backendFor("no-such-model").ready()).toBe(false);
  });

  it("refuses options it cannot use, saying what it expected", () => {
    expect(() => createKServeBackend({ name: "k", urls: [], modelName: "m" })).toThrow(/Expected `urls` to be a non-empty array/);
    expect(() => createKServeBackend({ name: "k", urls: ["http://h:1"], modelName: "m" })).toThrow(/grpcs:\/\/host:port/);
    expect(() => createKServeBackend({ name: "k", urls: ["h:1"], modelName: "m", maxConcurrency: 0 })).toThrow("Expected `maxConcurrency` to be an integer >= 1, got 0");
  });
});
