import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { toConnectError } from "../../src/api/errors.ts";

describe("error codes for what Postgres and node-postgres throw", () => {
  it("answers UNAVAILABLE, which clients retry, for every way a connection to Postgres is lost or refused", () => {
    const lost = [
      "Connection terminated unexpectedly", "Connection terminated", "Connection terminated due to connection timeout",
      "timeout exceeded when trying to connect", "Query read timeout",
      "Client has encountered a connection error and is not queryable", "Client was closed and is not queryable",
    ].map((message) => new Error(message));
    const coded = ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "57P01", "57014", "08006", "53300"]
      .map((code) => Object.assign(new Error(`failed: ${code}`), { code }));
    for (const err of [...lost, ...coded]) expect({ err: err.message, code: toConnectError(err).code }).toEqual({ err: err.message, code: Code.Unavailable });
  });

  it("answers INTERNAL for anything else, and keeps a ConnectError as it is", () => {
    expect(toConnectError(Object.assign(new Error("duplicate key"), { code: "23505" })).code).toBe(Code.Internal);
    expect(toConnectError(new TypeError("x is undefined")).code).toBe(Code.Internal);
    const given = new ConnectError("no", Code.NotFound);
    expect(toConnectError(given)).toBe(given);
  });
});
