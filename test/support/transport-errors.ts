import { expect } from "vitest";
import { TransportError } from "../../src/backends/backend.ts";

/** The TransportError a call ends with; fails the test when it succeeds or fails otherwise. */
export function rejection(p: Promise<unknown>): Promise<TransportError> {
  return p.then(
    () => { throw new Error("expected a rejection"); },
    (e: unknown) => {
      expect(e).toBeInstanceOf(TransportError);
      return e as TransportError;
    },
  );
}
