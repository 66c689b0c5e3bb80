import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import { type FileDescriptorProto, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BatchSchema } from "../../gen/lote/v1/batch_pb.ts";
import { BatchService } from "../../gen/lote/v1/batch_service_pb.ts";
import { type ApiServer, listen } from "../../src/api/listen.ts";

const run = promisify(execFile);
const root = new URL("../..", import.meta.url).pathname;

const routes = (router: ConnectRouter) =>
  router.service(BatchService, { getBatch: (req) => create(BatchSchema, { id: req.id, model: "m" }) });

type ReflectionClient = grpc.Client & { serverReflectionInfo(): grpc.ClientDuplexStream<object, any> };

function reflectionClient(version: "v1" | "v1alpha", address: string): ReflectionClient {
  const definition = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, { includeDirs: [`${root}proto`], keepCase: true, arrays: true });
  const Client = (grpc.loadPackageDefinition(definition) as any).grpc.reflection[version].ServerReflection;
  return new Client(address, grpc.credentials.createInsecure());
}

/** Sends each request on one bidi stream and collects one response per request. */
async function ask(client: ReflectionClient, requests: object[]): Promise<any[]> {
  const call = client.serverReflectionInfo();
  const responses: any[] = [];
  const done = new Promise<void>((resolve, reject) => {
    call.on("data", (res) => {
      responses.push(res);
      if (responses.length === requests.length) call.end();
    });
    call.on("error", reject);
    call.on("end", resolve);
  });
  for (const req of requests) call.write(req);
  await done;
  return responses;
}

const decode = (bytes: Uint8Array[]): FileDescriptorProto[] => bytes.map((b) => fromBinary(FileDescriptorProtoSchema, b));

describe.each(["v1", "v1alpha"] as const)("server reflection %s", (version) => {
  let server: ApiServer;
  let client: ReflectionClient;
  beforeAll(async () => {
    server = await listen({ port: 0, routes, health: { check: async () => true }, logger: pino({ level: "silent" }) });
    client = reflectionClient(version, `127.0.0.1:${server.port}`);
  });
  afterAll(async () => {
    client.close();
    await server.close(1000);
  });

  it("lists every registered service", async () => {
    const [res] = await ask(client, [{ host: "lote", list_services: "" }]);
    expect(res.valid_host).toBe("lote");
    expect(res.original_request.list_services).toBe("");
    expect(res.list_services_response.service.map((s: { name: string }) => s.name)).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      "lote.v1.BatchService",
    ]);
  });

  it("returns the file declaring a service with its comments and every file it imports", async () => {
    const [res] = await ask(client, [{ file_containing_symbol: "lote.v1.BatchService" }]);
    const files = decode(res.file_descriptor_response.file_descriptor_proto);
    expect(files.map((f) => f.name)).toEqual([
      "lote/v1/batch_service.proto",
      "google/protobuf/duration.proto",
      "lote/v1/batch.proto",
      "google/protobuf/struct.proto",
      "google/protobuf/timestamp.proto",
    ]);
    const [file] = files;
    const service = file!.service.find((s) => s.name === "BatchService");
    expect(service?.method.map((m) => m.name)).toEqual([
      "CreateBatch", "GetBatch", "ListBatches", "CancelBatch", "StreamResults", "WatchBatch", "RunBatch", "RetryBatch", "EstimateBatch",
    ]);
    expect(service?.method.find((m) => m.name === "WatchBatch")?.serverStreaming).toBe(true);
    const comments = file!.sourceCodeInfo?.location.map((l) => l.leadingComments) ?? [];
    expect(comments.some((c) => c.includes("Batch inference, the OpenAI Batch API over gRPC"))).toBe(true);
    expect(comments.some((c) => c.includes("Returns one batch. NOT_FOUND when it does not exist"))).toBe(true);
  });

  it("finds methods, nested messages, enums, enum values and fields", async () => {
    const symbols = {
      "lote.v1.BatchService.GetBatch": "lote/v1/batch_service.proto",
      "lote.v1.Batch": "lote/v1/batch.proto",
      "lote.v1.Batch.MetadataEntry": "lote/v1/batch.proto",
      "lote.v1.Batch.created_at": "lote/v1/batch.proto",
      "lote.v1.BatchStatus": "lote/v1/batch.proto",
      "lote.v1.RESULT_FILTER_FAILED": "lote/v1/batch_service.proto",
      ".google.protobuf.Struct": "google/protobuf/struct.proto",
      "grpc.health.v1.HealthCheckResponse.ServingStatus": "grpc/health/v1/health.proto",
    };
    const responses = await ask(client, Object.keys(symbols).map((s) => ({ file_containing_symbol: s })));
    const found = responses.map((r) => r.error_response?.error_message ?? decode(r.file_descriptor_response.file_descriptor_proto)[0]!.name);
    expect(found).toEqual(Object.values(symbols));
  });

  it("returns a file by name", async () => {
    const [res] = await ask(client, [{ file_by_filename: "lote/v1/batch.proto" }]);
    const files = decode(res.file_descriptor_response.file_descriptor_proto);
    expect(files[0]!.messageType.map((m) => m.name)).toContain("Batch");
  });

  it("answers NOT_FOUND for unknown symbols, files and extensions, and no extension numbers for a message", async () => {
    const responses = await ask(client, [
      { file_containing_symbol: "lote.v1.Nope" },
      { file_by_filename: "nope.proto" },
      { file_containing_extension: { containing_type: "lote.v1.Batch", extension_number: 100 } },
      { all_extension_numbers_of_type: "lote.v1.Batch" },
      { all_extension_numbers_of_type: "lote.v1.Nope" },
    ]);
    expect(responses.map((r) => r.error_response?.error_code)).toEqual([
      grpc.status.NOT_FOUND, grpc.status.NOT_FOUND, grpc.status.NOT_FOUND, undefined, grpc.status.NOT_FOUND,
    ]);
    expect(responses[0].error_response.error_message).toBe('symbol "lote.v1.Nope" not found');
    expect(responses[3].all_extension_numbers_response).toEqual({ base_type_name: "lote.v1.Batch", extension_number: [] });
  });
});

describe("buf curl against reflection", () => {
  let server: ApiServer;
  beforeAll(async () => {
    server = await listen({ port: 0, routes, health: { check: async () => true }, logger: pino({ level: "silent" }) });
  });
  afterAll(() => server.close(1000));

  const bufCurl = (...args: string[]) =>
    run(`${root}node_modules/.bin/buf`, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], { cwd: root });

  it("lists the services", async () => {
    const { stdout } = await bufCurl("--list-services", server.url);
    expect(stdout.split("\n")).toContain("lote.v1.BatchService");
  });

  it("calls GetBatch with the schema it got from reflection", async () => {
    const { stdout } = await bufCurl("-d", '{"id":"batch_9"}', `${server.url}/lote.v1.BatchService/GetBatch`);
    expect(JSON.parse(stdout)).toMatchObject({ id: "batch_9", model: "m" });
  });
});
