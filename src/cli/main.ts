/** `lote`: one command for the server roles and the client. Exit codes are listed in src/cli/exit-codes.ts. */
import { Command } from "commander";
import { ExitCode } from "./exit-codes.ts";
import { registerClientCommands } from "./register-client-commands.ts";
import { registerServerCommands } from "./server-commands.ts";

const program = new Command()
  .name("lote")
  .description("Self-hosted gRPC batch inference: the OpenAI Batch API inside your own infrastructure.")
  .showHelpAfterError()
  // A wrong command line (an unknown command or option, a missing required option) exits 2, as README.md says;
  // commander's own code is 1. Set before the commands are added: each one inherits it.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage));

registerServerCommands(program);
registerClientCommands(program);

await program.parseAsync(process.argv);
