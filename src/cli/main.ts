/** `lote`: one command for the server roles and the client. Exit codes are listed in src/cli/exit-codes.ts. */
import { Command } from "commander";
import { registerClientCommands } from "./register-client-commands.ts";
import { registerServerCommands } from "./server-commands.ts";

const program = new Command()
  .name("lote")
  .description("Self-hosted gRPC batch inference: the OpenAI Batch API inside your own infrastructure.")
  .showHelpAfterError();

registerServerCommands(program);
registerClientCommands(program);

await program.parseAsync(process.argv);
