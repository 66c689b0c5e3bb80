import { create, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";

export interface Summary {
  /** Requests per second of the slowest, median and fastest run. */
  readonly min: number;
  readonly median: number;
  readonly max: number;
  readonly medianMs: number;
}

export function summarise(ms: readonly number[], requests: number): Summary {
  const sorted = [...ms].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const medianMs = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  const rate = (t: number) => (requests * 1000) / t;
  return { min: rate(sorted[sorted.length - 1]!), median: rate(medianMs), max: rate(sorted[0]!), medianMs };
}

/**
 * A message of `schema` that serialises to exactly `bytes` without re-encoding them: an empty message whose one
 * unknown field is the first tag of `bytes` followed by everything after it. protobuf-es writes unknown fields
 * verbatim (`writer.tag(no, wireType).raw(data)`), so each send costs a copy instead of a full encode, and the
 * bytes of one message can be sent as another with the same field numbers (CreateBatch's as EstimateBatch's).
 */
export function sendAsIs<Desc extends DescMessage>(schema: Desc, bytes: Uint8Array): MessageShape<Desc> {
  if (bytes[0]! >= 0x80) throw new Error("expected a one-byte first tag (field number < 16)");
  const shell = create(schema) as MessageShape<Desc>;
  shell.$unknown = [{ no: bytes[0]! >>> 3, wireType: bytes[0]! & 7, data: bytes.subarray(1) }];
  const again = toBinary(schema, shell);
  if (Buffer.compare(again, bytes) !== 0) throw new Error("the shell message does not reproduce its bytes");
  return shell;
}
