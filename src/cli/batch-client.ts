/** The generated BatchService client the commands share: gRPC over HTTP/2 (h2c for http://, TLS for https://). createGrpcTransport always speaks HTTP/2, as gRPC requires. */
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BatchService } from "../../gen/lote/v1/batch_service_pb.ts";
import type { ClientConfig } from "./client-config.ts";

export type BatchClient = Client<typeof BatchService>;

export function createBatchClient(config: ClientConfig): BatchClient {
  const interceptors: Interceptor[] = [];
  if (config.apiKey) {
    const authorization = `Bearer ${config.apiKey}`;
    interceptors.push((next) => (req) => {
      req.header.set("authorization", authorization);
      return next(req);
    });
  }
  const transport = createGrpcTransport({
    baseUrl: config.baseUrl,
    interceptors,
    nodeOptions: config.caPem ? { ca: config.caPem } : undefined,
    // A CreateBatch of a large file is one message: the server's own limit (read_max_bytes) is what applies.
    writeMaxBytes: 0xffffffff,
  });
  return createClient(BatchService, transport);
}
