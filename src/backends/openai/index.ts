/** The OpenAI-compatible HTTP backend: HTTP/1.1, h2c and TLS (ALPN h2/http1.1) to one or more replicas. */
export { createOpenAIBackend, OpenAIBackend, type OpenAIReplicaState } from "./openai-backend.ts";
export type { BackendTlsOptions, HttpProtocol, OpenAIBackendOptions } from "./openai-backend-options.ts";
export { parseRetryAfter } from "./retry-after.ts";
