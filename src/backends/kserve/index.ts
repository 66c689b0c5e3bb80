/** The KServe Open Inference Protocol v2 (gRPC) backend: Triton, KServe, MLServer. */
export { createKServeBackend, type KServeBackendOptions } from "./kserve-backend.ts";
export {
  loadInferenceService,
  type InferenceService,
  type InferTensor,
  type ModelInferRequest,
  type ModelInferResponse,
} from "./inference-service.ts";
