import { subscribe } from "node:diagnostics_channel";
import { connect, constants, type ClientHttp2Session, type ClientHttp2Stream, type Http2Stream, type IncomingHttpHeaders } from "node:http2";
import { TransportError, type InferenceReply } from "../backend.ts";
import { describeCall, makeReply, tlsConnectOptions, tooLarge, type ReplicaTransport, type TransportContext } from "./replica-transport.ts";
import { h2ErrorName, kindOf, toTransportError } from "./transport-errors.ts";

/**
 * HTTP/2 over node:http2 sessions: h2c with prior knowledge (RFC 9113 §3.3) or TLS with ALPN "h2". undici 7
 * speaks h2 too, but its Client runs at most `pipelining` streams (default 1) and holds back non-idempotent
 * POSTs while another is running, so a session would carry one inference call at a time.
 *
 * A pool of sessions per replica, up to `connections` (by default the model's max_concurrency). While another may
 * open, a session carries at most `streamsPerSession` calls (16): 256 calls run over 16 sessions, opened as the
 * calls arrive, as many at once as the waiting calls fill. Once the pool is at `connections`, every session carries
 * up to the server's SETTINGS_MAX_CONCURRENT_STREAMS, so `connections: 1` still runs every call on one session. A
 * session takes calls only after the server's SETTINGS arrived, and never more than that limit: streams opened
 * beyond it are refused by the server (REFUSED_STREAM), not queued. Calls wait here when every session is full and
 * no more may open. After GOAWAY a session takes no new calls and a fresh one is opened on demand; a call the
 * server refused unprocessed (left out by the GOAWAY, or REFUSED_STREAM) is sent once more (`wasRefused`). When a
 * session fails to connect while others are open (a server that takes only so many connections), no other session
 * opens for OPEN_PAUSE_MS and the open ones carry calls up to the server's limit: one failed connect per second, not
 * one per call. The open ones do the same while a new session is slow to connect (SLOW_CONNECT_MS).
 */

const OPEN_PAUSE_MS = 1_000;

/**
 * A session still without the server's SETTINGS after this long stops holding calls back: they overflow onto the
 * open sessions, up to the server's limit, rather than wait for it up to the connect timeout (10 s). A connect
 * takes one round trip (~1 ms on a LAN); 100 ms is a slow WAN's.
 */
const SLOW_CONNECT_MS = 100;

/**
 * nghttp2's per-session memory cap, in MB (node's maxSessionMemory, default 10). It counts the request bodies
 * written but not yet sent, which flow control holds back (64 KiB per stream until the server's WINDOW_UPDATE), and
 * while over it node answers each arriving response with RST_STREAM ENHANCE_YOUR_CALM: 34 of 64 calls of 3 MB
 * failed over one replica, 27 of 64 calls of 1 MB on one session. The bodies are already in memory (the dispatcher
 * holds each call's, up to max_body_bytes: 1 MiB by default, at most 64 MiB), so the cap saved nothing, it only
 * failed calls. 4,096 MB lets 64 calls of the largest body share one session. The API server raises it too
 * (src/api/protocol-servers.ts).
 */
const MAX_SESSION_MEMORY_MB = 4_096;

/**
 * A stream the server refused unprocessed: RST_STREAM REFUSED_STREAM, which nghttp2 also reports for the streams a
 * GOAWAY's last-stream-id left out (a server draining, or nginx at its keepalive_requests, 1,000 by default), and a
 * stream id the session ran out of before anything was sent. RFC 9113 §8.7: such a request "has not failed" and
 * may be retried automatically, even a POST. The transport retries it once, on a session that may take it (a
 * fresh one after GOAWAY), as gRPC does ("transparent retry", proposal A6). Rejected "goaway", it went back to the
 * dispatcher, which spent one of the item's attempts and a backoff of 0.5-1 s on it, and failed the item on its
 * last attempt although the server never saw it. Once only: a server that refuses a stream twice is overloaded,
 * and the dispatcher's backoff is then the right answer.
 */
function wasRefused(error: unknown, rstCode: number): boolean {
  if (rstCode === constants.NGHTTP2_REFUSED_STREAM) return true;
  const e = error as { code?: unknown; message?: unknown } | undefined;
  if (e?.code === "ERR_HTTP2_OUT_OF_STREAMS") return true;
  return e?.code === "ERR_HTTP2_STREAM_ERROR" && String(e.message).includes("REFUSED_STREAM");
}

/**
 * Client streams that closed before their answer's END_STREAM. node ends the readable side ('end' fires) and
 * reports close code NO_ERROR both after END_STREAM and after RST_STREAM(NO_ERROR) (RFC 9113 §8.1 allows that
 * reset only after a complete answer); only the order differs: END_STREAM ends the readable side before the stream
 * closes, a reset closes it first. 'end' comes a tick later, after the close on a TLS session (a 60 KB answer
 * there), so the order is read where node closes the stream, which it announces on this diagnostics channel.
 * `_readableState.ended` is node's "push(null) was called", which has no public getter; were it ever gone, nothing
 * would be marked and only the close code would count, as before. Only cut streams are added: nothing is stored for
 * a whole answer (node builds one small message object per stream close while this listens).
 */
const closedBeforeEnd = new WeakSet<Http2Stream>();
subscribe("http2.client.stream.close", (message) => {
  const stream = (message as { stream: Http2Stream & { _readableState?: { ended?: boolean } } }).stream;
  if (stream._readableState?.ended === false) closedBeforeEnd.add(stream);
});

interface Session {
  readonly session: ClientHttp2Session;
  active: number;
  limit: number;
  /** The server's SETTINGS arrived. */
  ready: boolean;
  /** Takes new streams: false after GOAWAY, error or close. */
  usable: boolean;
  /** Still connecting after SLOW_CONNECT_MS. */
  slow: boolean;
  /** A PING is out to see whether the connection still answers (`#check`); no new calls until it does. */
  checking: boolean;
  error: unknown;
}

interface Waiter {
  readonly method: "GET" | "POST";
  /** The call was refused unprocessed once and waits for its one retry (see `wasRefused`). */
  readonly retried: boolean;
  readonly path: string;
  readonly body: string | undefined;
  readonly signal: AbortSignal;
  readonly resolve: (r: InferenceReply) => void;
  readonly reject: (e: unknown) => void;
  readonly onAbort: () => void;
}

export class H2Transport implements ReplicaTransport {
  readonly #ctx: TransportContext;
  readonly #maxSessions: number;
  #sessions: Session[] = [];
  #waiters: Waiter[] = [];
  readonly #headers = new Map<string, Readonly<Record<string, string>>>();
  #closed = false;
  /** The clock reading before which no session opens, after a failed connect while others were open. */
  #openPausedUntil = 0;
  #pauseTimer: NodeJS.Timeout | undefined;

  constructor(ctx: TransportContext) {
    this.#ctx = ctx;
    this.#maxSessions = ctx.connections;
  }

  request(method: "GET" | "POST", path: string, body: string | undefined, signal: AbortSignal): Promise<InferenceReply> {
    return this.#enqueue(method, path, body, signal, false);
  }

  /** On the least-loaded session with room, else in line (a retried call at the head: it was admitted already). */
  #enqueue(method: "GET" | "POST", path: string, body: string | undefined, signal: AbortSignal, retried: boolean): Promise<InferenceReply> {
    if (signal.aborted || this.#closed) return Promise.reject(this.#aborted(method, path));
    const s = this.#pick();
    if (s) return this.#send(s, method, path, body, signal, retried);
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        method, path, body, retried, signal, resolve, reject,
        onAbort: () => {
          this.#waiters = this.#waiters.filter((x) => x !== w);
          reject(this.#aborted(method, path));
        },
      };
      signal.addEventListener("abort", w.onAbort, { once: true });
      if (retried) this.#waiters.unshift(w);
      else this.#waiters.push(w);
      this.#pump();
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#pauseTimer);
    for (const w of this.#waiters.splice(0)) {
      w.signal.removeEventListener("abort", w.onAbort);
      w.reject(this.#aborted(w.method, w.path));
    }
    await Promise.all(this.#sessions.map((s) => new Promise<void>((done) => {
      if (s.session.closed) return done();
      s.session.once("close", () => done());
      s.session.destroy();
    })));
  }

  #aborted(method: string, path: string): TransportError {
    return new TransportError("aborted", `${describeCall(this.#ctx, method, path)}: aborted${this.#closed ? " (backend closed)" : ""}`);
  }

  /** The ready session with the fewest streams and room for one more (`#cap`, and the server's own limit). */
  #pick(): Session | undefined {
    const cap = this.#cap();
    let best: Session | undefined;
    for (const s of this.#sessions) {
      if (s.usable && s.ready && !s.checking && s.active < Math.min(s.limit, cap) && (!best || s.active < best.active)) best = s;
    }
    return best;
  }

  /**
   * Streams a session takes now: `streamsPerSession` while another session may open and none is slow to connect;
   * otherwise no cap of ours, only the server's limit.
   */
  #cap(): number {
    if (!this.#mayOpen()) return Infinity;
    for (const s of this.#sessions) if (s.slow && s.usable && !s.ready) return Infinity;
    return this.#ctx.streamsPerSession;
  }

  /**
   * Another session may open: the pool is below `connections` and no connect failed just now. The pause only stops
   * spreading: with no session left to carry a call, one opens whenever a call waits.
   */
  #mayOpen(): boolean {
    if (this.#closed) return false;
    let usable = 0;
    for (const s of this.#sessions) if (s.usable && !s.checking) usable++;
    if (usable === 0) return true;
    return usable < this.#maxSessions && this.#openPausedUntil <= this.#ctx.now();
  }

  /** Pumps again when the pause ends: nothing else may happen then for the calls that wait. */
  #pumpAtPauseEnd(): void {
    const ms = this.#openPausedUntil - this.#ctx.now();
    if (ms <= 0 || this.#pauseTimer || this.#closed) return;
    this.#pauseTimer = setTimeout(() => {
      this.#pauseTimer = undefined;
      this.#pump();
    }, ms);
    this.#pauseTimer.unref();
  }

  /**
   * Hands waiting calls to sessions with room. When none has room, opens sessions until the ones connecting can
   * take every waiting call (`streamsPerSession` each; a server that allows fewer gets more sessions once its
   * SETTINGS tell).
   */
  #pump(): void {
    while (this.#waiters.length > 0) {
      const s = this.#pick();
      if (!s) {
        let connecting = 0;
        for (const x of this.#sessions) if (x.usable && !x.ready) connecting++;
        while (connecting * this.#ctx.streamsPerSession < this.#waiters.length && this.#mayOpen()) {
          this.#open();
          connecting++;
        }
        if (connecting === 0) this.#pumpAtPauseEnd();
        return;
      }
      const w = this.#waiters.shift()!;
      w.signal.removeEventListener("abort", w.onAbort);
      this.#send(s, w.method, w.path, w.body, w.signal, w.retried).then(w.resolve, w.reject);
    }
  }

  #open(): void {
    const ctx = this.#ctx;
    const session = connect(ctx.target.origin, {
      ...(ctx.target.secure ? { ...tlsConnectOptions(ctx), ALPNProtocols: ["h2"] } : {}),
      settings: { enablePush: false },
      maxSessionMemory: MAX_SESSION_MEMORY_MB,
    });
    const s: Session = { session, active: 0, limit: 1, ready: false, usable: true, slow: false, checking: false, error: undefined };
    this.#sessions.push(s);
    const timer = setTimeout(() => {
      session.destroy(Object.assign(new Error(`no HTTP/2 SETTINGS within ${ctx.connectTimeoutMs} ms`), { code: "ETIMEDOUT" }));
    }, ctx.connectTimeoutMs);
    const slowTimer = setTimeout(() => {
      s.slow = true;
      this.#pump();
    }, SLOW_CONNECT_MS);
    slowTimer.unref();
    session.on("remoteSettings", (settings) => {
      s.limit = settings.maxConcurrentStreams ?? 2 ** 32 - 1;
      if (!s.ready) {
        s.ready = true;
        clearTimeout(timer);
        clearTimeout(slowTimer);
        if (s.active === 0) session.unref();
      }
      this.#pump();
    });
    session.once("goaway", () => {
      s.usable = false;
      this.#pump();
    });
    session.on("error", (err) => (s.error = err));
    session.once("close", () => {
      clearTimeout(timer);
      clearTimeout(slowTimer);
      s.usable = false;
      this.#sessions = this.#sessions.filter((x) => x !== s);
      if (!s.ready && !this.#closed) this.#connectFailed(s.error ?? new Error("connection closed before HTTP/2 SETTINGS"));
      else this.#pump();
    });
  }

  /** Nothing was sent: the waiting calls fail "connection_refused" (or "timeout") and can go to another replica. */
  #connectFailed(err: unknown): void {
    this.#ctx.onConnectFailure(err);
    if (this.#sessions.some((x) => x.usable)) {
      this.#openPausedUntil = this.#ctx.now() + OPEN_PAUSE_MS;
      return this.#pump();
    }
    for (const w of this.#waiters.splice(0)) {
      w.signal.removeEventListener("abort", w.onAbort);
      const kind = kindOf(err) === "timeout" ? "timeout" : "connection_refused";
      w.reject(toTransportError(err, describeCall(this.#ctx, w.method, w.path), { kind, connectFailed: true }));
    }
  }

  /**
   * One stream: the hot path of every HTTP/2 call, kept lean. The answer is read as Buffers and decoded once (a
   * StringDecoder per stream was ~4% of the client's busy time in a profile), the request headers are built once per
   * path, and the call settles on 'close', which fires exactly once per stream (after 'end' when the answer came
   * whole). Together: 106 -> 82 µs of CPU per call, median of five interleaved pairs (BENCHMARKS.md, sixth session).
   */
  #send(s: Session, method: "GET" | "POST", path: string, body: string | undefined, signal: AbortSignal, retried: boolean): Promise<InferenceReply> {
    let stream: ClientHttp2Stream;
    try {
      // `signal` makes node send RST_STREAM(CANCEL) and destroy the stream with an AbortError when it fires.
      stream = s.session.request(this.#headersFor(method, path), { endStream: body === undefined, signal });
    } catch (err) {
      // The session started closing between pick and request (GOAWAY just arrived): nothing was sent.
      s.usable = false;
      if (!retried) return this.#enqueue(method, path, body, signal, true);
      return Promise.reject(toTransportError(err, describeCall(this.#ctx, method, path), { signal }));
    }
    if (s.active++ === 0) s.session.ref();
    return new Promise((resolve, reject) => {
      let headers: IncomingHttpHeaders | undefined;
      let error: unknown;
      const chunks: Buffer[] = [];
      let bytes = 0;
      stream.on("response", (h) => (headers = h));
      stream.on("data", (chunk: Buffer) => {
        if ((bytes += chunk.length) <= this.#ctx.maxResponseBytes) return void chunks.push(chunk);
        if (error !== undefined) return;
        error = tooLarge(this.#ctx, method, path);
        chunks.length = 0;
        stream.close(constants.NGHTTP2_CANCEL);
      });
      stream.on("error", (err) => (error ??= err));
      stream.on("close", () => {
        if (error !== undefined && (error as { code?: unknown }).code === "ERR_HTTP2_OUT_OF_STREAMS") this.#retire(s);
        if (--s.active === 0 && s.ready) s.session.unref();
        if (signal.aborted && !this.#closed) this.#check(s);
        this.#pump();
        const rstCode = stream.rstCode ?? constants.NGHTTP2_NO_ERROR;
        // An answer is whole only when it ended with END_STREAM, was not reset with an error after it, and holds
        // the bytes its content-length announced (nghttp2 checks that too). A dropped connection or an RST_STREAM,
        // even NO_ERROR, ends the readable side as if it were whole: a server that reset after half its answer had
        // that half stored as a 200 result.
        const whole = stream.readableEnded && rstCode === constants.NGHTTP2_NO_ERROR && !closedBeforeEnd.has(stream);
        if (whole && headers && error === undefined) {
          const announced = headers["content-length"];
          if (announced === undefined || Number(announced) === bytes) {
            const text = chunks.length === 1 ? chunks[0]!.toString("utf8") : Buffer.concat(chunks).toString("utf8");
            return resolve(makeReply(Number(headers[":status"]), text, headers["x-request-id"], headers["retry-after"]));
          }
          error = Object.assign(new Error(`answer ended after ${bytes} of the ${announced} bytes its content-length announced`), { code: "ECONNRESET" });
        }
        if (this.#closed) return reject(this.#aborted(method, path));
        if (error instanceof TransportError) return reject(error);
        if (!retried && !signal.aborted && headers === undefined && wasRefused(error, rstCode)) {
          return resolve(this.#enqueue(method, path, body, signal, true));
        }
        const cause = error ?? (whole
          ? Object.assign(new Error("stream ended without response headers"), { code: "ERR_HTTP2_ERROR" })
          : Object.assign(new Error(`stream closed before its answer was complete (RST_STREAM ${h2ErrorName(rstCode)}${closedBeforeEnd.has(stream) ? " before END_STREAM" : ""})`), { code: "ECONNRESET" }));
        reject(toTransportError(cause, describeCall(this.#ctx, method, path), { signal, rstCode }));
      });
      if (body !== undefined) stream.end(body);
    });
  }

  /**
   * A call on the session was aborted, by its timeout mostly: is the connection still there? One whose server
   * vanished without a FIN or RST (a failover behind a virtual IP, a NAT or load balancer that dropped an idle
   * flow) takes every new stream and answers none, and TCP gives up only after ~15 minutes of retransmissions:
   * every call to the replica timed out until then, one attempt spent each (HTTP/1.1 recovers by itself, as an
   * aborted call's socket is closed). So the session gets a PING, which the server's HTTP/2 layer answers at once,
   * however busy its model is (RFC 9113 §6.7), and takes no new calls until the answer comes; none within
   * connectTimeoutMs (the deadline a new connection has for its SETTINGS) and the session is destroyed. Calls
   * meanwhile go to another session, opened if need be. One PING at a time per session.
   */
  #check(s: Session): void {
    if (s.checking || !s.usable || !s.ready || s.session.destroyed) return;
    s.checking = true;
    const ms = this.#ctx.connectTimeoutMs;
    const timer = setTimeout(() => {
      s.usable = false;
      s.session.destroy(Object.assign(new Error(`the connection went silent: no answer to PING within ${ms} ms`), { code: "ECONNRESET" }));
    }, ms);
    timer.unref();
    const answered = () => {
      clearTimeout(timer);
      s.checking = false;
      this.#pump();
    };
    try {
      if (!s.session.ping(answered)) answered();
    } catch {
      answered();
    }
  }

  /**
   * A client has 2^30 stream ids per session (odd ones up to 2^31 - 1, RFC 9113 §5.1.1): after ~1.07e9 calls node
   * destroys every stream asked of the session with ERR_HTTP2_OUT_OF_STREAMS, before anything is sent. The session
   * takes no more calls and closes once its streams end; the next call opens a fresh one.
   */
  #retire(s: Session): void {
    s.usable = false;
    s.session.close();
  }

  /** Request headers per method and path, built once: node copies them into its own list on every request. */
  #headersFor(method: "GET" | "POST", path: string): Readonly<Record<string, string>> {
    const key = method + path;
    let h = this.#headers.get(key);
    if (!h) this.#headers.set(key, (h = Object.freeze({ ...this.#ctx.headers, ":method": method, ":path": path })));
    return h;
  }
}
