/**
 * What the built-in backend serves, for the config layer: a deployment that names one of these models needs
 * no model server. Each model answers on exactly one endpoint.
 */
import type { EndpointPath } from "../backend.ts";

export interface BuiltinModel {
  readonly name: string;
  readonly endpoints: readonly EndpointPath[];
  readonly description: string;
}

export const builtinModels = [
  {
    name: "lote-sentiment",
    endpoints: ["/classify"],
    description: "Portuguese and English sentiment (negative/neutral/positive) from stemmed AFINN lexicons",
  },
  {
    name: "lote-embed",
    endpoints: ["/v1/embeddings"],
    description: "Deterministic feature-hashing embeddings, 1 to 4096 dimensions (default 256)",
  },
] as const satisfies readonly BuiltinModel[];

export type BuiltinModelName = (typeof builtinModels)[number]["name"];

export function findBuiltinModel(name: string): (typeof builtinModels)[number] | undefined {
  return builtinModels.find((model) => model.name === name);
}
