/**
 * `lote watch` (and `submit --wait`): follows WatchBatch until the batch is terminal. On a terminal a live progress
 * bar; anywhere else (a log file, CI) plain lines, at most one a second, then the final state.
 */
import type { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { Batch } from "../../gen/lote/v1/batch_pb.ts";
import type { BatchClient } from "./batch-client.ts";
import { CliError, ExitCode, grpcCodeName } from "./exit-codes.ts";
import { isTerminalStatus } from "./format-batch.ts";
import { backoffMs, resumable } from "./resumable-stream.ts";
import { PlainLinesView, ProgressBarView, type WatchView } from "./watch-views.ts";

export interface WatchOptions {
  /** Where progress goes; a TTY gets the bar. */
  readonly out: Writable & { isTTY?: boolean };
  /** Where reconnection notices go. Default process.stderr. */
  readonly err?: Writable;
  readonly signal?: AbortSignal;
}

// A stream that ends cleanly before the batch is terminal (a proxy closing it) is reopened at most this many times
// in a row.
const maxCleanEnds = 6;

/** Resolves with the terminal batch. */
export async function watchBatch(client: BatchClient, id: string, options: WatchOptions): Promise<Batch> {
  const err = options.err ?? process.stderr;
  const view: WatchView = options.out.isTTY ? new ProgressBarView(options.out) : new PlainLinesView(options.out);
  const onSigint = () => {
    view.abort();
    process.exit(130); // 128 + SIGINT, as shells report it
  };
  process.once("SIGINT", onSigint);
  let last: Batch | undefined;
  try {
    for (let cleanEnds = 0; ; ) {
      const updates = resumable(() => client.watchBatch({ id }, { signal: options.signal }), {
        reachable: last !== undefined,
        onRetry: (e, attempt, delay) => err.write(`lote: watch stream dropped (${grpcCodeName(e.code)}: ${e.rawMessage}); reconnecting in ${(delay / 1000).toFixed(1)}s (attempt ${attempt})\n`),
      });
      for await (const { batch } of updates) {
        if (!batch) continue;
        last = batch;
        cleanEnds = 0;
        view.update(batch);
      }
      if (last && isTerminalStatus(last.status)) break;
      if (++cleanEnds > maxCleanEnds) throw new CliError(`WatchBatch kept ending before batch ${id} was done`, ExitCode.Unavailable);
      await sleep(backoffMs(cleanEnds));
    }
  } catch (e) {
    view.abort();
    throw e;
  } finally {
    process.removeListener("SIGINT", onSigint);
  }
  // The loop only breaks out holding a terminal batch.
  view.finish(last!);
  return last!;
}
