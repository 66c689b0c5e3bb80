/**
 * Commander value parsers for the client flags. They throw commander's InvalidArgumentError, which it reports as a
 * usage error (exit 2) naming the flag, in the form "expected ..., got ...".
 */
import { InvalidArgumentError } from "commander";
import { BatchStatus } from "../../gen/lote/v1/batch_pb.ts";

const unitSeconds: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** "90s", "30m", "24h", "7d" -> seconds. Fractions are allowed ("1.5h"); a bare number is refused as ambiguous. */
export function parseDuration(value: string): number {
  const m = /^(\d+(?:\.\d+)?)([smhd])$/.exec(value.trim());
  // Zero is refused too: `run --timeout 0s` was sent as no deadline at all, the opposite of what it says.
  if (!m || Number(m[1]) === 0) throw new InvalidArgumentError(`expected a duration above zero such as 90s, 30m, 24h or 7d, got ${JSON.stringify(value)}`);
  return Number(m[1]) * unitSeconds[m[2]!]!;
}

/** Repeatable `k=v` (split at the first "="; the value may be empty and may contain "="). */
export function collectPair(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = value.indexOf("=");
  if (eq <= 0) throw new InvalidArgumentError(`expected key=value, got ${JSON.stringify(value)}`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

/** An integer, in the range the server accepts so the mistake is caught before any file is read. */
export function integerIn(min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^-?\d+$/.test(value.trim()) || n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
    }
    return n;
  };
}

/** The OpenAI-style lowercase name of a status: BatchStatus.IN_PROGRESS -> "in_progress". */
export function statusName(status: BatchStatus): string {
  return (BatchStatus[status] ?? `status_${status}`).toLowerCase();
}

const statusChoices = Object.values(BatchStatus).filter((v): v is BatchStatus => typeof v === "number" && v !== BatchStatus.UNSPECIFIED);

/** "in_progress", "IN_PROGRESS" or "BATCH_STATUS_IN_PROGRESS" -> BatchStatus.IN_PROGRESS. */
export function parseStatus(value: string): BatchStatus {
  const key = value.trim().toUpperCase().replace(/^BATCH_STATUS_/, "");
  const found = statusChoices.find((s) => BatchStatus[s] === key);
  if (found === undefined) throw new InvalidArgumentError(`expected one of ${statusChoices.map(statusName).join(", ")}, got ${JSON.stringify(value)}`);
  return found;
}
