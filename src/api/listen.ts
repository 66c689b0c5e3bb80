import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { AddressInfo } from "node:net";
import type { FileDescriptorSet } from "@bufbuild/protobuf/wkt";
import {
  type ConnectRouter,
  ConnectError,
  createContextKey,
  createContextValues,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import type { Logger } from "pino";
import { Health } from "../../gen/grpc/health/v1/health_pb.ts";
import { HealthMonitor, type HealthReporter, healthService } from "./health.ts";
import { nodeAdapter } from "./node-adapter.ts";
import { loadDescriptorSet, registerReflection } from "./reflection.ts";
import { cleartextServer, secureServer, type ConnectionDeadlines } from "./protocol-servers.ts";
import { errorCodeInterceptor } from "./errors.ts";
import { ConnectionTracker, shutdownInterceptor } from "./shutdown.ts";

export { sniffProtocol } from "./protocol-servers.ts";

export interface TlsOptions {
  /** PEM certificate chain of the server. */
  cert: string;
  /** PEM private key of the server. */
  key: string;
  /** PEM CA bundle that client certificates must chain to. Required with requireClientCert. */
  ca?: string;
  /** mTLS: refuse the handshake of a client without a certificate signed by `ca`. Default false. */
  requireClientCert?: boolean;
}

export interface ListenOptions {
  /** Interface to bind. Default "127.0.0.1"; "0.0.0.0" or "::" to serve other machines. */
  host?: string;
  /** TCP port. Default 50051 (gRPC's customary port); 0 lets the OS pick one (see ApiServer.port). */
  port?: number;
  /** Registers the application's services (BatchService). */
  routes: (router: ConnectRouter) => void;
  /** Answers grpc.health.v1.Health for "" and every service `routes` registers. */
  health: HealthReporter;
  /** How often an open health Watch re-asks the reporter. Default 1000 ms. */
  healthPollMs?: number;
  /**
   * Largest request message accepted, after decompression; bigger ones get RESOURCE_EXHAUSTED before they are
   * parsed. Default 256 MiB: a 50,000-request chat batch is 25-50 MB. (grpc-go: MaxRecvMsgSize, default 4 MiB.)
   */
  readMaxBytes?: number;
  /**
   * HTTP/1.1 only: a request whose headers have not all arrived this long after it began is answered 408 and its
   * connection closed, so a client that went away mid-request (a half-open connection) or sends a byte a minute does
   * not hold a socket for good. Default 60,000 ms, Node's `headersTimeout`. HTTP/2 connections are not limited.
   */
  http1HeadersTimeoutMs?: number;
  /**
   * HTTP/1.1 only: the same for the whole request, body included (a response may stream for as long as it likes
   * after). Default 300,000 ms, Node's `requestTimeout`: a 256 MiB CreateBatch over HTTP/1.1 needs ~0.9 MB/s.
   */
  http1RequestTimeoutMs?: number;
  /**
   * HTTP/2 only: a connection that carried nothing either way for this long is sent a PING, and closed when no ACK
   * comes within `http2PingTimeoutMs`, ending its calls as a dropped connection would. Default 60,000 ms.
   * (gRPC-core: GRPC_ARG_KEEPALIVE_TIME_MS, default 2 hours on servers; lote's streams poll Postgres while open.)
   */
  http2PingIdleMs?: number;
  /** See `http2PingIdleMs`. Default 20,000 ms (gRPC-core: GRPC_ARG_KEEPALIVE_TIMEOUT_MS, default 20 s). */
  http2PingTimeoutMs?: number;
  /** Serve HTTPS (h2 and HTTP/1.1 by ALPN) instead of cleartext. */
  tls?: TlsOptions;
  /** Run around every handler (inside the shutdown handling, which must stay outermost). */
  interceptors?: Interceptor[];
  /** Runs before a request body is read (cheap authentication); throw a ConnectError to refuse the call. */
  requestGate?: (context: HandlerContext) => void | Promise<void>;
  /** Descriptors served by reflection. Default gen/lote.binpb. */
  descriptorSet?: FileDescriptorSet;
  logger: Logger;
}

export interface ApiServer {
  readonly host: string;
  /** The bound port (the OS's choice when `port` was 0). */
  readonly port: number;
  /** Base URL for clients, e.g. "http://127.0.0.1:50051". */
  readonly url: string;
  /**
   * Stops accepting connections, refuses new calls with UNAVAILABLE, lets unary calls finish, ends streams (their
   * `ctx.signal` aborts; clients see UNAVAILABLE), sends GOAWAY, and destroys what is left after `graceMs`
   * (default 5000). Health reports NOT_SERVING from the start. Resolves when every connection is closed.
   */
  close(graceMs?: number): Promise<void>;
}

/**
 * The request id of a call: the client's `x-request-id` when it sent a sane one, else a UUID. Handlers read it
 * with `ctx.values.get(requestIdKey)`; it is echoed in the `x-request-id` response header and logged.
 */
export const requestIdKey = createContextKey<string>("", { description: "lote request id" });

type NodeServerRequest = IncomingMessage | Http2ServerRequest;
type NodeServerResponse = ServerResponse | Http2ServerResponse;

/** Per-request state shared by the node handler, the request gate and the log line. */
interface Call {
  readonly requestId: string;
  context?: HandlerContext;
}
const callKey = createContextKey<Call | undefined>(undefined, { description: "lote api call" });

/** Serves the routes, health and reflection on one port, over gRPC, gRPC-Web and Connect, HTTP/2 and HTTP/1.1. */
export async function listen(options: ListenOptions): Promise<ApiServer> {
  const { host, port, readMaxBytes, deadlines } = validateListenOptions(options);
  const log = options.logger.child({ component: "api" });
  const tracker = new ConnectionTracker();
  const monitor = new HealthMonitor({ reporter: options.health, pollMs: options.healthPollMs });
  const descriptorSet = options.descriptorSet ?? loadDescriptorSet();
  const calls = new WeakMap<NodeServerRequest, Call>();

  const adapter = nodeAdapter({
    readMaxBytes,
    onWriteFailure(procedure, err) {
      log.warn({ procedure, code: codeToString(err.code), err: err.rawMessage }, "response not written");
    },
    onClientGone(procedure) {
      log.debug({ procedure }, "client went away during the response");
    },
    interceptors: [shutdownInterceptor(tracker), ...(options.interceptors ?? []), errorCodeInterceptor(log)],
    routes(router) {
      options.routes(router);
      const services = new Set(["", ...router.handlers.map((h) => h.service.typeName)]);
      router.service(Health, healthService(monitor, () => services));
      registerReflection(router, descriptorSet);
    },
    contextValues(req) {
      const values = createContextValues();
      const call = calls.get(req);
      if (call) values.set(requestIdKey, call.requestId).set(callKey, call);
      return values;
    },
    async requestGate(context) {
      const call = context.values.get(callKey);
      if (call) {
        call.context = context;
        context.responseHeader.set("x-request-id", call.requestId);
      }
      if (tracker.isDraining) throw tracker.shutdownError;
      await options.requestGate?.(context);
    },
  });

  function handle(req: NodeServerRequest, res: NodeServerResponse): void {
    const started = performance.now();
    const call: Call = { requestId: requestIdFrom(req.headers["x-request-id"]) };
    calls.set(req, call);
    if (req.httpVersionMajor === 1) {
      tracker.http1Request(req.socket, (listener) => res.once("close", listener));
      if (tracker.isDraining) res.setHeader("connection", "close");
    }
    res.once("close", () => {
      const durationMs = Math.round(performance.now() - started);
      const { context } = call;
      if (context) {
        const procedure = `${context.service.typeName}/${context.method.name}`;
        const code = callOutcome(context, res);
        // A health check that answered is debug: probers ask every 1-2 s each (kubelet's liveness and readiness,
        // load balancers), and at info their lines buried the calls'. One that failed stays info.
        const level = code === "ok" && context.service.typeName === Health.typeName ? "debug" : "info";
        log[level]({ requestId: call.requestId, procedure, protocol: context.protocolName, http: req.httpVersion, code, durationMs }, "rpc");
      } else {
        // Not an RPC: unknown path, wrong method or content type. Logged so that nothing reaches the port unseen.
        const path = (req.url ?? "").split("?", 1)[0]!.slice(0, 200);
        log.info({ requestId: call.requestId, path, http: req.httpVersion, status: res.statusCode, durationMs }, "request");
      }
    });
    adapter(req, res);
  }

  const server = options.tls ? secureServer(options.tls, handle, tracker, log, deadlines) : cleartextServer(handle, tracker, deadlines);
  await new Promise<void>((resolve, reject) => {
    const fail = (err: Error) => {
      server.close(); // runs the cleanup of the inner HTTP servers
      reject(err);
    };
    server.once("error", fail);
    server.listen({ host, port }, () => {
      server.off("error", fail);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  const url = `${options.tls ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${bound}`;
  log.debug({ url, tls: Boolean(options.tls), readMaxBytes }, "API listening");

  let closing: Promise<void> | undefined;
  return {
    host,
    port: bound,
    url,
    close(graceMs = 5000) {
      closing ??= (async () => {
        monitor.shutdown();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        tracker.drain();
        const deadline = setTimeout(() => tracker.destroyAll(), graceMs);
        await closed;
        clearTimeout(deadline);
        log.info("API closed");
      })();
      return closing;
    },
  };
}

/** Loud validation at startup, in the form "Expected `x` to be …, got …". */
function validateListenOptions(options: ListenOptions): { host: string; port: number; readMaxBytes: number; deadlines: ConnectionDeadlines } {
  const {
    host = "127.0.0.1", port = 50051, readMaxBytes = 256 * 1024 * 1024, http1HeadersTimeoutMs = 60_000, http1RequestTimeoutMs = 300_000,
    http2PingIdleMs = 60_000, http2PingTimeoutMs = 20_000,
  } = options;
  const expect = (ok: boolean, name: string, wanted: string, got: unknown) => {
    if (!ok) throw new TypeError(`Expected \`${name}\` to be ${wanted}, got ${JSON.stringify(got) ?? String(got)}`);
  };
  expect(typeof host === "string" && host.length > 0, "host", "a non-empty string", host);
  expect(Number.isInteger(port) && port >= 0 && port <= 65535, "port", "an integer from 0 to 65535", port);
  // 2^32 - 1: the largest size a gRPC length prefix can state, and connect's own ceiling.
  const most = 0xffffffff;
  const sane = Number.isInteger(readMaxBytes) && readMaxBytes > 0 && readMaxBytes <= most;
  expect(sane, "readMaxBytes", `an integer from 1 to ${most}`, readMaxBytes);
  expect(Number.isInteger(http1HeadersTimeoutMs) && http1HeadersTimeoutMs > 0, "http1HeadersTimeoutMs", "a positive integer", http1HeadersTimeoutMs);
  // Node refuses a headers deadline later than the whole request's.
  const requestOk = Number.isInteger(http1RequestTimeoutMs) && http1RequestTimeoutMs >= http1HeadersTimeoutMs;
  expect(requestOk, "http1RequestTimeoutMs", `an integer no smaller than http1HeadersTimeoutMs (${http1HeadersTimeoutMs})`, http1RequestTimeoutMs);
  // 2^31 - 1: the longest timer Node sets.
  for (const [name, ms] of [["http2PingIdleMs", http2PingIdleMs], ["http2PingTimeoutMs", http2PingTimeoutMs]] as const) {
    expect(Number.isInteger(ms) && ms > 0 && ms < 2 ** 31, name, "a positive integer under 2^31", ms);
  }
  expect(typeof options.routes === "function", "routes", "a function", typeof options.routes);
  expect(typeof options.health?.check === "function", "health", "an object with a check() function", typeof options.health);
  if (options.tls) {
    const { cert, key, ca, requireClientCert } = options.tls;
    expect(typeof cert === "string" && cert.includes("-----BEGIN"), "tls.cert", "a PEM string", typeof cert);
    expect(typeof key === "string" && key.includes("-----BEGIN"), "tls.key", "a PEM string", typeof key);
    expect(!requireClientCert || typeof ca === "string", "tls.ca", "a PEM string when tls.requireClientCert is true", typeof ca);
  }
  const deadlines = { headersMs: http1HeadersTimeoutMs, requestMs: http1RequestTimeoutMs, pingIdleMs: http2PingIdleMs, pingTimeoutMs: http2PingTimeoutMs };
  return { host, port, readMaxBytes, deadlines };
}

/** The client's id when it is short and plain (it goes into logs), else a fresh UUID. */
function requestIdFrom(header: string | string[] | undefined): string {
  return typeof header === "string" && /^[\w.:/+=@-]{1,128}$/.test(header) ? header : randomUUID();
}

/**
 * The status code the client saw. Connect aborts the handler context with the error that ended the call, or with
 * no reason when it succeeded; a response that never ended means the client went away.
 */
function callOutcome(context: HandlerContext, res: NodeServerResponse): string {
  const { aborted, reason } = context.signal;
  if (aborted && reason instanceof ConnectError) return codeToString(reason.code);
  if (!res.writableEnded) return "canceled";
  if (aborted && !(reason instanceof DOMException && reason.name === "AbortError")) return "internal";
  return "ok";
}
