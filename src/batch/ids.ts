import { randomBytes } from "node:crypto";

// Crockford base32 (lowercase): 26 characters carry 130 bits, more than the 128 random bits we draw.
const alphabet = "0123456789abcdefghjkmnpqrstvwxyz";

function base32(bytes: Buffer, length: number): string {
  let out = "";
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < length) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return out.padEnd(length, "0");
}

/** "batch_" + 26 random base32 characters. */
export function newBatchId(): string {
  return `batch_${base32(randomBytes(17), 26)}`;
}

/** An id for a process or request: prefix + 16 random base32 characters. */
export function newId(prefix: string): string {
  return `${prefix}_${base32(randomBytes(10), 16)}`;
}
