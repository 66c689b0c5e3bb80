/**
 * Standalone entry: `node --import tsx src/simulator/main.ts --port 8100 --latency lognormal:20:200`.
 * Exits 0 after SIGTERM/SIGINT, 2 on bad arguments, 1 when it cannot listen.
 */
import { runSimulatorCli, SimulatorCliError } from "./simulator-cli.ts";

try {
  await runSimulatorCli(process.argv.slice(2));
  process.exit(0);
} catch (err) {
  process.stderr.write(`simulate: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(err instanceof SimulatorCliError ? err.exitCode : 2);
}
