/**
 * What every client command shares: the --server/--ca flags, usage errors as one `lote: ...` line with exit 2, and
 * an action wrapper that builds the client, turns any failure into the documented exit code (exit-codes.ts) and
 * exits only once stdout has taken everything written to it.
 */
import type { Command } from "commander";
import { createBatchClient, type BatchClient } from "./batch-client.ts";
import { readClientConfig, type ClientConfig, type ClientFlags } from "./client-config.ts";
import { errorReport, type ErrorContext } from "./error-report.ts";
import { ExitCode } from "./exit-codes.ts";

export interface Session {
  readonly client: BatchClient;
  readonly config: ClientConfig;
  /** Filled in by commands that read an input file, so server errors can name its lines. */
  readonly errorContext: { file?: ErrorContext["file"] };
}

const helpFooter = `
Environment: LOTE_SERVER (server address), LOTE_API_KEY (sent as a bearer token), LOTE_CA (CA file).
Exit codes: 0 ok, 1 error, 2 usage, 3 batch ended not COMPLETED (watch, --wait), 65 invalid input file,
69 server unreachable, 77 missing or refused API key.`;

/** A subcommand of `program` with the connection flags and the client's usage-error behaviour. */
export function clientCommand(program: Command, nameAndArgs: string, description: string): Command {
  return program.command(nameAndArgs).description(description)
    .option("--server <url>", "server address, http:// (h2c) or https:// (TLS) (env LOTE_SERVER, default http://127.0.0.1:50051)")
    .option("--ca <file>", "PEM CA certificate(s) to trust for a TLS server with a private CA (env LOTE_CA)")
    .addHelpText("after", helpFooter)
    .showHelpAfterError(false)
    .configureOutput({ outputError: (text, write) => write(`lote: ${text.replace(/^error: /, "")}`) })
    .exitOverride((err) => process.exit(err.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage));
}

/**
 * Wraps a command body for commander's .action(): the body gets the session, its positional arguments and options,
 * and returns the exit code (default 0).
 */
export function clientAction<O extends object>(body: (session: Session, args: string[], opts: O & ClientFlags) => Promise<ExitCode | void>) {
  return async (...params: unknown[]): Promise<void> => {
    const command = params.at(-1) as Command;
    const opts = command.opts() as O & ClientFlags;
    const args = command.processedArgs.filter((a): a is string => typeof a === "string");
    // `lote results ID | head`: the reader leaving is not an error.
    process.stdout.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EPIPE") process.exit(ExitCode.Ok);
    });
    let context: ErrorContext = {};
    let code: ExitCode;
    try {
      const config = readClientConfig(opts);
      const session: Session = { client: createBatchClient(config), config, errorContext: {} };
      context = { server: config.baseUrl, hasApiKey: config.apiKey !== undefined };
      try {
        code = (await body(session, args, opts)) ?? ExitCode.Ok;
      } finally {
        context = { ...context, ...session.errorContext };
      }
    } catch (err) {
      const report = errorReport(err, context);
      process.stderr.write(`${report.lines.join("\n")}\n`);
      code = report.exitCode;
    }
    await flush(process.stdout);
    process.exit(code);
  };
}

/** Resolves once everything written so far has been handed to the OS (process.exit would drop a queued pipe write). */
function flush(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroyed || stream.writableEnded) return resolve();
    stream.write("", () => resolve());
  });
}
