/**
 * The API's one error type is ConnectError. This file builds the ones lote sends and maps everything else
 * (Postgres, transport) to a code, so handlers throw plain domain outcomes and the edge stays consistent.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { BadRequestSchema, PreconditionFailureSchema } from "../../gen/google/rpc/error_details_pb.ts";
import type { FieldViolation } from "../batch/validate-requests.ts";
import { LogThrottle } from "../log/log-throttle.ts";
import { unreachableCodes } from "../store/index.ts";

/** INVALID_ARGUMENT with google.rpc.BadRequest details, one violation per field. */
export function invalidArgument(violations: readonly FieldViolation[]): ConnectError {
  const first = violations[0];
  const summary = first ? `${first.field}: ${first.description}` : "invalid request";
  const more = violations.length > 1 ? ` (and ${violations.length - 1} more violation${violations.length > 2 ? "s" : ""})` : "";
  return new ConnectError(`${summary}${more}`, Code.InvalidArgument, undefined, [
    { desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: violations.map((v) => ({ ...v })) }) },
  ]);
}

/**
 * ALREADY_EXISTS: an idempotency key (AIP-155) already names a batch made by another call, which is not the one this
 * call would have made; answering with that batch would look like success. The violation names the key's field.
 */
export function alreadyExists(violation: FieldViolation): ConnectError {
  return new ConnectError(`${violation.field}: ${violation.description}`, Code.AlreadyExists, undefined, [
    { desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: [{ ...violation }] }) },
  ]);
}

export function notFound(kind: string, id: string): ConnectError {
  return new ConnectError(`${kind} ${JSON.stringify(id)} not found`, Code.NotFound);
}

export function failedPrecondition(subject: string, description: string): ConnectError {
  return new ConnectError(description, Code.FailedPrecondition, undefined, [
    { desc: PreconditionFailureSchema, value: create(PreconditionFailureSchema, { violations: [{ type: "STATE", subject, description }] }) },
  ]);
}

// SQLSTATE classes that mean "the database is not reachable or not accepting work right now": retrying later helps.
// 57014 is a statement cancelled by statement_timeout (Database.pool): rolled back, so a retry is safe.
const unavailableSqlStates = /^(08|53|57P0|57014)/;
/**
 * What node-postgres says, with no code, when a connection is lost or cannot be made: "Query read timeout" is pg's
 * query_timeout (Database.pool) giving up on a query, whose connection is then dropped; the "not queryable" ones come
 * from a pooled client whose connection broke while it was handed out.
 */
const lostConnectionMessages = new Set([
  "timeout exceeded when trying to connect", "Connection terminated unexpectedly", "Connection terminated",
  "Connection terminated due to connection timeout", "Query read timeout",
  "Client has encountered a connection error and is not queryable", "Client was closed and is not queryable",
]);

/** Anything a handler throws that is not already a ConnectError gets a code here. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const e = err as { code?: string; message?: string };
  if (typeof e?.code === "string" && (unavailableSqlStates.test(e.code) || unreachableCodes.has(e.code))) {
    return new ConnectError("the database is unavailable; retry later", Code.Unavailable, undefined, undefined, err);
  }
  if (typeof e?.message === "string" && lostConnectionMessages.has(e.message)) {
    return new ConnectError("the database is unavailable; retry later", Code.Unavailable, undefined, undefined, err);
  }
  return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
}

/**
 * Gives whatever a handler throws its code (toConnectError), and logs the cause of what was not a ConnectError
 * already: the `rpc` line has only the code. Before it, connect sent INTERNAL for everything else, so a database
 * that could not be reached, or a query that timed out, looked like a bug to clients instead of UNAVAILABLE, which
 * they retry. A call whose signal fired (a cancel, the shutdown drain) keeps its error as thrown, for the
 * interceptors outside this one. Innermost, so that the others (metrics) see the code.
 */
export function errorCodeInterceptor(log: Logger, now: () => number = () => performance.now()): Interceptor {
  // The same failure (procedure, code and cause) once per 10 s, with how many like it were left out since.
  const logged = new LogThrottle(now);
  const coded = (err: unknown, procedure: string, signal: AbortSignal): unknown => {
    if (err instanceof ConnectError || signal.aborted) return err;
    const mapped = toConnectError(err);
    const message = err instanceof Error ? err.message : String(err);
    const code = Code[mapped.code];
    const admitted = logged.admit(`${procedure}\u0000${code}\u0000${message}`);
    if (admitted) log.warn({ procedure, code, err: message, ...(admitted.suppressed > 0 ? { suppressed: admitted.suppressed } : {}) }, "call failed");
    return mapped;
  };
  return (next) => async (req) => {
    const procedure = req.method.name;
    let res;
    try {
      res = await next(req);
    } catch (err) {
      throw coded(err, procedure, req.signal);
    }
    if (!res.stream) return res;
    const messages = res.message;
    async function* mapped() {
      try {
        yield* messages;
      } catch (err) {
        throw coded(err, procedure, req.signal);
      }
    }
    return { ...res, message: mapped() };
  };
}
