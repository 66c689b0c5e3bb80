import type { Http2Session } from "node:http2";
import type { Socket } from "node:net";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";

/**
 * Every connection and streaming call of one server, so that close() can drain them: stop taking new work, let
 * unary calls finish, end streams, then cut whatever is left at the grace deadline.
 */
export class ConnectionTracker {
  /** Sent to clients whose stream is ended by the shutdown: UNAVAILABLE tells gRPC clients to retry elsewhere. */
  readonly shutdownError = new ConnectError("server is shutting down", Code.Unavailable);
  private readonly sockets = new Set<Socket>();
  /** Cleartext sockets that have not yet sent enough bytes to tell HTTP/2 from HTTP/1.1. */
  private readonly pending = new Set<Socket>();
  /** HTTP/1.1 sockets → requests in flight on them. */
  private readonly http1 = new Map<Socket, number>();
  private readonly sessions = new Set<Http2Session>();
  /** One per open streaming call; aborting it aborts the handler's `ctx.signal`. */
  private readonly streams = new Set<AbortController>();
  private draining = false;

  get isDraining(): boolean {
    return this.draining;
  }

  /** Every accepted TCP socket; all are destroyed at the grace deadline. */
  addSocket(socket: Socket, pending: boolean): void {
    this.sockets.add(socket);
    if (pending) this.pending.add(socket);
    socket.once("close", () => {
      this.sockets.delete(socket);
      this.pending.delete(socket);
    });
  }

  /** The socket speaks HTTP/1.1 (`socket` is what `req.socket` will be: the TLS socket under TLS). */
  markHttp1(socket: Socket): void {
    this.pending.delete(socket);
    if (this.draining) {
      socket.destroy();
      return;
    }
    this.http1.set(socket, 0);
    socket.once("close", () => this.http1.delete(socket));
  }

  markHttp2(socket: Socket): void {
    this.pending.delete(socket);
  }

  addSession(session: Http2Session): void {
    this.sessions.add(session);
    session.once("close", () => this.sessions.delete(session));
    if (this.draining) session.close();
  }

  /** Counts an HTTP/1.1 request until its response closes; after the drain began, closes the socket with it. */
  http1Request(socket: Socket, onClose: (listener: () => void) => void): void {
    const active = this.http1.get(socket);
    if (active === undefined) return;
    this.http1.set(socket, active + 1);
    onClose(() => {
      const left = (this.http1.get(socket) ?? 1) - 1;
      if (this.http1.has(socket)) this.http1.set(socket, left);
      if (this.draining && left === 0) socket.end();
    });
  }

  /** A streaming call, whose signal the drain aborts (unary calls are left to finish). Returns its untrack. */
  addStream(controller: AbortController): () => void {
    if (this.draining) controller.abort(this.shutdownError);
    this.streams.add(controller);
    return () => this.streams.delete(controller);
  }

  /** Begins the drain: GOAWAY on HTTP/2, idle HTTP/1.1 sockets closed, streaming calls' signals aborted. */
  drain(): void {
    this.draining = true;
    for (const socket of this.pending) socket.destroy();
    for (const [socket, active] of this.http1) if (active === 0) socket.destroy();
    // Node's session.close() sends GOAWAY and lets open streams finish (RFC 9113 §6.8).
    for (const session of this.sessions) session.close();
    for (const stream of this.streams) stream.abort(this.shutdownError);
  }

  /** The grace period is over: cut every connection. */
  destroyAll(): void {
    for (const session of this.sessions) session.destroy();
    for (const socket of this.sockets) socket.destroy();
  }
}

/**
 * Gives every streaming call a signal the drain can abort, and makes a stream that ended because of the shutdown
 * end with UNAVAILABLE, whatever its handler did on abort: a handler that just returns would otherwise end the
 * stream OK, and a client following StreamResults would take that for "no more results" instead of reconnecting
 * with its cursor. Must be the outermost interceptor.
 */
export function shutdownInterceptor(tracker: ConnectionTracker): Interceptor {
  return (next) => async (req) => {
    if (!req.stream) return next(req);
    const controller = new AbortController();
    const untrack = tracker.addStream(controller);
    // Handlers get `req.signal` as `ctx.signal` (connect's mergeRequest), so this reaches them.
    const signal = AbortSignal.any([req.signal, controller.signal]);
    const byShutdown = () => controller.signal.aborted;
    let res;
    try {
      res = await next({ ...req, signal });
    } catch (e) {
      untrack();
      throw e;
    }
    if (!res.stream) return res;
    const messages = res.message;
    async function* ended() {
      try {
        yield* messages;
      } catch (e) {
        throw byShutdown() && !(e instanceof ConnectError) ? tracker.shutdownError : e;
      } finally {
        untrack();
      }
      if (byShutdown()) throw tracker.shutdownError;
    }
    return { ...res, message: ended() };
  };
}

export interface Closeable {
  close(graceMs: number): Promise<void>;
}

export interface InstallShutdownOptions {
  /** How long in-flight calls get before connections are cut. Default 10,000 ms (Kubernetes allows 30 s). */
  graceMs?: number;
  logger?: Logger;
}

/**
 * On SIGTERM, SIGINT or SIGHUP (a closed terminal; left unhandled, node would exit at once, without draining): close
 * the server, run `onStop` (stop workers, close the pool), exit 0. A second signal while stopping exits 1 at once.
 * Returns a function that removes the handlers.
 */
const shutdownSignals = ["SIGTERM", "SIGINT", "SIGHUP"] as const;

export function installShutdown(
  server: Closeable,
  onStop: () => Promise<void> | void,
  options: InstallShutdownOptions = {},
): () => void {
  const graceMs = options.graceMs ?? 10_000;
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      options.logger?.warn({ signal }, "second signal while stopping, exiting now");
      process.exit(1);
    }
    stopping = true;
    options.logger?.info({ signal, graceMs }, "shutting down");
    void (async () => {
      try {
        await server.close(graceMs);
        await onStop();
        options.logger?.info("stopped");
        process.exit(0);
      } catch (err) {
        options.logger?.error({ err }, "shutdown failed");
        process.exit(1);
      }
    })();
  };
  for (const signal of shutdownSignals) process.on(signal, handler);
  return () => {
    for (const signal of shutdownSignals) process.off(signal, handler);
  };
}
