/**
 * The batches linked to one by RetryBatch, newest first: the retries of it (found by listing batches created after
 * it, since a retry names only its original) and the batches it retried (followed through `retried_from`).
 * When a batch was retried more than once, its newest retry is the one followed.
 */
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Batch } from "../../gen/lote/v1/batch_pb.ts";
import type { BatchClient } from "./batch-client.ts";

// A retry chain is a few batches long; this bounds the walk if the links ever formed a cycle.
const maxChainLength = 1000;

export async function retryChain(client: BatchClient, batch: Batch, signal?: AbortSignal): Promise<Batch[]> {
  const newer = await retriesOf(client, batch, signal);
  const older: Batch[] = [];
  const seen = new Set([batch.id, ...newer.map((b) => b.id)]);
  for (let b = batch; b.retriedFrom && !seen.has(b.retriedFrom) && older.length < maxChainLength; ) {
    b = await client.getBatch({ id: b.retriedFrom }, { signal });
    seen.add(b.id);
    older.push(b);
  }
  return [...newer.reverse(), batch, ...older];
}

/** The chain of retries descending from `batch`, oldest first. */
async function retriesOf(client: BatchClient, batch: Batch, signal?: AbortSignal): Promise<Batch[]> {
  const since = ms(batch.createdAt);
  // Newest retry of each batch, by the id of the batch it retried.
  const newestRetryOf = new Map<string, Batch>();
  let pageToken = "";
  scan: do {
    const page = await client.listBatches({ pageSize: 1000, pageToken }, { signal });
    for (const b of page.batches) {
      // Listed newest first: once past `batch`'s creation, nothing older can be its retry.
      if (ms(b.createdAt) < since) break scan;
      if (b.retriedFrom && !newestRetryOf.has(b.retriedFrom)) newestRetryOf.set(b.retriedFrom, b);
    }
    pageToken = page.nextPageToken;
  } while (pageToken);
  const chain: Batch[] = [];
  for (let next = newestRetryOf.get(batch.id); next && chain.length < maxChainLength; next = newestRetryOf.get(next.id)) chain.push(next);
  return chain;
}

function ms(t: Timestamp | undefined): number {
  return t ? timestampMs(t) : 0;
}
