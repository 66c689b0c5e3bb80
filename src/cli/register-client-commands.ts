/** The client half of `lote`: every command that talks to a lote server over gRPC. */
import type { Command } from "commander";
import { registerBatchCommands } from "./batch-commands.ts";
import { registerInspectCommands } from "./inspect-commands.ts";

/** Adds submit, status, list, cancel, watch, results, retry, estimate and run to `program`. */
export function registerClientCommands(program: Command): void {
  registerBatchCommands(program);
  registerInspectCommands(program);
}
