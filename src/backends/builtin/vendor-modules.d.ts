// Neither package ships type declarations; these cover only the parts the built-in models use.

declare module "snowball-stemmers" {
  export interface SnowballStemmer {
    stem(word: string): string;
  }
  /** Algorithm names as Snowball spells them: "portuguese", "english", … */
  export function newStemmer(algorithm: string): SnowballStemmer;
  export function algorithms(): string[];
}

declare module "stopword" {
  /** Portuguese (106 words). */
  export const por: readonly string[];
  /** English (108 words). */
  export const eng: readonly string[];
}
