/**
 * A request body that cannot be turned into a ModelInferRequest (wrong shape, unsupported datatype, token-id
 * prompts). The backend answers it with a local 400 instead of calling the server: retrying cannot help.
 */
export class InvalidRequestError extends Error {
  override readonly name = "InvalidRequestError";
}

/** "Expected `x` to be …, got …" with the found value shown briefly. */
export function expected(what: string, found: unknown): InvalidRequestError {
  const shown = JSON.stringify(found) ?? String(found);
  return new InvalidRequestError(`Expected ${what}, got ${shown.length > 60 ? `${shown.slice(0, 57)}...` : shown}`);
}
