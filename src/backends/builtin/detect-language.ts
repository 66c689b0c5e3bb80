/**
 * Portuguese or English, told apart by counting each language's stopwords (from the `stopword` package).
 * Two short languages with distinct function words need nothing heavier: "Eu amo estudar IA!" has "eu",
 * "I love studying AI!" has "i". Trigram detectors such as franc are unreliable under ~20 characters, which is
 * exactly the length of most sentences sent here.
 */
import { eng, por } from "stopword";
import { foldAccents, type Token } from "./text-tokens.ts";

export const sentimentLanguages = ["pt", "en"] as const;
export type SentimentLanguage = (typeof sentimentLanguages)[number];

// Words in both lists ("a", "no", "me", "se", "as"…) say nothing about which language this is.
const shared = new Set(por.filter((word) => eng.includes(word)));
// Folded forms that are also common English words: "só" typed without its accent is "so", as in "I'm so happy",
// which counted as Portuguese and sent the sentence to the Portuguese lexicon, where "happy" means nothing
// (neutral). These count for Portuguese only with the accent.
const englishWhenFolded = new Set(["so"]);
const portugueseWords = new Set(por.filter((word) => !shared.has(word)).map(foldAccents).filter((word) => !englishWhenFolded.has(word)));
const portugueseAccented = new Set(por.filter((word) => englishWhenFolded.has(foldAccents(word)) && foldAccents(word) !== word));
const englishWords = new Set(eng.filter((word) => !shared.has(word)));
// English contractions ("i'm", "it's", "you're", "don't"): the stopword list has none of them, and Portuguese
// writes no word this way ("d'água" ends in a word, not in a contraction's tail).
const englishContraction = /^\p{L}+'(?:m|re|s|ve|ll|d|t)$/u;

// Letters English never uses; one of them breaks a tie ("Ótimo!" has no stopword at all).
const portugueseLetters = /[ãõçáéíóúâêôà]/;

/**
 * Picks the language with more stopwords; on a tie, Portuguese letters decide, then `fallback` (the caller
 * passes the language whose lexicon matched more words).
 */
export function detectLanguage(tokens: readonly Token[], fallback: () => SentimentLanguage): SentimentLanguage {
  let pt = 0;
  let en = 0;
  let accented = false;
  for (const token of tokens) {
    if (token.kind !== "word") continue;
    if (portugueseWords.has(token.folded) || portugueseAccented.has(token.text)) pt += 1;
    else if (englishWords.has(token.text) || englishContraction.test(token.text)) en += 1;
    if (!accented && token.folded !== token.text && portugueseLetters.test(token.text)) accented = true;
  }
  if (pt !== en) return pt > en ? "pt" : "en";
  if (accented) return "pt";
  return fallback();
}

/**
 * Reads the body's optional `language` hint: a BCP 47 tag or name whose primary subtag is pt or en
 * ("pt-BR", "en_US", "por", "english"). Returns undefined when the hint names another language.
 */
export function parseLanguageHint(hint: string): SentimentLanguage | undefined {
  const primary = hint.trim().toLowerCase().split(/[-_]/)[0];
  if (primary === "pt" || primary === "por" || primary === "portuguese" || primary === "português") return "pt";
  if (primary === "en" || primary === "eng" || primary === "english") return "en";
  return undefined;
}
