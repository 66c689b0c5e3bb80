/** Built-in models: sentiment and embeddings served in-process, so lote works with no model server. */
export { createBuiltinBackend, type BuiltinBackendOptions } from "./builtin-backend.ts";
export { builtinModels, findBuiltinModel, type BuiltinModel, type BuiltinModelName } from "./builtin-models.ts";
export { embedText, embeddingDimensions, featureHash, type Embedding } from "./hashing-embedder.ts";
export { sentimentModel, sentimentLabels, type SentimentLabel, type SentimentModel, type SentimentResult } from "./sentiment-model.ts";
export { detectLanguage, parseLanguageHint, sentimentLanguages, type SentimentLanguage } from "./detect-language.ts";
