import { connect as tlsConnect } from "node:tls";
import { TransportError, type InferenceReply } from "../backend.ts";
import { H2Transport } from "./h2-transport.ts";
import { Http1Transport } from "./http1-transport.ts";
import { describeCall, tlsConnectOptions, type ReplicaTransport, type TransportContext } from "./replica-transport.ts";
import { kindOf, toTransportError } from "./transport-errors.ts";

/**
 * https:// with protocol "auto": one TLS handshake offering ["h2", "http/1.1"] asks the server what it speaks
 * (RFC 7301), then every call goes to an H2Transport or an Http1Transport for good. The probe connection is
 * closed rather than reused: one extra handshake per replica per process, and both transports keep their own
 * connection handling simple. A failed probe is a connect failure (the replica is ejected) and is retried on
 * the next call.
 */
export class AlpnTransport implements ReplicaTransport {
  readonly #ctx: TransportContext;
  #chosen: ReplicaTransport | undefined;
  #probe: Promise<ReplicaTransport> | undefined;
  #closed = false;

  constructor(ctx: TransportContext) {
    this.#ctx = ctx;
  }

  /** "h2" or "http1" once decided. */
  get negotiated(): "h2" | "http1" | undefined {
    return this.#chosen instanceof H2Transport ? "h2" : this.#chosen ? "http1" : undefined;
  }

  request(method: "GET" | "POST", path: string, body: string | undefined, signal: AbortSignal): Promise<InferenceReply> {
    if (this.#chosen) return this.#chosen.request(method, path, body, signal);
    const where = describeCall(this.#ctx, method, path);
    if (signal.aborted || this.#closed) return Promise.reject(new TransportError("aborted", `${where}: aborted`));
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(new TransportError("aborted", `${where}: aborted during TLS negotiation`));
      signal.addEventListener("abort", onAbort, { once: true });
      this.#negotiate().then(
        (t) => {
          signal.removeEventListener("abort", onAbort);
          if (!signal.aborted) t.request(method, path, body, signal).then(resolve, reject);
        },
        (err: unknown) => {
          signal.removeEventListener("abort", onAbort);
          const kind = kindOf(err) === "timeout" ? "timeout" : "connection_refused";
          reject(toTransportError(err, where, { signal, kind, connectFailed: true }));
        },
      );
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#chosen?.close();
  }

  #negotiate(): Promise<ReplicaTransport> {
    this.#probe ??= new Promise<ReplicaTransport>((resolve, reject) => {
      const t = this.#ctx.target;
      const socket = tlsConnect({ host: t.hostname, port: t.port, ...tlsConnectOptions(this.#ctx), ALPNProtocols: ["h2", "http/1.1"] });
      socket.setTimeout(this.#ctx.connectTimeoutMs, () => {
        socket.destroy(Object.assign(new Error(`TLS handshake not done within ${this.#ctx.connectTimeoutMs} ms`), { code: "ETIMEDOUT" }));
      });
      socket.once("secureConnect", () => {
        const h2 = socket.alpnProtocol === "h2";
        socket.destroy();
        if (this.#closed) return reject(new TransportError("aborted", `${this.#ctx.name}: backend closed`));
        this.#chosen = h2 ? new H2Transport(this.#ctx) : new Http1Transport(this.#ctx);
        resolve(this.#chosen);
      });
      socket.once("error", (err) => {
        this.#probe = undefined;
        this.#ctx.onConnectFailure(err);
        reject(err);
      });
    });
    return this.#probe;
  }
}
