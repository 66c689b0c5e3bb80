/**
 * `lote-sentiment`: lexicon scoring in the manner of VADER (Hutto & Gilbert 2014) over AFINN polarities, for
 * Portuguese and English. Sum the polarity of each matched word or phrase, after
 *  - negation: a negator flips the first sentiment word in the next 3 tokens, damped by 0.74 (VADER's
 *    N_SCALAR), so "not bad" is mildly positive rather than as positive as "good"; "never so happy" is
 *    emphasis, not negation. Function words (articles, pronouns, "é", "foi") do not use up those 3 tokens:
 *    Portuguese puts the adjective after its noun, and "não foi um filme bom" was read as positive;
 *  - intensifiers: "muito cansado" counts cansado × 1.5;
 *  - contrast: before "mas"/"but" counts half, after it 1.5 × (VADER's "but" rule);
 *  - exclamation marks: up to three add 10% each.
 * The score then goes through a softmax (see `probabilities`).
 */
import { eng, por } from "stopword";
import { detectLanguage, type SentimentLanguage } from "./detect-language.ts";
import { buildSentimentLexicon, type SentimentLexicon } from "./sentiment-lexicon.ts";
import { foldAccents, tokenize, type Token } from "./text-tokens.ts";

/** Index order of `probs`, as vLLM's classify API reports it (id2label of the model). */
export const sentimentLabels = ["negative", "neutral", "positive"] as const;
export type SentimentLabel = (typeof sentimentLabels)[number];

export interface SentimentResult {
  readonly label: SentimentLabel;
  /** [p_negative, p_neutral, p_positive], summing to 1. */
  readonly probs: readonly [number, number, number];
  /** The largest of `probs`. */
  readonly confidence: number;
  readonly language: SentimentLanguage;
  /** The raw lexicon score (AFINN points after modifiers); positive is positive. */
  readonly score: number;
  /** Tokens read (words, emoji, punctuation), reported as usage.prompt_tokens. */
  readonly tokens: number;
}

export interface SentimentModel {
  /** `language` forces the lexicon; otherwise it is detected from the text. */
  classify(text: string, language?: SentimentLanguage): SentimentResult;
}

const negationScope = 3; // tokens after a negator that it can reach: "não é muito bom", "did not really like"
const negationScalar = -0.74;
const intensifierReach = 2; // an intensifier waits at most this many plain words for its sentiment word
const beforeContrast = 0.5;
const afterContrast = 1.5;
const exclamationBoost = 0.1;
const maxExclamations = 3;

/*
 * Softmax over three logits: positive = k·s, negative = -k·s, neutral = b - (k/2)·|s|.
 * With k = 1 and b = 1.4 a sentence is neutral while |s| < 0.93, so one weak word (AFINN ±1) already tips it;
 * confidence is 0.67 for no evidence, ~0.5 for s = ±1, 0.84 for ±2 ("bom", "sad"), 0.96 for ±3 and
 * above 0.99 for "muito feliz" (±4.5). Those are the numbers a reader of the probabilities should expect.
 */
const slope = 1;
const neutralBias = 1.4;

export function probabilities(score: number): [number, number, number] {
  const logits = [-slope * score, neutralBias - (slope / 2) * Math.abs(score), slope * score];
  const max = Math.max(...logits);
  const exps = logits.map((logit) => Math.exp(logit - max));
  const sum = exps[0]! + exps[1]! + exps[2]!;
  return [exps[0]! / sum, exps[1]! / sum, exps[2]! / sum];
}

let shared: SentimentModel | undefined;

/** The process-wide model; the first call builds both stemmed lexicons (~0.15 s), later calls are free. */
export function sentimentModel(): SentimentModel {
  shared ??= createSentimentModel();
  return shared;
}

function createSentimentModel(): SentimentModel {
  const lexicons: Record<SentimentLanguage, SentimentLexicon> = {
    pt: buildSentimentLexicon("pt"),
    en: buildSentimentLexicon("en"),
  };
  const modifiers = {
    pt: modifierTable(lexicons.pt, por),
    en: modifierTable(lexicons.en, eng),
  };
  return {
    classify(text, language) {
      const tokens = tokenize(text);
      const lang = language ?? detectLanguage(tokens, () => moreKnownWords(tokens, lexicons));
      const score = scoreTokens(tokens, lexicons[lang], modifiers[lang]);
      const probs = probabilities(score);
      const best = probs.indexOf(Math.max(...probs));
      return {
        label: sentimentLabels[best]!,
        probs,
        confidence: probs[best]!,
        language: lang,
        score,
        tokens: tokens.length,
      };
    },
  };
}

interface Modifiers {
  readonly negators: ReadonlySet<string>;
  readonly emphaticNegators: ReadonlySet<string>;
  readonly intensifiers: ReadonlyMap<string, number>;
  readonly postIntensifiers: ReadonlySet<string>;
  readonly contrasts: ReadonlySet<string>;
  /** Function words (the language's stopwords): a negation's scope passes over them without counting them. */
  readonly fillers: ReadonlySet<string>;
}

function modifierTable(lexicon: SentimentLexicon, stopwords: readonly string[]): Modifiers {
  const { extras } = lexicon;
  return {
    fillers: new Set(stopwords.map(foldAccents)),
    negators: new Set(extras.negators.map(foldAccents)),
    emphaticNegators: new Set(extras.emphaticNegators.map(foldAccents)),
    intensifiers: new Map(Object.entries(extras.intensifiers).map(([word, factor]) => [foldAccents(word), factor])),
    postIntensifiers: new Set(extras.postIntensifiers.map(foldAccents)),
    contrasts: new Set(extras.contrasts.map(foldAccents)),
  };
}

function scoreTokens(tokens: readonly Token[], lexicon: SentimentLexicon, modifiers: Modifiers): number {
  let total = 0;
  let exclamations = 0;
  let negationLeft = 0; // tokens the last negator can still reach
  let emphatic = false; // the last negator was "never"/"nunca"
  let boost = 1;
  let boostLeft = 0;
  let clauseWeight = 1;
  let last: { index: number; value: number } | undefined; // the previous sentiment hit, for "lindo demais"

  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!;
    if (token.kind === "boundary") {
      for (const char of token.text) if (char === "!") exclamations += 1;
      negationLeft = 0;
      boostLeft = 0;
      continue;
    }
    const { folded } = token;
    if (token.kind === "word") {
      if (modifiers.negators.has(folded)) {
        // A second negator within the scope renews it: "não gostei de nada" is one negation (negative concord),
        // and it keeps an emphatic "nunca": "nunca vi nada tão ruim" is very bad, not good.
        emphatic = modifiers.emphaticNegators.has(folded) || (negationLeft > 0 && emphatic);
        negationLeft = negationScope;
        continue;
      }
      if (modifiers.contrasts.has(folded)) {
        total *= beforeContrast;
        clauseWeight = afterContrast;
        negationLeft = 0;
        boostLeft = 0;
        continue;
      }
      const factor = modifiers.intensifiers.get(folded);
      if (factor !== undefined) {
        if (modifiers.postIntensifiers.has(folded) && last !== undefined && last.index === i - 1) {
          total += last.value * (factor - 1);
        } else {
          boost = boostLeft > 0 ? boost * factor : factor;
          boostLeft = intensifierReach;
          if (negationLeft > 0 && emphatic && factor > 1) negationLeft = 0; // "never been so happy"
        }
        continue;
      }
    }

    let value: number | undefined;
    let width = 1;
    const longest = lexicon.startsPhrase(folded) ? Math.min(lexicon.maxPhraseWords, tokens.length - i) : 0;
    for (let n = longest; n >= 2 && value === undefined; n--) {
      const words = phraseAt(tokens, i, n);
      if (words !== undefined) {
        value = lexicon.phrase(words);
        if (value !== undefined) width = n;
      }
    }
    value ??= lexicon.polarity(token.text, folded);

    if (value === undefined || value === 0) {
      if (negationLeft > 0 && !modifiers.fillers.has(folded)) negationLeft -= 1;
      if (boostLeft > 0) boostLeft -= 1;
      continue;
    }
    // A negated booster is a softener: "não é muito bom" is mildly negative, so the boost is dropped.
    if (negationLeft > 0) value *= negationScalar;
    else if (boostLeft > 0) value *= boost;
    value *= clauseWeight;
    total += value;
    last = { index: i + width - 1, value };
    negationLeft = 0;
    boostLeft = 0;
    i += width - 1;
  }
  if (total !== 0) total *= 1 + exclamationBoost * Math.min(exclamations, maxExclamations);
  return total;
}

/** The n words from `start` as one folded key, or undefined when punctuation or emoji breaks the run. */
function phraseAt(tokens: readonly Token[], start: number, n: number): string | undefined {
  let key = "";
  for (let j = start; j < start + n; j++) {
    const token = tokens[j]!;
    if (token.kind !== "word") return undefined;
    key += (j === start ? "" : " ") + token.folded;
  }
  return key;
}

/** Tie-breaker for language detection: the lexicon that knows more of the words. English wins ties. */
function moreKnownWords(tokens: readonly Token[], lexicons: Record<SentimentLanguage, SentimentLexicon>): SentimentLanguage {
  let pt = 0;
  let en = 0;
  for (const token of tokens) {
    if (token.kind !== "word") continue;
    if (lexicons.pt.polarity(token.text, token.folded) !== undefined) pt += 1;
    if (lexicons.en.polarity(token.text, token.folded) !== undefined) en += 1;
  }
  return pt > en ? "pt" : "en";
}
