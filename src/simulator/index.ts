/** The simulated OpenAI-compatible backend: tests, demos and benchmarks run lote against it. */
export { startSimulator, type Simulator } from "./start-simulator.ts";
export { runSimulatorCli, SimulatorCliError } from "./simulator-cli.ts";
export { parseLatency, type LatencyDistribution, type SimulatorBehaviour, type SimulatorOptions } from "./simulator-options.ts";
export type { SimulatorStats } from "./simulator-stats.ts";
export type { SimDirectives } from "./sim-directives.ts";
