import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const protoDir = new URL("../../proto/", import.meta.url).pathname;

/**
 * A @grpc/grpc-js client built from proto/ at run time, as a user of another stack would: no lote code involved.
 * Enums as strings, int64 as strings, oneofs marked.
 */
export function batchServiceClient(address: string, credentials = grpc.credentials.createInsecure()): any {
  const def = protoLoader.loadSync("lote/v1/batch_service.proto", {
    includeDirs: [protoDir], keepCase: false, longs: String, enums: String, defaults: true, oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as any;
  return new pkg.lote.v1.BatchService(address, credentials, { "grpc.max_send_message_length": 512 * 1024 * 1024, "grpc.max_receive_message_length": 512 * 1024 * 1024 });
}

/** Promisified unary call. */
export function call<T = any>(client: any, method: string, request: unknown, metadata = new grpc.Metadata(), options: grpc.CallOptions = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, options, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

/** Collects a server stream into an array (ends with the stream). */
export function collect<T = any>(stream: grpc.ClientReadableStream<T>): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const out: T[] = [];
    stream.on("data", (m: T) => out.push(m));
    stream.on("end", () => resolve(out));
    stream.on("error", reject);
  });
}

/** A chat-completions request with its body as JSON bytes (body_json). */
export function chatRequest(customId: string, model: string, text: string, extra: Record<string, unknown> = {}) {
  return { customId, bodyJson: Buffer.from(JSON.stringify({ model, messages: [{ role: "user", content: text }], ...extra })) };
}

/** google.rpc.BadRequest field violations from a gRPC error's grpc-status-details-bin trailer. */
export function fieldViolations(err: grpc.ServiceError): { field: string; description: string; reason: string }[] {
  const bin = err.metadata?.get("grpc-status-details-bin")?.[0];
  if (!bin) return [];
  // google.rpc.Status { code=1, message=2, details=3 (Any) }; Any { type_url=1, value=2 }. Decoded by hand with
  // protobufjs's Reader to stay independent of lote's generated code.
  const { Reader } = protobuf;
  const status = Reader.create(bin as Buffer);
  const out: { field: string; description: string; reason: string }[] = [];
  while (status.pos < status.len) {
    const tag = status.uint32();
    if (tag >>> 3 !== 3) { status.skipType(tag & 7); continue; }
    const any = Reader.create(status.bytes());
    let typeUrl = "";
    let value: Uint8Array = new Uint8Array();
    while (any.pos < any.len) {
      const t = any.uint32();
      if (t >>> 3 === 1) typeUrl = any.string();
      else if (t >>> 3 === 2) value = any.bytes();
      else any.skipType(t & 7);
    }
    if (!typeUrl.endsWith("google.rpc.BadRequest")) continue;
    const br = Reader.create(value);
    while (br.pos < br.len) {
      const t = br.uint32();
      if (t >>> 3 !== 1) { br.skipType(t & 7); continue; }
      const fv = Reader.create(br.bytes());
      const v = { field: "", description: "", reason: "" };
      while (fv.pos < fv.len) {
        const ft = fv.uint32();
        if (ft >>> 3 === 1) v.field = fv.string();
        else if (ft >>> 3 === 2) v.description = fv.string();
        else if (ft >>> 3 === 3) v.reason = fv.string();
        else fv.skipType(ft & 7);
      }
      out.push(v);
    }
  }
  return out;
}
