/**
 * Request bodies of the dispatch benchmark, as the JSON text lote stores and sends. "chat": the ingest
 * benchmark's realistic chat requests (400-700 bytes). "compact": ~110-byte chat requests, so a
 * 1,000,000-request batch fits in one CreateBatch message (about 130 MB) under the server's 256 MiB limit;
 * with "chat" bodies it would be ~550 MB.
 */
import { chatRequests } from "./chat-requests.ts";

export type BodyKind = "chat" | "compact";

export function benchBodies(count: number, model: string, kind: BodyKind): string[] {
  if (kind === "chat") return chatRequests(count, model).map((r) => JSON.stringify(r.body));
  const modelJson = JSON.stringify(model);
  const out = new Array<string>(count);
  for (let i = 0; i < count; i++) {
    out[i] = `{"model":${modelJson},"messages":[{"role":"user","content":"Request ${i}: one short sentence, please."}],"max_tokens":16}`;
  }
  return out;
}
