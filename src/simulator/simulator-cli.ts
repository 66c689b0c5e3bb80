import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parseLatency, type SimulatorOptions } from "./simulator-options.ts";
import { startSimulator, type Simulator } from "./start-simulator.ts";

const usage = `usage: simulate [--port 8100] [--host 127.0.0.1] [--latency fixed:MS|uniform:MIN:MAX|lognormal:P50:P99]
  [--error-rate F] [--rate-limit-rate F] [--retry-after SECONDS] [--reset-rate F] [--hang-rate F]
  [--api-key-env NAME] [--seed N] [--tls-cert FILE --tls-key FILE]`;

/**
 * A `simulate` failure that is one line and an exit code, not a stack trace: a bad flag or value (2), or an address
 * it cannot listen on or a TLS file it cannot read (1).
 */
export class SimulatorCliError extends Error {
  override readonly name = "SimulatorCliError";
  constructor(message: string, readonly exitCode: 1 | 2, options?: ErrorOptions) {
    super(message, options);
  }
}

// Node's listen errors a command line causes, and what each means to whoever typed it.
const listenProblems: Record<string, string> = {
  EADDRINUSE: "the address is already in use (another simulator, or another program, listens there)",
  EACCES: "permission denied (ports below 1024 need privileges)",
  EADDRNOTAVAIL: "no interface of this machine has that address",
};

/**
 * The one line for a failure to start: parseArgs, the flag checks here and startSimulator's option checks throw
 * TypeError or RangeError (a bad value: 2); listen and the TLS files' reads throw system errors (1).
 */
function cliFailure(err: unknown, host: string, port: string): unknown {
  const e = err as NodeJS.ErrnoException;
  const problem = listenProblems[e?.code ?? ""];
  if (problem && e.syscall === "listen") {
    const address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    return new SimulatorCliError(`cannot listen on ${address}: ${problem}; choose another with --port or --host`, 1, { cause: err });
  }
  if (e?.syscall === "open") return new SimulatorCliError(`cannot read ${e.path}: ${e.code}`, 1, { cause: err });
  if (err instanceof TypeError || err instanceof RangeError) return new SimulatorCliError(err.message, 2, { cause: err });
  return err;
}

function number(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n)) throw new TypeError(`Expected \`--${flag}\` to be a number, got ${JSON.stringify(text)}`);
  return n;
}

/** The simulator's options from the command line; undefined for --help. */
function simulatorOptions(argv: readonly string[]): { host: string; port: string; options: SimulatorOptions } | undefined {
  const { values: v } = parseArgs({
    args: [...argv],
    strict: true,
    options: {
      port: { type: "string", default: "8100" },
      host: { type: "string", default: "127.0.0.1" },
      latency: { type: "string", default: "fixed:0" },
      "error-rate": { type: "string" },
      "rate-limit-rate": { type: "string" },
      "retry-after": { type: "string" },
      "reset-rate": { type: "string" },
      "hang-rate": { type: "string" },
      // The key is read from the environment, never the command line, where `ps` would show it.
      "api-key-env": { type: "string" },
      seed: { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (v.help) return undefined;
  if ((v["tls-cert"] === undefined) !== (v["tls-key"] === undefined)) {
    throw new TypeError("Expected `--tls-cert` and `--tls-key` together, got only one of them");
  }
  let requireApiKey: string | undefined;
  if (v["api-key-env"] !== undefined) {
    requireApiKey = process.env[v["api-key-env"]];
    if (!requireApiKey) throw new TypeError(`Expected environment variable ${v["api-key-env"]} (--api-key-env) to be set`);
  }
  return {
    host: v.host!,
    port: v.port!,
    options: {
      port: number("port", v.port),
      host: v.host,
      latency: parseLatency(v.latency!),
      errorRate: number("error-rate", v["error-rate"]),
      rateLimitRate: number("rate-limit-rate", v["rate-limit-rate"]),
      retryAfterSeconds: number("retry-after", v["retry-after"]),
      resetRate: number("reset-rate", v["reset-rate"]),
      hangRate: number("hang-rate", v["hang-rate"]),
      seed: number("seed", v.seed),
      requireApiKey,
      tls: v["tls-cert"] ? { cert: readFileSync(v["tls-cert"]), key: readFileSync(v["tls-key"]!) } : undefined,
    },
  };
}

/**
 * Runs the simulator as a process: prints one JSON line `{"listening":"http://127.0.0.1:PORT"}` on stdout when
 * ready, and resolves after a clean shutdown on SIGTERM or SIGINT. Mounted as `lote simulate`. A bad command line
 * or an address it cannot listen on rejects with a SimulatorCliError.
 */
export async function runSimulatorCli(argv: readonly string[]): Promise<void> {
  let address = { host: "127.0.0.1", port: "8100" };
  let sim: Simulator;
  try {
    const parsed = simulatorOptions(argv);
    if (!parsed) {
      process.stdout.write(`${usage}\n`);
      return;
    }
    address = parsed;
    sim = await startSimulator(parsed.options);
  } catch (err) {
    throw cliFailure(err, address.host, address.port);
  }
  process.stdout.write(`${JSON.stringify({ listening: sim.url, h2c: sim.h2cUrl, ...(sim.httpsUrl ? { https: sim.httpsUrl } : {}) })}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off("SIGTERM", stop);
      process.off("SIGINT", stop);
      resolve();
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
  await sim.close();
}
