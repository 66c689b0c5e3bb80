/**
 * Submit-to-first-call latency: one single-request CreateBatch at a time, timed from just before the RPC to the
 * moment the simulator sees the call (both monoMs(), so the figure covers gRPC, validation, the insert
 * transaction, the NOTIFY, the LISTEN wake-up, the claim and the HTTP/2 send).
 */
import { create, toBinary } from "@bufbuild/protobuf";
import pg from "pg";
import { Endpoint } from "../../gen/lote/v1/batch_pb.ts";
import { CreateBatchRequestSchema } from "../../gen/lote/v1/batch_service_pb.ts";
import type { BatchClient } from "./lote-batches.ts";
import type { SimulatorProcess } from "./simulator-process.ts";
import { sendAsIs } from "./timing.ts";
import { monoMs } from "./clocks.ts";

export interface LatencyFigures {
  /** Submit to first backend call, ms. */
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  /** Submit to CreateBatch's answer, ms (the call usually starts before the client has its answer). */
  readonly acceptedP50: number;
  /**
   * The dispatch part alone: the batch's `lote_work` notification, as a listener of our own receives it (so at
   * about the moment lote's listener does), to the call at the simulator. p50 and p99, ms.
   */
  readonly notifyToCallP50: number;
  readonly notifyToCallP99: number;
}

export function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export async function submitLatency(client: BatchClient, sim: SimulatorProcess, databaseUrl: string, model: string, samples: number): Promise<LatencyFigures> {
  const listener = new pg.Client({ connectionString: databaseUrl });
  await listener.connect();
  await listener.query("LISTEN lote_work");
  let notified: (at: number) => void = () => {};
  listener.on("notification", () => notified(monoMs()));
  const body = Buffer.from(JSON.stringify({ model, messages: [{ role: "user", content: "How long until you see me?" }], max_tokens: 16 }));
  const request = sendAsIs(CreateBatchRequestSchema, toBinary(CreateBatchRequestSchema, create(CreateBatchRequestSchema, {
    endpoint: Endpoint.CHAT_COMPLETIONS, requests: [{ customId: "probe", bodyJson: body }],
  })));
  const toCall: number[] = [];
  const toAnswer: number[] = [];
  const notifyToCall: number[] = [];
  for (let i = 0; i < samples; i++) {
    const { arrival } = await sim.armArrival();
    const notification = new Promise<number>((resolve) => (notified = resolve));
    const submittedAt = monoMs();
    const created = client.createBatch(request).then(() => monoMs());
    const calledAt = await arrival;
    toCall.push(calledAt - submittedAt);
    toAnswer.push((await created) - submittedAt);
    notifyToCall.push(calledAt - (await notification));
    // Let the completion of this one be written before the next: an idle node is what is measured.
    await new Promise((r) => setTimeout(r, 20));
  }
  await listener.end();
  const sorted = toCall.sort((a, b) => a - b);
  const dispatch = notifyToCall.sort((a, b) => a - b);
  return {
    p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1]!,
    acceptedP50: percentile(toAnswer.sort((a, b) => a - b), 50),
    notifyToCallP50: percentile(dispatch, 50), notifyToCallP99: percentile(dispatch, 99),
  };
}
