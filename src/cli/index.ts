/** The `lote` command line: server roles (server-commands.ts) and the gRPC client commands. */
export { registerClientCommands } from "./register-client-commands.ts";
export { registerServerCommands } from "./server-commands.ts";
export { createBatchClient, type BatchClient } from "./batch-client.ts";
export { readClientConfig, defaultServer, type ClientConfig, type ClientFlags } from "./client-config.ts";
export { CliError, ExitCode, exitCodeOf, grpcCodeName } from "./exit-codes.ts";
export { readBatchFile, endpointOfUrl, type BatchFile } from "./read-batch-file.ts";
export { outputLine } from "./output-line.ts";
export { watchBatch, type WatchOptions } from "./watch-batch.ts";
export { writeResults, type WriteResultsOptions, type WriteResultsSummary } from "./write-results.ts";
