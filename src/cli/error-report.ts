/**
 * Turns whatever a client command threw into what the user sees: detail lines (one per problem, `file:line: ...`
 * when they are about the input file), then one `lote: <what happened>` line naming the gRPC code, and the exit code.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { maxViolations } from "../batch/validate-requests.ts";
import { CliError, ExitCode, exitCodeOf, grpcCodeName } from "./exit-codes.ts";

export interface ErrorContext {
  /** The server address, named when it cannot be reached. */
  readonly server?: string;
  /** Whether an API key was configured, to hint at LOTE_API_KEY when the server wants one. */
  readonly hasApiKey?: boolean;
  /** The input file the request was built from, to map `requests[i]` back to its line. */
  readonly file?: { readonly path: string; readonly lineOf: readonly number[] };
}

export interface ErrorReport {
  readonly lines: string[];
  readonly exitCode: ExitCode;
}

export function errorReport(err: unknown, context: ErrorContext = {}): ErrorReport {
  if (err instanceof CliError) return { lines: [...err.detailLines, `lote: ${err.message}`], exitCode: err.exitCode };
  if (!(err instanceof ConnectError)) return { lines: [`lote: ${err instanceof Error ? err.message : String(err)}`], exitCode: ExitCode.Failure };
  const tls = tlsFailure(err);
  if (tls) {
    return { lines: [`lote: cannot reach ${context.server ?? "the server"}: TLS: ${tls} (trust the CA that signed its certificate with --ca FILE)`], exitCode: ExitCode.Unavailable };
  }
  const code = grpcCodeName(err.code);
  switch (err.code) {
    case Code.InvalidArgument:
      return invalidArgumentReport(err, context);
    case Code.Unavailable:
      // Answered by the server (its headers came back: its database is down, or it is draining), or no answer at all.
      if ([...err.metadata.keys()].length > 0) {
        return { lines: [`lote: ${context.server ?? "the server"} is unavailable: ${code}: ${err.rawMessage} (try again later)`], exitCode: ExitCode.Unavailable };
      }
      return { lines: [`lote: cannot reach ${context.server ?? "the server"}: ${code}: ${err.rawMessage}`], exitCode: ExitCode.Unavailable };
    case Code.Unauthenticated: {
      const hint = context.hasApiKey ? " (check LOTE_API_KEY)" : " (set LOTE_API_KEY)";
      return { lines: [`lote: ${code}: ${err.rawMessage}${hint}`], exitCode: ExitCode.NoPermission };
    }
    default:
      return { lines: [`lote: ${code}: ${err.rawMessage}`], exitCode: exitCodeOf(err) };
  }
}

// Node's codes for a certificate that does not verify (OpenSSL's X509_V_ERR_* names, and the host name check).
const certificateCodes = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|ERR_TLS_CERT_ALTNAME_INVALID/;

/** The reason, when the call failed because the server's certificate was not trusted (connect-node says INTERNAL). */
function tlsFailure(err: ConnectError): string | undefined {
  for (let cause: unknown = err.cause, depth = 0; cause instanceof Error && depth < 8; cause = cause.cause, depth++) {
    const code = (cause as NodeJS.ErrnoException).code;
    // Node's own advice (--use-system-ca) is about Node, not about lote.
    if (typeof code === "string" && certificateCodes.test(code)) return cause.message.replace(/; if the root CA is installed locally.*$/, "");
  }
  return undefined;
}

const requestField = /^requests\[(\d+)\](?:\.(.*))?$/;

/**
 * INVALID_ARGUMENT carries google.rpc.BadRequest: one line per field violation. Violations about requests (and the
 * endpoint, which came from the file's `url`) make it a data error (65); the rest are about flags (2).
 */
function invalidArgumentReport(err: ConnectError, context: ErrorContext): ErrorReport {
  const violations = err.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations);
  const lines: string[] = [];
  let aboutData = false;
  for (const v of violations) {
    const reason = v.reason ? ` (${v.reason})` : "";
    const m = requestField.exec(v.field);
    if (m && context.file) {
      aboutData = true;
      const index = Number(m[1]);
      const line = context.file.lineOf[index];
      // The file calls it "body"; body_json is only how the CLI sent it.
      const field = (m[2] ?? "").replace(/^body_json\b/, "body");
      const { lineOf } = context.file;
      // "first used by requests[0]" means more as "first used by line 1".
      const description = v.description.replace(/\brequests\[(\d+)\]/g, (all, i: string) => (lineOf[Number(i)] ? `line ${lineOf[Number(i)]}` : all));
      lines.push(`${context.file.path}:${line ?? `request ${index}`}: ${field ? `${field}: ` : ""}${description}${reason}`);
      continue;
    }
    if (v.field === "requests" || v.field === "endpoint" || m) aboutData = true;
    const where = v.field === "requests" && context.file ? context.file.path : v.field;
    lines.push(`${where}: ${v.description}${reason}`);
  }
  const n = violations.length;
  // The server stops at its 100th violation: "100 problems" said there were no more, of 10,000 lines all wrong.
  const count = n >= maxViolations ? `its first ${n} problems; it stops looking there` : `${n} problem${n === 1 ? "" : "s"}`;
  const summary = n > 0
    ? `INVALID_ARGUMENT: the server refused the batch (${count}); nothing was created`
    : `INVALID_ARGUMENT: ${err.rawMessage}`;
  return { lines: [...lines, `lote: ${summary}`], exitCode: aboutData ? ExitCode.DataError : ExitCode.Usage };
}
