/** GET /metrics in Prometheus's text format, on a port of its own and plain HTTP/1.1, as scrapers expect. */
import { createServer } from "node:http";
import type { Logger } from "pino";
import type { Registry } from "prom-client";

export interface MetricsServer {
  /** "http://host:port/metrics" */
  readonly url: string;
  close(): Promise<void>;
}

export async function startMetricsServer(o: { host: string; port: number; registry: Registry; logger: Logger }): Promise<MetricsServer> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: metrics are at /metrics\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("expected GET\n");
      return;
    }
    o.registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": o.registry.contentType }).end(req.method === "HEAD" ? undefined : text),
      (err: Error) => {
        o.logger.warn({ err: err.message }, "metrics scrape failed");
        res.writeHead(500, { "content-type": "text/plain" }).end("metrics failed\n");
      },
    );
  });
  // A scraper keeps its connection open between scrapes; close() must not wait for it.
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as { port: number };
  const host = o.host.includes(":") ? `[${o.host}]` : o.host;
  return {
    url: `http://${host}:${port}/metrics`,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
