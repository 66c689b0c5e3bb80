/**
 * The one tokenizer both built-in models share, so "usage.prompt_tokens" means the same thing on /classify and
 * /v1/embeddings. Tokens are lowercased words (apostrophes kept inside, so "didn't" stays one negator), emoji
 * (the sentiment lexicon scores ~750 of them) and clause boundaries (.,;:!?), which end a negation's scope.
 */

export interface Token {
  readonly kind: "word" | "emoji" | "boundary";
  /** Lowercased, NFC. */
  readonly text: string;
  /** `text` without accents (see foldAccents); computed once here because every consumer needs it. */
  readonly folded: string;
}

// \p{M} inside words keeps decomposed accents ("e" + U+0301) attached to their letter until folding.
const tokenPattern = /([\p{L}\p{N}][\p{L}\p{M}\p{N}]*(?:'[\p{L}\p{M}]+)*)|(\p{Extended_Pictographic})|([.,;:!?…]+)/gu;
// Fast path: most words are ASCII and need no normalisation pass.
const nonAscii = /[^\u0000-\u007f]/;
const combiningMarks = /\p{M}/gu;

export function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  const lower = text.toLowerCase().replace(/[’‘`´]/g, "'");
  for (const match of lower.matchAll(tokenPattern)) {
    const [, word, emoji, boundary] = match;
    if (word !== undefined) {
      const nfc = nonAscii.test(word) ? word.normalize("NFC") : word;
      tokens.push({ kind: "word", text: nfc, folded: foldAccents(nfc) });
    } else if (emoji !== undefined) {
      tokens.push({ kind: "emoji", text: emoji, folded: emoji });
    } else if (boundary !== undefined) {
      tokens.push({ kind: "boundary", text: boundary, folded: boundary });
    }
  }
  return tokens;
}

/** "Péssimo" → "pessimo", "ação" → "acao": users often type Portuguese without accents, so matching folds both sides. */
export function foldAccents(word: string): string {
  return nonAscii.test(word) ? word.normalize("NFD").replace(combiningMarks, "") : word;
}
