/**
 * The servers under listen(): one TCP port for every protocol. Cleartext sniffs the HTTP/2 preface per connection;
 * TLS lets ALPN choose. Both hand requests to the same connect handler.
 */
import { createServer as createHttp1Server, type IncomingMessage, type ServerResponse } from "node:http";
import {
  createSecureServer,
  createServer as createHttp2Server,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
} from "node:http2";
import { createServer as createNetServer, type Server, type Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import type { Logger } from "pino";
import type { TlsOptions } from "./listen.ts";
import type { ConnectionTracker } from "./shutdown.ts";

const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/** Stream window 4 MiB, connection window 16 MiB: at 64 KiB (the HTTP/2 default) a 50 MB upload over a 50 ms
 * round trip would crawl at 1.3 MB/s; at 4 MiB it can reach 80 MB/s. */
const HTTP2_SETTINGS = { initialWindowSize: 4 << 20 };
const HTTP2_CONNECTION_WINDOW = 16 << 20;
/** nghttp2 refuses new streams past this (MB, default 10), which full 16 MiB windows could exceed. */
const HTTP2_MAX_SESSION_MEMORY = 64;
/**
 * TCP keepalive on every accepted connection, first probe after 60 s idle (then Node's 10 probes 1 s apart): a client
 * that vanished without closing (a laptop shut, a NAT mapping dropped) is let go after ~70 s. HTTP/2 sessions are
 * PINGed (pingWhenIdle), but nothing asked an HTTP/1.1 connection: a Connect or gRPC-Web WatchBatch over HTTP/1.1
 * whose client vanished kept its socket, and read Postgres every poll interval, until its batch ended (a day later
 * by default). 60 s: the HTTP/2 PINGs' idle time (http2PingIdleMs' default), and well inside the ~350 s an idle
 * connection lives in an AWS NAT gateway's table.
 */
const KEEPALIVE = { keepAlive: true, keepAliveInitialDelay: 60_000 } as const;
/** A cleartext connection silent this long before its first bytes is dropped: Node's own headersTimeout. */
const SNIFF_TIMEOUT_MS = 60_000;

/**
 * Decides a cleartext connection's protocol from its first bytes: "h2" for the HTTP/2 client preface (h2c with
 * prior knowledge, RFC 9113 §3.3), "http1" for anything else. No HTTP/1.1 method starts with "PRI ", so 4 bytes
 * decide; undefined while fewer have arrived and they still match.
 */
export function sniffProtocol(head: Uint8Array): "h2" | "http1" | undefined {
  const n = Math.min(head.length, 4);
  for (let i = 0; i < n; i++) if (head[i] !== HTTP2_PREFACE[i]) return "http1";
  return n === 4 ? "h2" : undefined;
}

export type Handler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => void;

/**
 * How long an HTTP/1.1 request may take to arrive (ListenOptions.http1HeadersTimeoutMs, http1RequestTimeoutMs), and
 * when an HTTP/2 connection is asked whether its client is still there (ListenOptions.http2PingIdleMs, http2PingTimeoutMs).
 */
export interface ConnectionDeadlines {
  readonly headersMs: number;
  readonly requestMs: number;
  readonly pingIdleMs: number;
  readonly pingTimeoutMs: number;
}

/**
 * Node's HTTP/1.1 options for those deadlines. Node checks them every `connectionsCheckingInterval` (30 s by default),
 * so an expired request is answered 408 and its connection closed up to that long after its deadline; a shorter
 * deadline gets a check as often as half of it.
 */
function http1TimeoutOptions(t: ConnectionDeadlines) {
  return {
    headersTimeout: t.headersMs, requestTimeout: t.requestMs,
    connectionsCheckingInterval: Math.max(10, Math.min(30_000, Math.floor(t.headersMs / 2))),
  };
}

function trackSession(tracker: ConnectionTracker, deadlines: ConnectionDeadlines) {
  return (session: Http2Session) => {
    tracker.addSession(session);
    session.setLocalWindowSize(HTTP2_CONNECTION_WINDOW);
    pingWhenIdle(session, deadlines);
  };
}

/**
 * A session that has carried nothing either way for `pingIdleMs` is sent a PING, and destroyed if no ACK comes within
 * `pingTimeoutMs` (gRPC's keepalive, server side). A client that vanished without closing its connection (a laptop
 * shut, a NAT mapping dropped, a host gone) otherwise kept its session and socket for good, and a following
 * StreamResults or a WatchBatch of it went on reading Postgres every poll interval until its batch ended, a day
 * later by default. Only an idle session is asked: anything received (a long upload) shows the client is there.
 */
function pingWhenIdle(session: Http2Session, { pingIdleMs, pingTimeoutMs }: ConnectionDeadlines): void {
  // Node emits 'timeout' after pingIdleMs without a frame read or written; the PING and its ACK start it again.
  session.setTimeout(pingIdleMs, () => {
    if (session.closed || session.destroyed) return;
    // As a dropped connection: the streams' calls see their client gone (CANCELED).
    const gone = setTimeout(() => session.destroy(), pingTimeoutMs);
    gone.unref();
    const answered = () => clearTimeout(gone);
    try {
      // The callback comes with the ACK, or with an error when the session closed first.
      if (!session.ping(answered)) answered();
    } catch {
      answered(); // the session is closing
    }
  });
}

/** HTTPS: h2 and http/1.1 chosen by ALPN, so curl and fetch work on the gRPC port too. */
export function secureServer(tls: TlsOptions, handle: Handler, tracker: ConnectionTracker, log: Logger, deadlines: ConnectionDeadlines): Server {
  const { cert, key, ca, requireClientCert = false } = tls;
  const server = createSecureServer(
    {
      ...http1TimeoutOptions(deadlines),
      ...KEEPALIVE,
      cert, key, ca,
      requestCert: requireClientCert,
      rejectUnauthorized: requireClientCert,
      allowHTTP1: true,
      settings: HTTP2_SETTINGS,
      maxSessionMemory: HTTP2_MAX_SESSION_MEMORY,
    },
    handle,
  );
  server.on("connection", (socket: Socket) => tracker.addSocket(socket, false));
  server.on("secureConnection", (socket: TLSSocket) => {
    if (socket.alpnProtocol === "h2") tracker.markHttp2(socket);
    else tracker.markHttp1(socket);
  });
  server.on("session", trackSession(tracker, deadlines));
  server.on("tlsClientError", (err) => log.debug({ err: err.message }, "TLS handshake failed"));
  return server;
}

/**
 * Cleartext: Node's HTTP/2 server has no HTTP/1.1 fallback, so a plain TCP server reads each connection's first
 * bytes, puts them back, and hands the socket to the HTTP/2 or the HTTP/1.1 server with the same handler.
 */
export function cleartextServer(handle: Handler, tracker: ConnectionTracker, deadlines: ConnectionDeadlines): Server {
  const http1 = createHttp1Server(http1TimeoutOptions(deadlines), handle);
  // Node enforces headersTimeout and requestTimeout from a check it starts when the server emits 'listening', which
  // this one, handed its sockets, never did: an HTTP/1.1 client that stopped sending mid-request (a half-open
  // connection, a stalled upload, a slowloris) kept its socket on the cleartext port for good, where over TLS (Node's
  // own listening server) it got 408 after 60 s. Stopped by http1.close() below.
  http1.emit("listening");
  const http2 = createHttp2Server({ settings: HTTP2_SETTINGS, maxSessionMemory: HTTP2_MAX_SESSION_MEMORY }, handle);
  http2.on("session", trackSession(tracker, deadlines));
  const server = createNetServer(KEEPALIVE, (socket) => {
    tracker.addSocket(socket, true);
    socket.on("error", () => {}); // resets before the hand-over; the HTTP servers handle later ones
    const onTimeout = () => socket.destroy();
    socket.setTimeout(SNIFF_TIMEOUT_MS);
    socket.once("timeout", onTimeout);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const protocol = sniffProtocol(head);
      if (!protocol) return;
      socket.off("data", onData).off("timeout", onTimeout).setTimeout(0);
      socket.pause();
      socket.unshift(head);
      if (protocol === "h2") {
        // The HTTP/2 session reads what the socket has buffered, then consumes the handle natively.
        tracker.markHttp2(socket);
        http2.emit("connection", socket);
      } else {
        tracker.markHttp1(socket);
        http1.emit("connection", socket);
        // Node's HTTP/1.1 connection listener leaves a paused socket paused: without this the request never parses.
        socket.resume();
      }
    };
    socket.on("data", onData);
  });
  // Neither HTTP server listens, but closing them stops the HTTP/1.1 server's connection-checking timer.
  server.once("close", () => {
    http1.close();
    http2.close();
  });
  return server;
}

