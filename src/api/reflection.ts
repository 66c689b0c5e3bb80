import { readFileSync } from "node:fs";
import { create, createFileRegistry, type DescFile, fromBinary, toBinary } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { type FileDescriptorSet, FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.ts";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.ts";

/** `buf build -o gen/lote.binpb` (npm run generate): every proto file and its imports, with comments. */
export const defaultDescriptorSetPath = new URL("../../gen/lote.binpb", import.meta.url);

/** Reads a serialized google.protobuf.FileDescriptorSet. */
export function loadDescriptorSet(path: URL | string = defaultDescriptorSetPath): FileDescriptorSet {
  return fromBinary(FileDescriptorSetSchema, readFileSync(path));
}

/** v1 and v1alpha requests have the same fields; only the type names differ. */
type ReflectionRequest = v1.ServerReflectionRequest | v1alpha.ServerReflectionRequest;

/** The response oneof, in the shape both versions accept. */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/** Finds files by name and by the fully-qualified names they declare, and serializes them with their imports. */
export class DescriptorIndex {
  private readonly files = new Map<string, DescFile>();
  private readonly symbols = new Map<string, DescFile>();
  private readonly extensions = new Map<string, { file: DescFile; number: number }[]>();
  private readonly serialized = new Map<DescFile, Uint8Array>();

  constructor(set: FileDescriptorSet) {
    const registry = createFileRegistry(set);
    for (const file of registry.files) {
      this.files.set(file.proto.name, file);
      const pkg = file.proto.package;
      for (const type of nestedTypes(file)) {
        this.symbols.set(type.typeName, file);
        if (type.kind === "message") {
          for (const field of type.fields) {
            this.symbols.set(`${type.typeName}.${field.name}`, file);
            // protobuf-es hides the synthetic map entry messages (Batch.MetadataEntry); protoc clients ask for them.
            if (field.fieldKind === "map") this.symbols.set(field.proto.typeName.replace(/^\./, ""), file);
          }
          for (const oneof of type.oneofs) this.symbols.set(`${type.typeName}.${oneof.name}`, file);
        } else if (type.kind === "enum") {
          // C++ scoping: enum values are siblings of their enum, not children.
          const scope = type.parent?.typeName ?? pkg;
          for (const value of type.values) this.symbols.set(scope ? `${scope}.${value.name}` : value.name, file);
        } else if (type.kind === "service") {
          for (const method of type.methods) this.symbols.set(`${type.typeName}.${method.name}`, file);
        } else {
          const list = this.extensions.get(type.extendee.typeName) ?? [];
          list.push({ file, number: type.number });
          this.extensions.set(type.extendee.typeName, list);
        }
      }
    }
  }

  /** The file with this name, then every file it imports, transitively; undefined when unknown. */
  fileByName(name: string): Uint8Array[] | undefined {
    const file = this.files.get(name);
    return file && this.withDependencies(file);
  }

  /** The file declaring this fully-qualified symbol (no leading dot), with its imports; undefined when unknown. */
  fileContainingSymbol(symbol: string): Uint8Array[] | undefined {
    const file = this.symbols.get(symbol.replace(/^\./, ""));
    return file && this.withDependencies(file);
  }

  /** Extension field numbers of a message type; undefined when the type is unknown. */
  extensionNumbers(typeName: string): number[] | undefined {
    if (!this.symbols.has(typeName)) return undefined;
    return (this.extensions.get(typeName) ?? []).map((e) => e.number);
  }

  fileContainingExtension(typeName: string, number: number): Uint8Array[] | undefined {
    const found = this.extensions.get(typeName)?.find((e) => e.number === number);
    return found && this.withDependencies(found.file);
  }

  // Always the whole closure, even files sent earlier on the stream: grpc-go skips those, but resending ~50 KB is
  // cheaper than a client that does not cache and then cannot resolve an import.
  private withDependencies(file: DescFile): Uint8Array[] {
    const order: DescFile[] = [];
    const visit = (f: DescFile) => {
      if (order.includes(f)) return;
      order.push(f);
      f.dependencies.forEach(visit);
    };
    visit(file);
    return order.map((f) => {
      let bytes = this.serialized.get(f);
      if (!bytes) this.serialized.set(f, (bytes = toBinary(FileDescriptorProtoSchema, f.proto)));
      return bytes;
    });
  }
}

function notFound(what: string): Answer {
  return { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage: `${what} not found` } };
}

function files(found: Uint8Array[] | undefined, what: string): Answer {
  return found ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: found } } : notFound(what);
}

function answer(req: ReflectionRequest, index: DescriptorIndex, services: () => string[]): Answer {
  const ask = req.messageRequest;
  switch (ask.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: services().map((name) => ({ name })) } };
    case "fileByFilename":
      return files(index.fileByName(ask.value), `file "${ask.value}"`);
    case "fileContainingSymbol":
      return files(index.fileContainingSymbol(ask.value), `symbol "${ask.value}"`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = ask.value;
      const found = index.fileContainingExtension(containingType, extensionNumber);
      return files(found, `extension ${extensionNumber} of "${containingType}"`);
    }
    case "allExtensionNumbersOfType": {
      const numbers = index.extensionNumbers(ask.value);
      if (!numbers) return notFound(`type "${ask.value}"`);
      return { case: "allExtensionNumbersResponse", value: { baseTypeName: ask.value, extensionNumber: numbers } };
    }
    default:
      return {
        case: "errorResponse",
        value: { errorCode: Code.InvalidArgument, errorMessage: "message_request is not set" },
      };
  }
}

/** Yields until the client half-closes or `signal` aborts: a bidi handler must not outwait a server shutdown. */
async function* untilAborted<T>(iterable: AsyncIterable<T>, signal: AbortSignal): AsyncGenerator<T> {
  const it = iterable[Symbol.asyncIterator]();
  const aborted = new Promise<IteratorResult<T>>((resolve) => {
    const done = () => resolve({ done: true, value: undefined });
    if (signal.aborted) done();
    else signal.addEventListener("abort", done, { once: true });
  });
  for (;;) {
    const next = await Promise.race([it.next(), aborted]);
    if (next.done) return;
    yield next.value;
  }
}

/**
 * Registers grpc.reflection.v1.ServerReflection and its predecessor v1alpha (grpcurl, buf curl and Postman still
 * try v1alpha first or only) on the router. list_services answers every service on the router at call time.
 */
export function registerReflection(router: ConnectRouter, set: FileDescriptorSet): void {
  const index = new DescriptorIndex(set);
  const services = () => [...new Set(router.handlers.map((h) => h.service.typeName))].sort();
  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests, ctx) {
      for await (const req of untilAborted(requests, ctx.signal)) {
        const messageResponse = answer(req, index, services);
        yield create(v1.ServerReflectionResponseSchema, { validHost: req.host, originalRequest: req, messageResponse });
      }
    },
  });
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests, ctx) {
      for await (const req of untilAborted(requests, ctx.signal)) {
        const messageResponse = answer(req, index, services);
        yield create(v1alpha.ServerReflectionResponseSchema, {
          validHost: req.host,
          originalRequest: req,
          messageResponse,
        });
      }
    },
  });
}
