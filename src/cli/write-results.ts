/**
 * `lote results`: StreamResults into OpenAI-format JSONL. Results are written as they arrive and the next one is not
 * read until the file has taken the last (await 'drain'), so HTTP/2 flow control holds the server back and a
 * 1,000,000-result batch never sits in memory. A dropped stream resumes after the last cursor written: no gap, no
 * duplicate.
 */
import { once } from "node:events";
import type { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { Batch } from "../../gen/lote/v1/batch_pb.ts";
import { ResultFilter } from "../../gen/lote/v1/batch_service_pb.ts";
import type { BatchClient } from "./batch-client.ts";
import { CliError, ExitCode, grpcCodeName } from "./exit-codes.ts";
import { isTerminalStatus } from "./format-batch.ts";
import { outputLine } from "./output-line.ts";
import { backoffMs, resumable, retryCall, type ResumeOptions } from "./resumable-stream.ts";
import { retryChain } from "./retry-chain.ts";

export interface WriteResultsOptions {
  readonly batchId: string;
  /** Successful results, and failed ones too when `errors` is not given. */
  readonly out: Writable;
  /** Failed results (OpenAI's error file). */
  readonly errors?: Writable;
  /** Keep the stream open and write results as they complete until the batch is terminal. */
  readonly follow?: boolean;
  /** Also take results from the batches this one retried (and that retried it): the final result per custom_id. */
  readonly chain?: boolean;
  /** Reconnection notices. Default process.stderr. */
  readonly log?: Writable;
  /**
   * The caller has reached the server already (it read the batch): the first read here is retried like the
   * stream, so an outage that begins between the two does not end the command.
   */
  readonly reachable?: boolean;
  readonly signal?: AbortSignal;
}

export interface WriteResultsSummary {
  readonly succeeded: number;
  readonly failed: number;
  /** Newest first: the batches results were taken from. */
  readonly batches: readonly string[];
}

// A follow stream that ends cleanly before the batch is terminal (a proxy closing it) is reopened at most this many
// times in a row.
const maxCleanEnds = 6;

/** A batch read, retried through an outage once the server is known to be reachable. */
function readBatch(client: BatchClient, id: string, options: WriteResultsOptions, reachable: boolean): Promise<Batch> {
  const log = options.log ?? process.stderr;
  const retry: ResumeOptions = {
    reachable,
    onRetry: (e, attempt, delay) => log.write(`lote: reading batch ${id} failed (${grpcCodeName(e.code)}: ${e.rawMessage}); retrying in ${(delay / 1000).toFixed(1)}s (attempt ${attempt})\n`),
  };
  return retryCall(() => client.getBatch({ id }, { signal: options.signal }), retry);
}

export async function writeResults(client: BatchClient, options: WriteResultsOptions): Promise<WriteResultsSummary> {
  // A unary call first: a wrong id or a dead server is reported at once, and the stream below may retry freely.
  const batch = await readBatch(client, options.batchId, options, options.reachable ?? false);
  // With a chain, the newest batch holds the latest attempt of every request it re-ran: all of its results count.
  // Each older batch had all its unsuccessful requests re-run by the next one, so only its successes are final.
  const batches: Batch[] = options.chain ? await retryChain(client, batch, options.signal) : [batch];
  const counts = { succeeded: 0, failed: 0 };
  for (const [i, b] of batches.entries()) {
    const filter = i === 0 ? ResultFilter.UNSPECIFIED : ResultFilter.SUCCEEDED;
    await streamBatch(client, b.id, filter, i === 0 && (options.follow ?? false), options, counts);
  }
  return { ...counts, batches: batches.map((b) => b.id) };
}

async function streamBatch(client: BatchClient, batchId: string, filter: ResultFilter, follow: boolean,
  options: WriteResultsOptions, counts: { succeeded: number; failed: number }): Promise<void> {
  const log = options.log ?? process.stderr;
  let after = "";
  /** Streams from `after` on; returns how many results it wrote. */
  const pass = async (followThis: boolean): Promise<number> => {
    let n = 0;
    const results = resumable(
      () => client.streamResults({ batchId, after, follow: followThis, rawJson: true, filter }, { signal: options.signal }),
      {
        reachable: true,
        onRetry: (e, attempt, delay) => log.write(`lote: results stream dropped (${grpcCodeName(e.code)}: ${e.rawMessage}); resuming in ${(delay / 1000).toFixed(1)}s (attempt ${attempt})\n`),
      },
    );
    for await (const { result } of results) {
      if (!result) continue;
      const target = result.response ? options.out : (options.errors ?? options.out);
      if (result.response) counts.succeeded++;
      else counts.failed++;
      if (!target.write(outputLine(result))) await once(target, "drain");
      after = result.cursor;
      n++;
    }
    return n;
  };
  if (!follow) {
    await pass(false);
    return;
  }
  for (let cleanEnds = 0; ; ) {
    if ((await pass(true)) > 0) cleanEnds = 0;
    const now = await readBatch(client, batchId, options, true);
    if (isTerminalStatus(now.status)) {
      // The server ends a follow stream only once every result is sent; if it was cut short some other way, this
      // read from the last cursor collects the rest (and is empty otherwise).
      await pass(false);
      return;
    }
    if (++cleanEnds > maxCleanEnds) throw new CliError(`StreamResults kept ending before batch ${batchId} was done`, ExitCode.Unavailable);
    await sleep(backoffMs(cleanEnds));
  }
}
