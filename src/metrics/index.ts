/** Metrics: what a node exposes to Prometheus. */
export { LoteMetrics } from "./lote-metrics.ts";
export { startMetricsServer, type MetricsServer } from "./metrics-server.ts";
