/**
 * Exit codes of the client commands, the contract scripts rely on. Values follow BSD sysexits.h where one fits.
 *
 * | code | name         | when                                                                         |
 * |------|--------------|------------------------------------------------------------------------------|
 * |  0   | Ok           | the command did what it was asked                                            |
 * |  1   | Failure      | anything else (NOT_FOUND, FAILED_PRECONDITION, INTERNAL, ...)                |
 * |  2   | Usage        | bad flags or arguments (commander's errors, INVALID_ARGUMENT about a flag)   |
 * |  3   | BatchNotDone | watch / --wait: the batch ended FAILED, EXPIRED or CANCELLED, not COMPLETED  |
 * | 65   | DataError    | the input file is not a valid batch (locally, or INVALID_ARGUMENT on requests) |
 * | 66   | NoInput      | the input file cannot be read (missing, a directory, no permission)          |
 * | 69   | Unavailable  | the server cannot be reached (UNAVAILABLE, connection refused, reset, or its   |
 * |      |              | TLS certificate is not trusted)                                              |
 * | 77   | NoPermission | UNAUTHENTICATED or PERMISSION_DENIED: missing, wrong or unauthorised key     |
 * | 78   | Config       | (server commands) invalid configuration                                      |
 */
import { Code, ConnectError } from "@connectrpc/connect";

export const ExitCode = {
  Ok: 0,
  Failure: 1,
  Usage: 2,
  BatchNotDone: 3,
  DataError: 65, // EX_DATAERR
  NoInput: 66, // EX_NOINPUT
  Unavailable: 69, // EX_UNAVAILABLE
  NoPermission: 77, // EX_NOPERM
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** An expected failure of a client command: printed as `lote: <message>`, then the process exits with `exitCode`. */
export class CliError extends Error {
  constructor(message: string, readonly exitCode: ExitCode, readonly detailLines: readonly string[] = []) {
    super(message);
    this.name = "CliError";
  }
}

/** The exit code for an error thrown by an RPC (or by the CLI itself). */
export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof CliError) return err.exitCode;
  if (!(err instanceof ConnectError)) return ExitCode.Failure;
  switch (err.code) {
    case Code.Unavailable:
      return ExitCode.Unavailable;
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return ExitCode.NoPermission;
    default:
      return ExitCode.Failure;
  }
}

/** gRPC's own spelling of a code (status.proto), e.g. Code.NotFound -> "NOT_FOUND", Code.Canceled -> "CANCELLED". */
export function grpcCodeName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED";
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
