import { createConnection, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP proxy on 127.0.0.1 that a test can cut (as a network partition would) and restore on the same port, or
 * freeze: the connections open now stop passing data but stay open, as when a server host vanishes without a FIN
 * or RST (a failover behind a virtual IP), while new connections pass; or hold new connections, accepted but not
 * connected on, until the test releases them.
 */
export class TcpProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly pairs = new Set<[Socket, Socket]>();
  private holding = false;
  private readonly held: Socket[] = [];
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async start(port = 0): Promise<number> {
    this.server = createServer((client) => {
      if (this.holding) {
        // Accepted, but nothing reaches the target until `release`: what the client sends waits in its socket.
        client.on("error", () => {});
        this.sockets.add(client);
        client.on("close", () => this.sockets.delete(client));
        this.held.push(client);
        return;
      }
      this.connect(client);
    });
    await new Promise<void>((resolve) => this.server!.listen(port, "127.0.0.1", resolve));
    this.port = (this.server.address() as { port: number }).port;
    return this.port;
  }

  /** New connections are accepted but held (not connected to the target) until `release`. */
  hold(): void {
    this.holding = true;
  }

  /** Connections accepted while holding, and not closed since. */
  get heldOpen(): number {
    return this.held.filter((s) => !s.destroyed).length;
  }

  /** Connects the held connections to the target, and stops holding new ones. */
  release(): void {
    this.holding = false;
    for (const client of this.held.splice(0)) if (!client.destroyed) this.connect(client);
  }

  /** Connections open through the proxy (either side not yet closed). */
  get open(): number {
    return this.sockets.size;
  }

  private connect(client: Socket): void {
    const upstream = createConnection(this.target);
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
      s.on("error", () => {});
    }
    const pair: [Socket, Socket] = [client, upstream];
    this.pairs.add(pair);
    client.pipe(upstream).pipe(client);
    client.on("close", () => {
      upstream.destroy();
      this.pairs.delete(pair);
    });
    upstream.on("close", () => client.destroy());
  }

  /** The connections open now stop passing data, both ways, and are never closed (until `cut`). */
  freeze(): number {
    for (const [client, upstream] of this.pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
    const frozen = this.pairs.size;
    this.pairs.clear();
    return frozen;
  }

  /** Drops every connection and stops accepting new ones. */
  async cut(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }
}

/** A started proxy to the Postgres of `databaseUrl`, and the same URL through it. */
export async function proxyTo(databaseUrl: string): Promise<{ proxy: TcpProxy; url: string }> {
  const url = new URL(databaseUrl);
  const proxy = new TcpProxy({ host: url.hostname, port: Number(url.port || 5432) });
  url.hostname = "127.0.0.1";
  url.port = String(await proxy.start());
  return { proxy, url: url.toString() };
}
