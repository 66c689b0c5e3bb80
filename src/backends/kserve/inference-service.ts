/**
 * The KServe Open Inference Protocol v2 gRPC service (`inference.GRPCInferenceService`), loaded at runtime from
 * the vendored upstream proto next to this file. The message interfaces below mirror that proto as
 * @grpc/proto-loader decodes it with `loaderOptions` (snake_case fields, int64 as number, absent messages null).
 */
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** One of bool/int64/string; the proto has no double, so fractional numbers travel as `string_param`. */
export interface InferParameter {
  bool_param?: boolean;
  int64_param?: number;
  string_param?: string;
  /** Set on decode: which member of the oneof is present. */
  parameter_choice?: "bool_param" | "int64_param" | "string_param";
}
export type InferParameters = Record<string, InferParameter>;

export interface InferTensorContents {
  bool_contents?: boolean[];
  int_contents?: number[];
  int64_contents?: number[];
  uint_contents?: number[];
  uint64_contents?: number[];
  fp32_contents?: number[];
  fp64_contents?: number[];
  bytes_contents?: Buffer[];
}

export interface InferTensor {
  name: string;
  datatype: string;
  shape: number[];
  parameters?: InferParameters;
  contents?: InferTensorContents | null;
}

export interface ModelInferRequest {
  model_name: string;
  model_version?: string;
  id?: string;
  parameters?: InferParameters;
  inputs: InferTensor[];
  outputs?: { name: string; parameters?: InferParameters }[];
  raw_input_contents?: Buffer[];
}

export interface ModelInferResponse {
  model_name: string;
  model_version: string;
  id: string;
  parameters: InferParameters;
  outputs: InferTensor[];
  raw_output_contents: Buffer[];
}

type Unary<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response?: Res) => void,
) => grpc.ClientUnaryCall;

/** The three RPCs lote uses, typed; the client also has ServerLive/ServerMetadata/ModelMetadata. */
export interface InferenceClient extends grpc.Client {
  ServerReady: Unary<Record<string, never>, { ready: boolean }>;
  ModelReady: Unary<{ name: string; version?: string }, { ready: boolean }>;
  ModelInfer: Unary<ModelInferRequest, ModelInferResponse>;
}

export interface InferenceService {
  /** For `grpc.Server#addService` (the tests and the simulator serve the same protocol). */
  readonly definition: grpc.ServiceDefinition;
  /** Constructor of a client for one target. */
  readonly Client: new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => InferenceClient;
}

/**
 * keepCase keeps the proto's snake_case names, which are also the v2 REST JSON names. `longs: Number` because
 * shapes and token counts are far below 2^53; int64 tensor values beyond that lose precision (JSON could not
 * carry them exactly either). `defaults` turns proto3's omitted `ready = false` into an explicit false.
 */
const loaderOptions: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  oneofs: true,
};

let loaded: InferenceService | undefined;

/** Parses the vendored proto once per process. */
export function loadInferenceService(): InferenceService {
  if (loaded) return loaded;
  const protoPath = fileURLToPath(new URL("./grpc_predict_v2.proto", import.meta.url));
  const packageDefinition = protoLoader.loadSync(protoPath, loaderOptions);
  const root = grpc.loadPackageDefinition(packageDefinition);
  const Client = (root.inference as grpc.GrpcObject).GRPCInferenceService as grpc.ServiceClientConstructor;
  loaded = { definition: Client.service, Client: Client as unknown as InferenceService["Client"] };
  return loaded;
}
