/** The network edge: one-port listener, reflection, health, authentication and BatchService. */
export { listen, requestIdKey, sniffProtocol, type ApiServer, type ListenOptions, type TlsOptions } from "./listen.ts";
export { installShutdown } from "./shutdown.ts";
export { HealthMonitor, healthService, type HealthReporter } from "./health.ts";
export { registerReflection, loadDescriptorSet } from "./reflection.ts";
export { Authenticator, defaultTenant } from "./auth.ts";
export { batchServiceImpl, type BatchServiceDeps } from "./batch-service.ts";
