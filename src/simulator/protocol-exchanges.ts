import type { IncomingMessage, ServerResponse } from "node:http";
import { constants, type IncomingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import type { Exchange, SimulatorCore } from "./simulator-core.ts";

/**
 * Adapters from node:http and node:http2 to the core's Exchange. Both hook the stats' begin/end to the single
 * 'close' event of the response or stream, which fires exactly once whether the request was answered, reset by
 * us, or abandoned by the client: that is what keeps `inFlight`/`maxInFlight` exact.
 */

class Http1Exchange implements Exchange {
  closed = false;
  tracked = false;
  readonly arrivedAt = performance.now();
  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
  ) {}

  get method() {
    return this.req.method ?? "GET";
  }
  get path() {
    return this.req.url ?? "/";
  }
  get authorization() {
    return this.req.headers.authorization;
  }

  respond(status: number, body: string, requestId: string, retryAfter?: string): void {
    // A flat [name, value, ...] array is the cheapest header form writeHead accepts.
    const headers = ["content-type", "application/json", "content-length", String(Buffer.byteLength(body)), "x-request-id", requestId];
    if (retryAfter !== undefined) headers.push("retry-after", retryAfter);
    this.res.writeHead(status, headers);
    this.res.end(body);
  }

  reset(): void {
    const socket = this.req.socket;
    // A TCP RST (not a FIN) so the client sees ECONNRESET, as when a server process dies mid-request. A TLS
    // socket has no TCP handle of its own to reset (ERR_INVALID_HANDLE_TYPE): it is closed without close_notify.
    if ((socket as { encrypted?: boolean }).encrypted) socket.destroy();
    else socket.resetAndDestroy();
  }
}

export function handleHttp1(core: SimulatorCore, req: IncomingMessage, res: ServerResponse): void {
  const ex = new Http1Exchange(req, res);
  ex.tracked = core.tracks(ex.path);
  if (ex.tracked) core.stats.begin("http1");
  res.on("close", () => {
    ex.closed = true;
    if (ex.tracked) core.stats.end();
  });
  let body = "";
  req.setEncoding("utf8");
  req.on("data", (chunk: string) => (body += chunk));
  req.on("end", () => core.handle(ex, body));
}

class H2Exchange implements Exchange {
  closed = false;
  tracked = false;
  readonly arrivedAt = performance.now();
  constructor(
    private readonly stream: ServerHttp2Stream,
    private readonly headers: IncomingHttpHeaders,
  ) {}

  get method() {
    return this.headers[":method"] ?? "GET";
  }
  get path() {
    return this.headers[":path"] ?? "/";
  }
  get authorization() {
    return this.headers.authorization;
  }

  respond(status: number, body: string, requestId: string, retryAfter?: string): void {
    if (this.stream.destroyed) return;
    const headers: Record<string, string | number> = { ":status": status, "content-type": "application/json", "x-request-id": requestId };
    if (retryAfter !== undefined) headers["retry-after"] = retryAfter;
    this.stream.respond(headers);
    this.stream.end(body);
  }

  reset(): void {
    this.stream.close(constants.NGHTTP2_INTERNAL_ERROR);
  }
}

export function handleH2(core: SimulatorCore, stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
  const ex = new H2Exchange(stream, headers);
  ex.tracked = core.tracks(ex.path);
  if (ex.tracked) core.stats.begin("h2");
  stream.on("close", () => {
    ex.closed = true;
    if (ex.tracked) core.stats.end();
  });
  // A client's RST_STREAM surfaces here; the 'close' above already accounts for it.
  stream.on("error", () => {});
  let body = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => (body += chunk));
  stream.on("end", () => core.handle(ex, body));
}
