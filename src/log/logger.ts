import pino, { type Logger } from "pino";

/**
 * lote's JSON logger. Secrets are redacted by path as a second line of defence: code never logs bodies or keys at
 * info level in the first place.
 */
export function createLogger(options: { level?: string; name?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      name: options.name ?? "lote",
      level: options.level ?? "info",
      redact: {
        paths: ["authorization", "apiKey", "api_key", "*.authorization", "*.apiKey", "*.api_key", "headers.authorization", "req.headers.authorization", "password", "*.password", "databaseUrl"],
        censor: "[redacted]",
      },
      base: { pid: process.pid },
    },
    options.destination ?? pino.destination({ dest: 2, sync: false }),
  );
}

export type { Logger };
