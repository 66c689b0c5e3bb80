/** Opaque resume cursors and page tokens: versioned, base64url, validated on the way back in. */
export function encodeCursor(seq: bigint): string {
  return Buffer.from(`r1:${seq}`).toString("base64url");
}

/** The seq a cursor names, or undefined when it is not one of ours. "" means the start. */
export function decodeCursor(cursor: string): bigint | undefined {
  if (cursor === "") return 0n;
  const m = /^r1:(\d{1,19})$/.exec(Buffer.from(cursor, "base64url").toString());
  return m ? BigInt(m[1]!) : undefined;
}

/** A page token binds the position to the filter it was made for (AIP-158: a token must not be reused with other filters). */
export function encodePageToken(seq: bigint, filterKey: string): string {
  return Buffer.from(JSON.stringify({ v: 1, s: seq.toString(), f: filterKey })).toString("base64url");
}

export function decodePageToken(token: string, filterKey: string): bigint | "mismatch" | undefined {
  try {
    const t = JSON.parse(Buffer.from(token, "base64url").toString());
    if (t?.v !== 1 || typeof t.s !== "string" || !/^\d+$/.test(t.s)) return undefined;
    return t.f === filterKey ? BigInt(t.s) : "mismatch";
  } catch {
    return undefined;
  }
}
