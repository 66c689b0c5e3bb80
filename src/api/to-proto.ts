/** Store records -> lote.v1 messages, and the enum <-> path mappings. */
import { create, type JsonObject } from "@bufbuild/protobuf";
import { timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { BatchSchema, BatchStatus, Endpoint, ResultSchema, type Batch, type Result } from "../../gen/lote/v1/batch_pb.ts";
import type { EndpointPath } from "../backends/backend.ts";
import type { BatchStatus as StoreStatus } from "../batch/batch-status.ts";
import type { BatchRecord, ResultRecord } from "../store/index.ts";
import { encodeCursor } from "./cursor.ts";

const endpointToPath: Record<number, EndpointPath | undefined> = {
  [Endpoint.CHAT_COMPLETIONS]: "/v1/chat/completions",
  [Endpoint.COMPLETIONS]: "/v1/completions",
  [Endpoint.EMBEDDINGS]: "/v1/embeddings",
  [Endpoint.RESPONSES]: "/v1/responses",
  [Endpoint.CLASSIFY]: "/classify",
};
const pathToEndpoint = new Map(Object.entries(endpointToPath).map(([k, v]) => [v!, Number(k) as Endpoint]));

export function endpointPath(e: Endpoint): EndpointPath | undefined {
  return endpointToPath[e];
}

const statusToProto: Record<StoreStatus, BatchStatus> = {
  validating: BatchStatus.VALIDATING,
  failed: BatchStatus.FAILED,
  in_progress: BatchStatus.IN_PROGRESS,
  finalizing: BatchStatus.FINALIZING,
  completed: BatchStatus.COMPLETED,
  expired: BatchStatus.EXPIRED,
  cancelling: BatchStatus.CANCELLING,
  cancelled: BatchStatus.CANCELLED,
};
const protoToStatus = new Map(Object.entries(statusToProto).map(([k, v]) => [v, k as StoreStatus]));

export function storeStatus(s: BatchStatus): StoreStatus | undefined {
  return protoToStatus.get(s);
}

const ts = (d: Date | null): Timestamp | undefined => (d ? timestampFromDate(d) : undefined);

export function toBatch(b: BatchRecord): Batch {
  return create(BatchSchema, {
    id: b.id,
    endpoint: pathToEndpoint.get(b.endpoint) ?? Endpoint.UNSPECIFIED,
    model: b.model,
    status: statusToProto[b.status],
    requestCounts: {
      total: BigInt(b.total),
      completed: BigInt(b.completed),
      failed: BigInt(b.failed),
      cancelled: BigInt(b.cancelled),
      expired: BigInt(b.expired),
      running: BigInt(b.running),
    },
    createdAt: ts(b.createdAt),
    inProgressAt: ts(b.inProgressAt),
    finalizingAt: ts(b.finalizingAt),
    completedAt: ts(b.completedAt),
    failedAt: ts(b.failedAt),
    expiredAt: ts(b.expiredAt),
    cancellingAt: ts(b.cancellingAt),
    cancelledAt: ts(b.cancelledAt),
    expiresAt: ts(b.expiresAt),
    errors: b.errors.map((e) => ({ code: e.code, message: e.message, param: e.param ?? "", line: BigInt(e.line ?? -1) })),
    metadata: b.metadata,
    usage: { inputTokens: BigInt(b.inputTokens), outputTokens: BigInt(b.outputTokens), totalTokens: BigInt(b.totalTokens) },
    priority: b.priority,
    completionWindowSeconds: BigInt(b.completionWindowSeconds),
    retriedFrom: b.retriedFrom ?? "",
  });
}

const encoder = new TextEncoder();

export function toResult(batchId: string, r: ResultRecord, rawJson: boolean): Result {
  const result = create(ResultSchema, {
    id: `res_${batchId.slice(6)}_${r.idx}`,
    customId: r.customId,
    cursor: encodeCursor(batchId, r.seq),
    attempts: r.attempts,
    index: BigInt(r.idx),
  });
  if (r.errorCode === null && r.body !== null) {
    result.response = {
      $typeName: "lote.v1.Response",
      statusCode: r.statusCode,
      requestId: r.backendRequestId,
      body: rawJson ? undefined : parseObject(r.body),
      bodyJson: rawJson ? encoder.encode(r.body) : new Uint8Array(0),
    };
  } else {
    result.error = { $typeName: "lote.v1.ResultError", code: r.errorCode ?? "unknown", message: r.errorMessage ?? "", statusCode: r.statusCode };
  }
  return result;
}

function parseObject(text: string): JsonObject {
  try {
    const v = JSON.parse(text);
    return v && typeof v === "object" && !Array.isArray(v) ? v : { value: v };
  } catch {
    return { text };
  }
}
