import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { closeBackends, createBackends, type Backend } from "../../src/backends/index.ts";
import { buildConfig, type ModelConfig } from "../../src/config/config.ts";
import { executeCall } from "../../src/dispatch/execute-call.ts";
import { startSimulator, type Simulator } from "../../src/simulator/index.ts";
import type { ClaimedItem } from "../../src/store/index.ts";

describe("the retry policy, against the simulated backend", () => {
  let sim: Simulator;
  let backends: Map<string, Backend>;
  let model: ModelConfig;
  beforeAll(async () => {
    sim = await startSimulator({ port: 0 });
    const config = buildConfig({
      include_builtin_models: false, models: [{ name: "sim-model", backend: { kind: "openai", urls: [sim.url] }, max_attempts: 5 }],
    }, {});
    model = config.models.get("sim-model")!;
    backends = await createBackends(config.models);
  });
  afterAll(async () => {
    await closeBackends(backends);
    await sim.close();
  });

  /** One call of the first attempt of a request whose answer is `status`, as the dispatcher makes it. */
  const callAnswering = (status: number) => {
    const item: ClaimedItem = {
      batchId: "batch_retry_policy", idx: 0, customId: "c0", attempt: 1, endpoint: "/v1/chat/completions", estTokens: 1, tenantId: "t1",
      body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: `status ${status}` }], sim: { status } }),
    };
    return executeCall(backends.get("sim-model")!, model, item, new AbortController(), () => 0.5);
  };

  it("fails a 501 Not Implemented or a 505 at once, as it fails a 400: the same request gets the same answer", async () => {
    // llama.cpp's server answers 501 not_supported_error for an endpoint it was not started for (embeddings
    // without --embeddings). Before, every such request was called max_attempts times, with backoff, before failing.
    for (const status of [501, 505, 400]) {
      expect(await callAnswering(status)).toMatchObject({ outcome: "failed", statusCode: status });
    }
  });

  it("retries the other 5xx answers, a 429 and a 408, with backoff", async () => {
    for (const status of [500, 502, 503, 504, 429, 408]) {
      expect(await callAnswering(status)).toMatchObject({ outcome: "retry", statusCode: status, retryDelayMs: 750 });
    }
  });
});
