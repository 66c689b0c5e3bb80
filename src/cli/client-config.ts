/**
 * Where the client commands connect and how they authenticate: the one place that reads the client's environment.
 *
 * | setting  | flag        | env           | default                  |
 * |----------|-------------|---------------|--------------------------|
 * | server   | --server    | LOTE_SERVER   | http://127.0.0.1:50051   |
 * | API key  | (none)      | LOTE_API_KEY  | none: no authorization   |
 * | CA file  | --ca        | LOTE_CA       | the system's CAs (https) |
 *
 * The key has no flag on purpose: flags end up in shell history and `ps` output.
 */
import { readFileSync } from "node:fs";
import { CliError, ExitCode } from "./exit-codes.ts";

export const defaultServer = "http://127.0.0.1:50051";

export interface ClientConfig {
  /** http://host:port (h2c) or https://host:port (TLS). */
  readonly baseUrl: string;
  /** Sent as `authorization: Bearer <apiKey>`. Never printed. */
  readonly apiKey: string | undefined;
  /** PEM bundle trusted for the server's certificate, for servers signed by a private CA. */
  readonly caPem: string | undefined;
}

export interface ClientFlags {
  readonly server?: string;
  readonly ca?: string;
}

export function readClientConfig(flags: ClientFlags, env: NodeJS.ProcessEnv = process.env): ClientConfig {
  const caFile = flags.ca ?? (env.LOTE_CA || undefined);
  const given = flags.server ?? (env.LOTE_SERVER || undefined) ?? defaultServer;
  const source = flags.server !== undefined ? "--server" : env.LOTE_SERVER ? "LOTE_SERVER" : "the default server";
  // A bare host:port is accepted; it means TLS when a CA was given, since a CA makes no sense in cleartext.
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(given) ? given : `${caFile ? "https" : "http"}://${given}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new CliError(`expected ${source} to be an address like http://127.0.0.1:50051, got ${JSON.stringify(given)}`, ExitCode.Usage);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CliError(`expected ${source} to use http:// (h2c) or https:// (TLS), got ${JSON.stringify(given)}`, ExitCode.Usage);
  }
  if (caFile && url.protocol !== "https:") {
    throw new CliError(`--ca needs a TLS server address (https://...), got ${JSON.stringify(given)}`, ExitCode.Usage);
  }
  let caPem: string | undefined;
  if (caFile) {
    try {
      caPem = readFileSync(caFile, "utf8");
    } catch (err) {
      throw new CliError(`cannot read CA file ${caFile}: ${(err as Error).message}`, ExitCode.Usage);
    }
  }
  return { baseUrl: url.origin, apiKey: env.LOTE_API_KEY || undefined, caPem };
}
