/** Model backends: one interface, three kinds (OpenAI-compatible HTTP, KServe v2 gRPC, built-in). */
export { TransportError, endpointPaths, type Backend, type EndpointPath, type InferenceCall, type InferenceReply, type TransportErrorKind } from "./backend.ts";
export { createBackends, closeBackends } from "./create-backends.ts";
