/** Opaque resume cursors and page tokens: versioned, base64url, validated on the way back in. */

// Both positions are bigint columns (results.seq, batches.seq): a larger number reached Postgres and failed there
// (22003, out of range) as INTERNAL.
const maxSeq = 2n ** 63n - 1n;

function seqOf(digits: string): bigint | undefined {
  const seq = BigInt(digits);
  return seq <= maxSeq ? seq : undefined;
}

/**
 * The batch a cursor belongs to, as the last 8 characters of its id: 40 of its random bits (src/batch/ids.ts),
 * enough to tell batches apart with nothing hashed per result. It is a check against mix-ups, not a secret: the
 * batch itself is looked up for the caller's tenant.
 */
function batchTag(batchId: string): string {
  return batchId.slice(-8);
}

/** "r2:<batch tag>:<seq>": the position after a result, and the batch it is a position in. */
export function encodeCursor(batchId: string, seq: bigint): string {
  return Buffer.from(`r2:${batchTag(batchId)}:${seq}`).toString("base64url");
}

/**
 * The seq a cursor of `batchId` names; "other_batch" when it was made for another batch (resuming from it would
 * skip or miss results silently); undefined when it is not one of ours. "" means the start. "r1:<seq>", the form
 * cursors had before they named their batch, is still taken, unchecked, so streams resumed from them go on as before.
 */
export function decodeCursor(cursor: string, batchId: string): bigint | "other_batch" | undefined {
  if (cursor === "") return 0n;
  const m = /^r(?:1|2:([^:]*)):(\d{1,19})$/.exec(Buffer.from(cursor, "base64url").toString());
  if (!m) return undefined;
  if (m[1] !== undefined && m[1] !== batchTag(batchId)) return "other_batch";
  return seqOf(m[2]!);
}

/** A page token binds the position to the filter it was made for (AIP-158: a token must not be reused with other filters). */
export function encodePageToken(seq: bigint, filterKey: string): string {
  return Buffer.from(JSON.stringify({ v: 1, s: seq.toString(), f: filterKey })).toString("base64url");
}

export function decodePageToken(token: string, filterKey: string): bigint | "mismatch" | undefined {
  try {
    const t = JSON.parse(Buffer.from(token, "base64url").toString());
    if (t?.v !== 1 || typeof t.s !== "string" || !/^\d{1,19}$/.test(t.s)) return undefined;
    const seq = seqOf(t.s);
    if (seq === undefined) return undefined;
    return t.f === filterKey ? seq : "mismatch";
  } catch {
    return undefined;
  }
}
