import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parseLatency } from "./simulator-options.ts";
import { startSimulator } from "./start-simulator.ts";

const usage = `usage: simulate [--port 8100] [--host 127.0.0.1] [--latency fixed:MS|uniform:MIN:MAX|lognormal:P50:P99]
  [--error-rate F] [--rate-limit-rate F] [--retry-after SECONDS] [--reset-rate F] [--hang-rate F]
  [--api-key-env NAME] [--seed N] [--tls-cert FILE --tls-key FILE]`;

function number(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n)) throw new TypeError(`Expected \`--${flag}\` to be a number, got ${JSON.stringify(text)}`);
  return n;
}

/**
 * Runs the simulator as a process: prints one JSON line `{"listening":"http://127.0.0.1:PORT"}` on stdout when
 * ready, and resolves after a clean shutdown on SIGTERM or SIGINT. Mounted as `lote simulate`.
 */
export async function runSimulatorCli(argv: readonly string[]): Promise<void> {
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
  if (v.help) {
    process.stdout.write(`${usage}\n`);
    return;
  }
  if ((v["tls-cert"] === undefined) !== (v["tls-key"] === undefined)) {
    throw new TypeError("Expected `--tls-cert` and `--tls-key` together, got only one of them");
  }
  let requireApiKey: string | undefined;
  if (v["api-key-env"] !== undefined) {
    requireApiKey = process.env[v["api-key-env"]];
    if (!requireApiKey) throw new TypeError(`Expected environment variable ${v["api-key-env"]} (--api-key-env) to be set`);
  }
  const sim = await startSimulator({
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
  });
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
