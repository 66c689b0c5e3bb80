import { readFileSync } from "node:fs";
import type { ModelConfig } from "../config/config.ts";
import type { Backend } from "./backend.ts";
import { lazyBackend } from "./lazy-backend.ts";

/**
 * One backend per configured model; the built-in models share one in-process backend, made on its first call
 * (lazyBackend). Each kind's module is imported only when a model uses it: a node serving only HTTP models never
 * loads gRPC and the proto loader.
 */
export async function createBackends(models: ReadonlyMap<string, ModelConfig>): Promise<Map<string, Backend>> {
  const out = new Map<string, Backend>();
  let builtin: Backend | undefined;
  for (const [name, m] of models) {
    const b = m.backend;
    if (b.kind === "builtin") {
      out.set(name, (builtin ??= lazyBackend("builtin", async () => {
        const { createBuiltinBackend } = await import("./builtin/index.ts");
        return createBuiltinBackend({ name: "builtin" });
      })));
    } else if (b.kind === "kserve") {
      const { createKServeBackend } = await import("./kserve/index.ts");
      out.set(name, createKServeBackend({
        name: `kserve:${name}`, urls: b.urls, modelName: b.modelName, inputName: b.inputName, outputName: b.outputName, maxConcurrency: m.maxConcurrency,
        maxResponseBytes: b.maxResponseBytes,
      }));
    } else {
      const { createOpenAIBackend } = await import("./openai/index.ts");
      out.set(name, createOpenAIBackend({
        name: `openai:${name}`, urls: [...b.urls], apiKey: b.apiKey, protocol: b.protocol, maxConcurrency: m.maxConcurrency,
        streamsPerSession: b.streamsPerSession, maxResponseBytes: b.maxResponseBytes,
        tls: b.caFile ? { ca: readFileSync(b.caFile, "utf8") } : undefined,
      }));
    }
  }
  return out;
}

export async function closeBackends(backends: ReadonlyMap<string, Backend>): Promise<void> {
  await Promise.all([...new Set(backends.values())].map((b) => b.close().catch(() => {})));
}
