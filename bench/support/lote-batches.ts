/**
 * Submitting benchmark batches to a lote server over gRPC (connect-node, HTTP/2) and reading their timings back.
 * "First result" and "last result" are the created_at of the first and last lote.results rows (Postgres'
 * now() of the completion statement that wrote them); COMPLETED is the batch's completed_at. All three are
 * Postgres wall-clock times, comparable with wallMs() on the same machine.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type pg from "pg";
import { BatchStatus, Endpoint } from "../../gen/lote/v1/batch_pb.ts";
import { BatchService, CreateBatchRequestSchema } from "../../gen/lote/v1/batch_service_pb.ts";
import { sendAsIs } from "./timing.ts";
import { wallMs } from "./clocks.ts";

export type BatchClient = Client<typeof BatchService>;

export function batchClient(baseUrl: string): BatchClient {
  // 512 MiB both ways: a 1,000,000-request CreateBatch is ~130 MB, above connect-node's defaults.
  return createClient(BatchService, createGrpcTransport({ baseUrl, readMaxBytes: 2 ** 29, writeMaxBytes: 2 ** 29 }));
}

/** A CreateBatch request encoded once, so the timed part is the server's work and the wire, not our encoding. */
export function encodedBatch(bodies: readonly string[], priority = 0) {
  const bytes = toBinary(CreateBatchRequestSchema, create(CreateBatchRequestSchema, {
    endpoint: Endpoint.CHAT_COMPLETIONS,
    priority,
    requests: bodies.map((body, i) => ({ customId: `req-${i}`, bodyJson: Buffer.from(body) })),
  }));
  return { request: sendAsIs(CreateBatchRequestSchema, bytes), megabytes: bytes.length / 1e6 };
}

export interface BatchRun {
  readonly id: string;
  /** wallMs() when CreateBatch was called and when it answered. */
  readonly submittedAt: number;
  readonly acceptedAt: number;
  readonly firstResultAt: number;
  readonly lastResultAt: number;
  readonly completedAt: number;
  readonly completed: number;
  readonly failed: number;
}

/** Submits, then polls GetBatch (4 times a second: negligible load) until the batch is terminal. */
export async function runBatch(client: BatchClient, pool: pg.Pool, request: ReturnType<typeof encodedBatch>["request"], timeoutMs: number, afterAccept?: () => Promise<void>): Promise<BatchRun> {
  const submittedAt = wallMs();
  const { id } = await client.createBatch(request);
  const acceptedAt = wallMs();
  await afterAccept?.();
  const until = Date.now() + timeoutMs;
  for (;;) {
    const b = await client.getBatch({ id });
    if (b.status === BatchStatus.COMPLETED) {
      const { rows } = await pool.query<{ first: number; last: number }>(
        `SELECT extract(epoch FROM min(created_at)) * 1000 AS first, extract(epoch FROM max(created_at)) * 1000 AS last
           FROM lote.results WHERE batch_id = $1`, [id]);
      return {
        id, submittedAt, acceptedAt,
        firstResultAt: Number(rows[0]!.first), lastResultAt: Number(rows[0]!.last),
        completedAt: timestampMs(b.completedAt!),
        completed: Number(b.requestCounts?.completed ?? 0n), failed: Number(b.requestCounts?.failed ?? 0n),
      };
    }
    if (b.status !== BatchStatus.IN_PROGRESS && b.status !== BatchStatus.FINALIZING && b.status !== BatchStatus.VALIDATING) {
      throw new Error(`batch ${id} ended ${BatchStatus[b.status]}`);
    }
    if (Date.now() > until) throw new Error(`batch ${id} not completed within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
