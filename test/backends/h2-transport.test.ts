import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { once } from "node:events";
import { constants as h2constants, createServer as createH2Server, type ClientHttp2Session, type ClientHttp2Stream, type Http2Server, type ServerHttp2Session } from "node:http2";
import { createServer as createNetServer, type AddressInfo, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { TransportError, type InferenceReply } from "../../src/backends/backend.ts";
import { createOpenAIBackend, type OpenAIBackend, type OpenAIBackendOptions } from "../../src/backends/openai/index.ts";
import { rejection } from "../support/transport-errors.ts";

/**
 * The HTTP/2 transport against servers that misbehave in ways node's own HTTP/2 server cannot: a raw-frame server
 * (RFC 9113 §4) that answers each request with the frames a test writes.
 */

const backends: OpenAIBackend[] = [];
const servers: (Server | Http2Server)[] = [];
const sockets = new Set<Socket>();
const serverSessions = new Set<ServerHttp2Session>();

afterEach(async () => {
  await Promise.all(backends.splice(0).map((b) => b.close()));
  for (const s of sockets) s.destroy();
  sockets.clear();
  for (const s of serverSessions) s.destroy();
  serverSessions.clear();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

function backend(o: Partial<OpenAIBackendOptions> & Pick<OpenAIBackendOptions, "urls">): OpenAIBackend {
  const b = createOpenAIBackend({ name: "openai:test", ...o });
  backends.push(b);
  return b;
}

function call(b: OpenAIBackend, body = "{}", signal = AbortSignal.timeout(10_000)): Promise<InferenceReply> {
  return b.infer({ endpoint: "/v1/chat/completions", body, signal });
}

async function listen(server: Server | Http2Server): Promise<number> {
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

const DATA = 0, HEADERS = 1, RST_STREAM = 3, SETTINGS = 4;
const END_STREAM = 1, END_HEADERS = 4;

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(stream, 5);
  return Buffer.concat([header, payload]);
}

/** HPACK (RFC 7541): ":status: 200" from the static table, then literal content-length (static name 28) if given. */
function responseHeaders(contentLength?: number): Buffer {
  if (contentLength === undefined) return Buffer.from([0x88]);
  const value = Buffer.from(String(contentLength));
  return Buffer.concat([Buffer.from([0x88, 0x0f, 28 - 15, value.length]), value]);
}

/**
 * A raw HTTP/2 server: empty SETTINGS, acks the client's, and calls `answer` with each request's stream id once
 * the request has ended (END_STREAM on its HEADERS or DATA).
 */
async function rawH2Server(answer: (socket: Socket, stream: number) => void): Promise<string> {
  const server = createNetServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    let buffered = Buffer.alloc(0);
    let preface = false;
    socket.write(frame(SETTINGS, 0, 0));
    socket.on("data", (data) => {
      buffered = Buffer.concat([buffered, data]);
      if (!preface) {
        if (buffered.length < 24) return;
        buffered = buffered.subarray(24);
        preface = true;
      }
      while (buffered.length >= 9) {
        const length = buffered.readUIntBE(0, 3);
        if (buffered.length < 9 + length) break;
        const [type, flags] = [buffered[3]!, buffered[4]!];
        const stream = buffered.readUInt32BE(5) & 0x7fffffff;
        buffered = buffered.subarray(9 + length);
        if (type === SETTINGS && !(flags & 1)) socket.write(frame(SETTINGS, 1, 0));
        if ((type === DATA || type === HEADERS) && flags & END_STREAM) answer(socket, stream);
      }
    });
  });
  return `h2c://127.0.0.1:${await listen(server)}`;
}

const half = Buffer.from(`{"choices":[{"message":{"content":"the first half`);
const rstNoError = (stream: number) => frame(RST_STREAM, 0, stream, Buffer.alloc(4));

describe("HTTP/2 answers", () => {
  it("rejects connection_reset, not a half answer, when the server resets the stream with NO_ERROR before END_STREAM", async () => {
    // node ends the stream as if the answer were whole: 'end' fires, and the close code is NO_ERROR.
    const url = await rawH2Server((socket, stream) => {
      socket.write(frame(HEADERS, END_HEADERS, stream, responseHeaders()));
      socket.write(frame(DATA, 0, stream, half));
      setTimeout(() => socket.write(rstNoError(stream)), 20);
    });
    const err = await rejection(call(backend({ urls: [url] })));
    expect(err.kind).toBe("connection_reset");
    expect(err.message).toContain("closed before its answer was complete");
  });

  it("rejects connection_reset when the reset comes in the same packet as the last DATA frame", async () => {
    const url = await rawH2Server((socket, stream) => {
      socket.write(Buffer.concat([frame(HEADERS, END_HEADERS, stream, responseHeaders()), frame(DATA, 0, stream, half), rstNoError(stream)]));
    });
    expect((await rejection(call(backend({ urls: [url] })))).kind).toBe("connection_reset");
  });

  it("rejects connection_reset when all content-length bytes came but the stream was reset instead of ended", async () => {
    const url = await rawH2Server((socket, stream) => {
      socket.write(frame(HEADERS, END_HEADERS, stream, responseHeaders(half.length)));
      socket.write(frame(DATA, 0, stream, half));
      setTimeout(() => socket.write(rstNoError(stream)), 20);
    });
    expect((await rejection(call(backend({ urls: [url] })))).kind).toBe("connection_reset");
  });

  it("rejects an answer whose END_STREAM comes before its content-length bytes", async () => {
    const url = await rawH2Server((socket, stream) => {
      socket.write(frame(HEADERS, END_HEADERS, stream, responseHeaders(half.length + 10)));
      socket.write(frame(DATA, END_STREAM, stream, half));
    });
    const err = await rejection(call(backend({ urls: [url] })));
    expect(["connection_reset", "protocol"]).toContain(err.kind);
  });

  it("takes an answer that ended with END_STREAM, with its content-length, even when RST_STREAM NO_ERROR follows at once", async () => {
    // RFC 9113 §8.1: a server may answer in full and then reset with NO_ERROR to stop the upload.
    const whole = Buffer.from(`{"choices":[]}`);
    const url = await rawH2Server((socket, stream) => {
      socket.write(Buffer.concat([
        frame(HEADERS, END_HEADERS, stream, responseHeaders(whole.length)),
        frame(DATA, END_STREAM, stream, whole),
        rstNoError(stream),
      ]));
    });
    const b = backend({ urls: [url] });
    for (let i = 0; i < 5; i++) {
      const reply = await call(b);
      expect(reply.status).toBe(200);
      expect(reply.body).toBe(whole.toString());
    }
  });

  it("takes an answer of headers alone with END_STREAM", async () => {
    const url = await rawH2Server((socket, stream) => {
      socket.write(frame(HEADERS, END_HEADERS | END_STREAM, stream, responseHeaders(0)));
    });
    expect(await call(backend({ urls: [url] }))).toMatchObject({ status: 200, body: "" });
  });
});

describe("HTTP/2 sessions", () => {
  it("carries 64 concurrent 1 MB request bodies on one session without ENHANCE_YOUR_CALM", async () => {
    const server = createH2Server();
    server.on("session", (s) => serverSessions.add(s));
    server.on("stream", (stream) => {
      stream.on("error", () => {});
      let bytes = 0;
      stream.on("data", (chunk: Buffer) => (bytes += chunk.length));
      stream.on("end", () => setTimeout(() => {
        if (stream.destroyed) return;
        stream.respond({ ":status": 200 });
        stream.end(`{"bytes":${bytes}}`);
      }, 50));
    });
    const url = `h2c://127.0.0.1:${await listen(server)}`;
    const b = backend({ urls: [url], maxConcurrency: 64, connectionsPerReplica: 1 });
    const body = JSON.stringify({ content: "x".repeat(1_000_000) });
    const results = await Promise.allSettled(Array.from({ length: 64 }, () => call(b, body, AbortSignal.timeout(30_000))));
    const failures = results.flatMap((r) => (r.status === "rejected" ? [(r.reason as Error).message] : []));
    expect(failures).toEqual([]);
    for (const r of results) expect(JSON.parse((r as PromiseFulfilledResult<InferenceReply>).value.body)).toEqual({ bytes: body.length });
  });

  it("sends a stream the server refused (REFUSED_STREAM) once more, then rejects goaway for the dispatcher to back off", async () => {
    const server = createH2Server();
    server.on("session", (s) => serverSessions.add(s));
    let streams = 0;
    server.on("stream", (stream) => {
      streams++;
      stream.on("error", () => {});
      stream.close(h2constants.NGHTTP2_REFUSED_STREAM);
    });
    const b = backend({ urls: [`h2c://127.0.0.1:${await listen(server)}`] });
    expect((await rejection(call(b))).kind).toBe("goaway");
    expect(streams).toBe(2);
    let refusedOnce = false;
    server.removeAllListeners("stream");
    server.on("stream", (stream) => {
      streams++;
      stream.on("error", () => {});
      if (!refusedOnce) return void ((refusedOnce = true), stream.close(h2constants.NGHTTP2_REFUSED_STREAM));
      stream.respond({ ":status": 200 });
      stream.end("{}");
    });
    expect((await call(b)).status).toBe(200);
    expect(streams).toBe(4);
  });

  it("opens a new session when the one in use has run out of stream ids, instead of failing every call on it", async () => {
    const server = createH2Server();
    let opened = 0;
    server.on("session", (s) => {
      opened++;
      serverSessions.add(s);
    });
    server.on("stream", (stream) => {
      stream.respond({ ":status": 200 });
      stream.end("{}");
    });
    const url = `h2c://127.0.0.1:${await listen(server)}`;
    // Each new session jumps to its last three stream ids (2^31 - 5, - 3, - 1) after its first stream.
    const jumped = new WeakSet<ClientHttp2Session>();
    const onStart = (message: unknown) => {
      const session = (message as { stream: ClientHttp2Stream }).stream.session as ClientHttp2Session | undefined;
      if (!session || jumped.has(session)) return;
      jumped.add(session);
      // node's documented Http2Session#setNextStreamID, missing from @types/node.
      (session as ClientHttp2Session & { setNextStreamID(id: number): void }).setNextStreamID(2 ** 31 - 5);
    };
    subscribe("http2.client.stream.start", onStart);
    try {
      const b = backend({ urls: [url] });
      const outcomes: (number | string)[] = [];
      for (let i = 0; i < 10; i++) outcomes.push(await call(b).then((r) => r.status, (e: TransportError) => e.kind));
      // Four streams per session; the fifth call finds the ids gone, the session is retired, and the call, never
      // sent, goes out on a fresh session.
      expect(outcomes).toEqual([200, 200, 200, 200, 200, 200, 200, 200, 200, 200]);
      expect(opened).toBe(3);
    } finally {
      unsubscribe("http2.client.stream.start", onStart);
    }
  });
});
