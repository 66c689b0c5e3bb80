import { once } from "node:events";
import { createServer as createHttpServer } from "node:http";
import { createServer as createH2Server } from "node:http2";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { handleH2, handleHttp1 } from "./protocol-exchanges.ts";
import { SimulatorCore } from "./simulator-core.ts";
import { defaultBehaviour, resolveBehaviour, type SimulatorBehaviour, type SimulatorOptions } from "./simulator-options.ts";
import type { SimulatorStats } from "./simulator-stats.ts";

export interface Simulator {
  readonly port: number;
  /** http://127.0.0.1:PORT — HTTP/1.1 keep-alive. */
  readonly url: string;
  /** h2c://127.0.0.1:PORT — HTTP/2 with prior knowledge, same port. */
  readonly h2cUrl: string;
  /** https://127.0.0.1:PORT — TLS with ALPN h2/http1.1 on the same port; only with the `tls` option. */
  readonly httpsUrl: string | undefined;
  stats(): SimulatorStats;
  /** Zeroes the stats and forgets `fail_first` attempt counts (POST /sim/reset does the same). */
  resetStats(): void;
  /** Changes latency, fault rates, API key… of the running simulator. */
  configure(patch: SimulatorBehaviour): void;
  /** Stops listening and destroys every open connection (hanging requests included). */
  close(): Promise<void>;
}

/** The HTTP/2 connection preface starts "PRI * HTTP/2.0" (RFC 9113 §3.4); no HTTP/1.1 method starts "PRI". */
const P = 0x50, R = 0x52, I = 0x49;
/** First byte of a TLS record carrying a handshake (ClientHello), RFC 8446 §5.1. */
const TLS_HANDSHAKE = 0x16;

/**
 * Starts the simulated OpenAI-compatible backend. One port serves HTTP/1.1 and h2c (and TLS when configured):
 * the first bytes of each connection say which, and the socket is handed to the matching node server.
 */
export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
  const core = new SimulatorCore(resolveBehaviour(defaultBehaviour, { ...options, seed }));
  const maxStreams = options.h2MaxConcurrentStreams ?? 256;
  if (!Number.isInteger(maxStreams) || maxStreams < 1) {
    throw new TypeError(`Expected \`h2MaxConcurrentStreams\` to be an integer >= 1, got ${maxStreams}`);
  }

  const h1 = createHttpServer({ requestTimeout: 0 }, (req, res) => handleHttp1(core, req, res));
  // Longer than undici's 4 s default so a benchmark never races a server-side keep-alive close.
  h1.keepAliveTimeout = 65_000;
  h1.on("clientError", (_err, socket) => socket.destroy());
  const h2 = createH2Server({ settings: { maxConcurrentStreams: maxStreams } });
  h2.on("stream", (stream, headers) => handleH2(core, stream, headers));
  h2.on("sessionError", () => {});

  let tls: ReturnType<typeof createTlsServer> | undefined;
  if (options.tls) {
    tls = createTlsServer({ cert: options.tls.cert, key: options.tls.key, ALPNProtocols: [...(options.tls.alpn ?? ["h2", "http/1.1"])] });
    tls.on("secureConnection", (s: TLSSocket) => (s.alpnProtocol === "h2" ? h2 : h1).emit("connection", s));
    tls.on("tlsClientError", () => {});
  }

  const sockets = new Set<Socket>();
  const route = (socket: Socket, head: Buffer): void => {
    if (head.length < 3 && (head[0] === P || head.length === 0)) {
      // Too few bytes to tell "PRI" from "POST"/"PUT"/"PATCH": wait for more.
      socket.once("data", (more: Buffer) => route(socket, Buffer.concat([head, more])));
      return;
    }
    socket.pause();
    socket.unshift(head);
    if (head[0] === TLS_HANDSHAKE && tls) {
      tls.emit("connection", socket);
    } else if (head[0] === P && head[1] === R && head[2] === I) {
      // No resume(): the HTTP/2 session reads the unshifted bytes itself on the next tick (node#35475).
      h2.emit("connection", socket);
    } else {
      h1.emit("connection", socket);
      socket.resume();
    }
  };
  const net = createNetServer((socket) => {
    core.stats.connections++;
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    // Small JSON answers: Nagle plus delayed ACKs would add ~40 ms to some of them.
    socket.setNoDelay(true);
    socket.on("error", () => {});
    socket.once("data", (head: Buffer) => route(socket, head));
  });

  net.listen(options.port ?? 0, options.host ?? "127.0.0.1");
  await once(net, "listening");
  const port = (net.address() as AddressInfo).port;
  const host = options.host ?? "127.0.0.1";
  const authority = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;

  return {
    port,
    url: `http://${authority}`,
    h2cUrl: `h2c://${authority}`,
    httpsUrl: tls ? `https://${authority}` : undefined,
    stats: () => core.stats.snapshot(),
    resetStats: () => core.resetStats(),
    configure: (patch) => core.configure(patch),
    close: async () => {
      const closed = once(net, "close");
      net.close();
      for (const s of sockets) s.destroy();
      h1.closeAllConnections();
      await closed;
    },
  };
}
