/**
 * The composition root: builds a lote node from its config. `serve` runs the API and a worker pool; `api` and
 * `worker` run one role each so a fleet of nodes can share one Postgres.
 */
import { hostname } from "node:os";
import type { Logger } from "pino";
import { BatchService } from "../../gen/lote/v1/batch_service_pb.ts";
import { Authenticator } from "../api/index.ts";
import { batchServiceImpl } from "../api/index.ts";
import { listen, type ApiServer } from "../api/index.ts";
import { closeBackends, createBackends, type Backend } from "../backends/index.ts";
import { BatchEvents } from "../batch/batch-events.ts";
import { newId } from "../batch/ids.ts";
import type { Config } from "../config/config.ts";
import { Dispatcher } from "../dispatch/index.ts";
import { LoteMetrics, startMetricsServer, type MetricsServer } from "../metrics/index.ts";
import { Notifier, openDatabase, readQueueDepth, type Database } from "../store/index.ts";

export type Role = "serve" | "api" | "worker";

/**
 * A port this node was configured to serve on could not be bound: taken by another process (a second `npm start`),
 * privileged, or an address no interface has. Raised from Node's listen error so the start ends with one line
 * naming the address and the key that sets it, rather than a stack trace.
 */
export class ListenError extends Error {
  override readonly name = "ListenError";
}

// Node's listen errors a configuration causes, and what each means to the operator.
const listenProblems: Record<string, string> = {
  EADDRINUSE: "the address is already in use (another lote node, or another program, listens there)",
  EACCES: "permission denied (ports below 1024 need privileges)",
  EADDRNOTAVAIL: "no interface of this machine has that address",
};

function listenFailure(err: unknown, what: string, host: string, port: number, keys: string): unknown {
  const problem = listenProblems[(err as NodeJS.ErrnoException)?.code ?? ""];
  if (!problem) return err;
  const address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  return new ListenError(`cannot serve ${what} on ${address}: ${problem}; choose another with ${keys}`, { cause: err });
}

export interface LoteNode {
  readonly db: Database;
  readonly api?: ApiServer;
  readonly dispatcher?: Dispatcher;
  readonly metrics?: MetricsServer;
  close(): Promise<void>;
}

export async function startLote(config: Config, role: Role, logger: Logger): Promise<LoteNode> {
  const db = await openDatabase({
    databaseUrl: config.databaseUrl, dataDir: config.dataDir, embeddedPort: config.embeddedPostgresPort, queryTimeoutMs: config.queryTimeoutMs, logger,
  });
  const notifier = new Notifier({ connectionString: db.url, logger, pingMs: config.queryTimeoutMs });
  let api: ApiServer | undefined;
  let dispatcher: Dispatcher | undefined;
  let metricsServer: MetricsServer | undefined;
  const metrics = config.metrics ? new LoteMetrics() : undefined;
  let backends: Map<string, Backend> = new Map();
  // Everything after openDatabase MUST be inside this try: a failure must close the database, or an embedded
  // PostgreSQL this process started would outlive it.
  try {
    await notifier.start();
    if (role !== "api") backends = await createBackends(config.models);
    if (role !== "api") {
      const workerId = newId(`w_${hostname().slice(0, 20).replace(/[^a-zA-Z0-9-]/g, "")}_${process.pid}`);
      // Its own pool: its queries time out (see DispatcherOptions), and API calls cannot take its connections. One
      // claim at a time per model, plus the completer, the heartbeat, the worker registry and maintenance.
      const pool = db.openPool({ max: Math.max(10, config.models.size + 4), applicationName: "lote-dispatch" });
      dispatcher = new Dispatcher({ pool, bulkPool: db.bulkPool, notifier, backends, models: config.models, worker: config.worker, workerId, logger, observer: metrics });
      metrics?.watch(dispatcher, config.models, () => readQueueDepth(pool));
      dispatcher.start();
    }
    if (metrics && config.metrics) {
      const { host, port } = config.metrics;
      metricsServer = await startMetricsServer({ host, port, registry: metrics.registry, logger }).catch((err) => {
        throw listenFailure(err, "metrics", host, port, "metrics.port (LOTE_METRICS_PORT) or metrics.host (LOTE_METRICS_HOST)");
      });
      logger.info({ url: metricsServer.url }, "metrics listening");
    }
    if (role !== "worker") {
      const auth = new Authenticator({ required: config.authRequired, pool: db.pool });
      notifier.on("notification", (channel) => {
        if (channel === "lote_keys") auth.forget();
      });
      // A revocation missed while the LISTEN connection was down: the cache may hold it for up to its 30 s.
      notifier.on("reconnected", () => auth.forget());
      const events = new BatchEvents(notifier);
      api = await listen({
        host: config.host,
        port: config.port,
        readMaxBytes: config.maxMessageBytes,
        tls: config.tls ? { cert: config.tls.cert, key: config.tls.key, ca: config.tls.ca, requireClientCert: config.tls.requireClientCert } : undefined,
        routes: (router) => router.service(BatchService, batchServiceImpl({ pool: db.pool, bulkPool: db.bulkPool, config, auth, events, logger })),
        interceptors: metrics ? [metrics.apiInterceptor()] : [],
        health: { check: () => db.ping() },
        logger,
      }).catch((err) => {
        throw listenFailure(err, "the API", config.host, config.port, "port (LOTE_PORT) or host (LOTE_HOST)");
      });
      logger.info({ url: api.url, auth: config.authRequired ? "required" : "off", tls: Boolean(config.tls) }, "lote API listening");
      if (!config.authRequired) {
        logger.warn({ host: config.host }, "authentication is off: allowed only because the API listens on loopback");
      }
    }
  } catch (err) {
    await metricsServer?.close();
    await dispatcher?.stop(0);
    await notifier.close();
    await closeBackends(backends);
    await db.close();
    throw err;
  }
  return {
    db,
    api,
    dispatcher,
    metrics: metricsServer,
    async close() {
      // Together, so a stop takes one shutdown_grace_ms at most (a Kubernetes grace period is sized to it), not the
      // API's grace and then the workers' one after it. The API's calls and the workers' completions both need the
      // database, which closes after both.
      await Promise.all([api?.close(config.shutdownGraceMs), dispatcher?.stop(config.shutdownGraceMs)]);
      await metricsServer?.close();
      await closeBackends(backends);
      await notifier.close();
      await db.close();
    },
  };
}
