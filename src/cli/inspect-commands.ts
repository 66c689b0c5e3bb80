/** The commands about existing batches: status, list, cancel, watch, results. */
import { createWriteStream, statSync, type WriteStream } from "node:fs";
import { finished } from "node:stream/promises";
import type { Command } from "commander";
import { BatchStatus, type Batch } from "../../gen/lote/v1/batch_pb.ts";
import { clientAction, clientCommand } from "./client-command.ts";
import { CliError, ExitCode } from "./exit-codes.ts";
import { batchJson, formatBatchSummary, formatBatchTable } from "./format-batch.ts";
import { collectPair, integerIn, parseStatus, statusName } from "./parse-options.ts";
import { watchBatch } from "./watch-batch.ts";
import { writeResults } from "./write-results.ts";

// The server's page size cap (ListBatchesRequest.page_size): larger values are treated as 1000.
const maxPageSize = 1000;

interface ListOptions { status?: BatchStatus; metadata?: Record<string, string>; limit: number; json?: boolean }
interface ResultsOptions { output?: string; errors?: string; follow?: boolean; chain?: boolean }

export function registerInspectCommands(program: Command): void {
  clientCommand(program, "status <id>", "show a batch")
    .option("--json", "print the batch as JSON")
    .action(clientAction<{ json?: boolean }>(async (session, [id], opts) => {
      const batch = await session.client.getBatch({ id: id! });
      process.stdout.write(`${opts.json ? batchJson(batch) : formatBatchSummary(batch)}\n`);
    }));

  clientCommand(program, "list", "list batches, newest first")
    .option("--status <status>", "only batches in this status (validating, in_progress, completed, ...)", parseStatus)
    .option("--metadata <key=value>", "only batches with this metadata pair", collectPair)
    .option("--limit <n>", "at most this many batches; 0 for all", integerIn(0, Number.MAX_SAFE_INTEGER), 50)
    .option("--json", "print a JSON array of batches")
    .action(clientAction<ListOptions>(async (session, _args, opts) => {
      const pairs = Object.entries(opts.metadata ?? {});
      if (pairs.length > 1) {
        throw new CliError(`expected at most one --metadata filter (the server filters on one pair), got ${pairs.length}`, ExitCode.Usage);
      }
      const [metadataKey = "", metadataValue = ""] = pairs[0] ?? [];
      const batches: Batch[] = [];
      let pageToken = "";
      do {
        const want = opts.limit === 0 ? maxPageSize : Math.min(maxPageSize, opts.limit - batches.length);
        const page = await session.client.listBatches({
          pageSize: want, pageToken, status: opts.status ?? BatchStatus.UNSPECIFIED, metadataKey, metadataValue,
        });
        batches.push(...page.batches.slice(0, want));
        pageToken = page.nextPageToken;
      } while (pageToken && (opts.limit === 0 || batches.length < opts.limit));
      if (opts.json) process.stdout.write(`[${batches.map(batchJson).join(",")}]\n`);
      else process.stdout.write(batches.length > 0 ? `${formatBatchTable(batches)}\n` : "no batches\n");
    }));

  clientCommand(program, "cancel <id>", "cancel a batch: pending requests at once, running ones aborted")
    .option("--json", "print the batch as JSON")
    .action(clientAction<{ json?: boolean }>(async (session, [id], opts) => {
      const batch = await session.client.cancelBatch({ id: id! });
      process.stdout.write(opts.json ? `${batchJson(batch)}\n` : `${batch.id} ${statusName(batch.status)}\n`);
    }));

  clientCommand(program, "watch <id>", "follow a batch until it ends; exit 0 if it COMPLETED, 3 otherwise")
    .action(clientAction(async (session, [id]) => {
      const final = await watchBatch(session.client, id!, { out: process.stdout });
      return final.status === BatchStatus.COMPLETED ? ExitCode.Ok : ExitCode.BatchNotDone;
    }));

  clientCommand(program, "results <id>", "write a batch's results as OpenAI output-file JSONL")
    .option("-o, --output <file>", "output file (default stdout)")
    .option("--errors <file>", "write failed results here (OpenAI's error file) instead of with the rest")
    .option("--follow", "keep writing results as they complete until the batch ends")
    .option("--chain", "also take results from linked retry batches: one final result per custom_id")
    .action(clientAction<ResultsOptions>(async (session, [id], opts) => {
      // The batch is looked up before any file is opened: opening truncates, and a wrong id or an unreachable server
      // must leave the previous download as it was. (Not a temp file renamed at the end: with --follow the file is
      // read while it grows.)
      if (opts.output || opts.errors) await session.client.getBatch({ id: id! });
      const out = opts.output ? await openOutput(opts.output) : process.stdout;
      // --errors naming the file -o writes (its path, a link to it): both kinds of result go through the one stream.
      // Two streams on one file each wrote from offset 0, over each other: of a batch's 2,000 results 1,670 lines
      // were left, one of them garbled, after "wrote 2000 results".
      const errors = !opts.errors ? undefined : opts.output && isSameFile(opts.output, opts.errors) ? out : await openOutput(opts.errors);
      try {
        const summary = await writeResults(session.client, {
          batchId: id!, out, errors, follow: opts.follow, chain: opts.chain, reachable: Boolean(opts.output || opts.errors),
        });
        if (opts.output) {
          const from = summary.batches.length > 1 ? ` from ${summary.batches.length} batches` : "";
          process.stderr.write(`wrote ${summary.succeeded + summary.failed} results${from} (${summary.succeeded} succeeded, ${summary.failed} failed)\n`);
        }
      } finally {
        await Promise.all([...new Set([out, errors])].map((s) => (s && s !== process.stdout ? close(s as WriteStream) : undefined)));
      }
    }));
}

async function openOutput(path: string): Promise<WriteStream> {
  const stream = createWriteStream(path);
  try {
    await new Promise<void>((resolve, reject) => {
      stream.once("open", () => resolve());
      stream.once("error", reject);
    });
  } catch (err) {
    throw new CliError(`cannot write ${path}: ${(err as Error).message}`, ExitCode.Failure);
  }
  return stream;
}

/** Whether two paths name one file (after `a` was opened, so it exists): same device and inode. */
function isSameFile(a: string, b: string): boolean {
  try {
    const [sa, sb] = [statSync(a), statSync(b)];
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false; // `b` does not exist yet: another file
  }
}

async function close(stream: WriteStream): Promise<void> {
  stream.end();
  await finished(stream);
}
