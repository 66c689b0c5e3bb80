/**
 * `lote-embed`: deterministic sentence embeddings by the hashing trick (Weinberger et al. 2009). No weights,
 * no training, the same vector on every machine and version, and texts sharing words or word pieces land
 * close together: a useful default for dedup, clustering and tests, not a semantic model.
 *
 * Features per word (lowercased, accent-folded): the word itself with weight 1, plus its character 3-grams
 * with boundary marks ("<am", "ami", "mig", "igo", "go>") whose weights together have L2 norm 1, so
 * "amigo"/"amigos" overlap strongly while a long word does not outweigh a short one. Emoji are whole features.
 * Each feature adds ±weight at hash mod dimensions, the sign from the hash's top bit so collisions cancel on
 * average instead of piling up; the sum is L2-normalised.
 */
import { tokenize } from "./text-tokens.ts";

/** The `dimensions` field: default and accepted range. 4096 bounds one reply at ~100 KB per input as JSON. */
export const embeddingDimensions = { default: 256, min: 1, max: 4096 } as const;

export interface Embedding {
  /** Unit length (L2 norm 1 within float32 rounding). */
  readonly vector: Float32Array;
  /** Tokens read, reported as usage.prompt_tokens. */
  readonly tokens: number;
}

// Namespaces keep a word and an identical 3-gram ("sol" the word, "sol" inside "solto") apart.
const wordSeed = 0x77; // "w"
const gramSeed = 0x63; // "c"
const emojiSeed = 0x65; // "e"
const rawSeed = 0x72; // "r"

export function embedText(text: string, dimensions: number): Embedding {
  const sums = new Float64Array(dimensions);
  const add = (hash: number, weight: number): void => {
    sums[hash % dimensions]! += hash >= 0x80000000 ? -weight : weight;
  };
  const tokens = tokenize(text);
  let features = 0;
  for (const token of tokens) {
    if (token.kind === "boundary") continue;
    features += 1;
    if (token.kind === "emoji") {
      add(featureHash(token.folded, emojiSeed), 1);
      continue;
    }
    const padded = `<${token.folded}>`;
    add(featureHash(padded, wordSeed, 1, padded.length - 1), 1);
    const grams = padded.length - 2;
    const weight = 1 / Math.sqrt(grams);
    for (let i = 0; i < grams; i++) add(featureHash(padded, gramSeed, i, i + 3), weight);
  }
  // Text with no word or emoji ("???", "  ") still deserves a stable unit vector: use its raw 3-grams.
  if (features === 0) {
    const padded = `<${text.toLowerCase()}>`;
    for (let i = 0; i + 3 <= padded.length; i++) add(featureHash(padded, rawSeed, i, i + 3), 1);
  }
  let norm = 0;
  for (const value of sums) norm += value * value;
  norm = Math.sqrt(norm);
  const vector = new Float32Array(dimensions);
  if (norm === 0) {
    // Every feature cancelled out (possible only with very few dimensions); any fixed unit vector will do.
    vector[0] = 1;
  } else {
    for (let i = 0; i < dimensions; i++) vector[i] = sums[i]! / norm;
  }
  return { vector, tokens: tokens.length };
}

/**
 * FNV-1a (32-bit) over the namespace byte and then the UTF-8 bytes of text[start, end), finished with
 * murmur3's fmix32: FNV-1a alone leaves the low bits of 3-byte inputs poorly mixed, and `mod dimensions`
 * reads exactly those bits. Works on a range so the 3-grams need no substring allocations (embedding measured 5x faster).
 * Unsigned 32-bit result.
 */
export function featureHash(text: string, seed = 0, start = 0, end = text.length): number {
  let hash = Math.imul(0x811c9dc5 ^ seed, 0x01000193);
  for (let i = start; i < end; i++) {
    let code = text.charCodeAt(i);
    if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const low = text.charCodeAt(i + 1);
      if (low >= 0xdc00 && low <= 0xdfff) {
        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        i += 1;
      }
    }
    if (code < 0x80) {
      hash = Math.imul(hash ^ code, 0x01000193);
    } else if (code < 0x800) {
      hash = Math.imul(hash ^ (0xc0 | (code >> 6)), 0x01000193);
      hash = Math.imul(hash ^ (0x80 | (code & 0x3f)), 0x01000193);
    } else if (code < 0x10000) {
      hash = Math.imul(hash ^ (0xe0 | (code >> 12)), 0x01000193);
      hash = Math.imul(hash ^ (0x80 | ((code >> 6) & 0x3f)), 0x01000193);
      hash = Math.imul(hash ^ (0x80 | (code & 0x3f)), 0x01000193);
    } else {
      hash = Math.imul(hash ^ (0xf0 | (code >> 18)), 0x01000193);
      hash = Math.imul(hash ^ (0x80 | ((code >> 12) & 0x3f)), 0x01000193);
      hash = Math.imul(hash ^ (0x80 | ((code >> 6) & 0x3f)), 0x01000193);
      hash = Math.imul(hash ^ (0x80 | (code & 0x3f)), 0x01000193);
    }
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** OpenAI's `encoding_format: "base64"`: the float32 values, little-endian, base64-encoded. */
export function toBase64(vector: Float32Array): string {
  const bytes = Buffer.allocUnsafe(vector.length * 4);
  for (let i = 0; i < vector.length; i++) bytes.writeFloatLE(vector[i]!, i * 4);
  return bytes.toString("base64");
}
