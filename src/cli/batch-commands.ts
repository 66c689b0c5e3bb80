/** The commands that send requests: submit, run, estimate (from an input file) and retry. */
import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { BatchStatus, type Batch } from "../../gen/lote/v1/batch_pb.ts";
import { EstimateBatchResponseSchema } from "../../gen/lote/v1/batch_service_pb.ts";
import { clientAction, clientCommand, type Session } from "./client-command.ts";
import { ExitCode } from "./exit-codes.ts";
import { batchJson } from "./format-batch.ts";
import { outputLine } from "./output-line.ts";
import { collectPair, integerIn, parseDuration } from "./parse-options.ts";
import { readBatchFile } from "./read-batch-file.ts";
import { watchBatch } from "./watch-batch.ts";

// RunBatch is for small batches answered in the call; a minute covers them, and the server answers whatever is
// unfinished as deadline_exceeded errors shortly before the deadline instead of failing the whole call.
const defaultRunTimeout = "60s";

function duration(seconds: number) {
  const whole = Math.floor(seconds);
  return { seconds: BigInt(whole), nanos: Math.round((seconds - whole) * 1e9) };
}

async function readFile(session: Session, path: string) {
  const file = await readBatchFile(path);
  session.errorContext.file = { path, lineOf: file.lineOf };
  return file;
}

/** Prints the batch (id, or JSON), then with --wait watches it on stderr: exit 0 only if it COMPLETED. */
async function printAndMaybeWait(session: Session, batch: Batch, opts: { json?: boolean; wait?: boolean }): Promise<ExitCode> {
  if (!opts.wait) {
    process.stdout.write(opts.json ? `${batchJson(batch)}\n` : `${batch.id}\n`);
    return ExitCode.Ok;
  }
  // Progress goes to stderr so that ID=$(lote submit --wait f.jsonl) still captures just the id.
  if (!opts.json) process.stdout.write(`${batch.id}\n`);
  const final = await watchBatch(session.client, batch.id, { out: process.stderr });
  if (opts.json) process.stdout.write(`${batchJson(final)}\n`);
  return final.status === BatchStatus.COMPLETED ? ExitCode.Ok : ExitCode.BatchNotDone;
}

interface SubmitOptions { window?: number; metadata?: Record<string, string>; requestId?: string; priority?: number; wait?: boolean; json?: boolean }

export function registerBatchCommands(program: Command): void {
  clientCommand(program, "submit <file>", "submit an OpenAI batch input file (.jsonl); prints the batch id")
    .option("--window <duration>", "completion window, 1m to 7d, e.g. 24h (default 24h)", parseDuration)
    .option("--metadata <key=value>", "metadata pair (repeatable)", collectPair)
    .option("--request-id <id>", "idempotency key: resubmitting the same file with the same id returns the first batch (another file is refused)")
    .option("--priority <n>", "-100 to 100; higher runs first (default 0)", integerIn(-100, 100))
    .option("--wait", "watch the batch until it ends; exit 3 unless it COMPLETED")
    .option("--json", "print the whole batch as JSON instead of its id")
    .action(clientAction<SubmitOptions>(async (session, [path], opts) => {
      const file = await readFile(session, path!);
      const batch = await session.client.createBatch({
        endpoint: file.endpoint,
        requests: file.requests,
        completionWindow: opts.window === undefined ? undefined : duration(opts.window),
        metadata: opts.metadata ?? {},
        requestId: opts.requestId ?? "",
        priority: opts.priority ?? 0,
      });
      return printAndMaybeWait(session, batch, opts);
    }));

  clientCommand(program, "retry <id>", "re-run the failed, expired and cancelled requests of an ended batch; prints the new batch id")
    .option("--window <duration>", "completion window of the new batch (default: the original's)", parseDuration)
    .option("--request-id <id>", "idempotency key")
    .option("--wait", "watch the new batch until it ends; exit 3 unless it COMPLETED")
    .option("--json", "print the whole batch as JSON instead of its id")
    .action(clientAction<SubmitOptions>(async (session, [id], opts) => {
      const batch = await session.client.retryBatch({
        id: id!,
        requestId: opts.requestId ?? "",
        completionWindow: opts.window === undefined ? undefined : duration(opts.window),
      });
      return printAndMaybeWait(session, batch, opts);
    }));

  clientCommand(program, "estimate <file>", "estimate the tokens and cost of a batch input file without running it")
    .option("--json", "print the estimate as JSON")
    .action(clientAction<{ json?: boolean }>(async (session, [path], opts) => {
      const file = await readFile(session, path!);
      const e = await session.client.estimateBatch({ endpoint: file.endpoint, requests: file.requests });
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(toJson(EstimateBatchResponseSchema, e))}\n`);
        return;
      }
      const cost = e.priced ? `$${e.estimatedCostUsd.toFixed(4)}` : `unknown (no prices configured for ${e.model})`;
      process.stdout.write([
        `model:          ${e.model}`,
        `requests:       ${e.requests.length}`,
        `input tokens:   ${e.totalInputTokens}`,
        `output tokens:  ${e.totalOutputTokens} (upper bound)`,
        `total tokens:   ${e.totalInputTokens + e.totalOutputTokens}`,
        `estimated cost: ${cost}`,
      ].join("\n") + "\n");
    }));

  clientCommand(program, "run <file>", "run a small batch synchronously and print its output lines (OpenAI output format)")
    .option("--timeout <duration>", `call deadline; unfinished requests come back as deadline_exceeded errors (default ${defaultRunTimeout})`, parseDuration)
    .option("--metadata <key=value>", "metadata pair (repeatable)", collectPair)
    .action(clientAction<{ timeout?: number; metadata?: Record<string, string> }>(async (session, [path], opts) => {
      const file = await readFile(session, path!);
      const timeoutMs = Math.round((opts.timeout ?? parseDuration(defaultRunTimeout)) * 1000);
      const res = await session.client.runBatch(
        { endpoint: file.endpoint, requests: file.requests, metadata: opts.metadata ?? {}, rawJson: true },
        { timeoutMs },
      );
      for (const r of res.results) {
        if (!process.stdout.write(outputLine(r))) await new Promise((resolve) => process.stdout.once("drain", resolve));
      }
    }));
}
