import { afterEach, describe, expect, it } from "vitest";
import { closeBackends, createBackends } from "../../src/backends/index.ts";
import { newBatchId } from "../../src/batch/ids.ts";
import { buildConfig } from "../../src/config/config.ts";
import { Dispatcher } from "../../src/dispatch/index.ts";
import { createLogger } from "../../src/log/logger.ts";
import { startSimulator } from "../../src/simulator/index.ts";
import { createBatch, getBatch, Notifier, type NewBatch } from "../../src/store/index.ts";
import { useMigratedDatabase } from "../support/database.ts";
import { until } from "../support/until.ts";

function chatBatch(id: string, model: string, n: number): NewBatch {
  return {
    id, tenantId: "t1", endpoint: "/v1/chat/completions", model, priority: 0, completionWindowSeconds: 3600, metadata: {},
    items: Array.from({ length: n }, (_, i) => ({
      customId: `${model}-${i}`, body: JSON.stringify({ model, messages: [{ role: "user", content: `hello ${i}` }] }), estTokens: 10,
    })),
  };
}

describe("the dispatcher's node-wide limit (worker.concurrency)", () => {
  const fixture = useMigratedDatabase();
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /**
   * A node that runs 4 calls at once, two models each allowed far more (calls of 100 ms), and the built-in models,
   * which get no work here. Counts its claims per model.
   */
  async function startNode(workerId: string) {
    const sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 100 } });
    cleanups.push(() => sim.close());
    const model = (name: string) => ({ name, backend: { kind: "openai", urls: [sim.h2cUrl] }, max_concurrency: 64, timeout_ms: 30_000 });
    const config = buildConfig({
      models: [model("sim-a"), model("sim-b")],
      worker: { concurrency: 4, maintenance_interval_ms: 60_000 },
    }, {});
    const logger = createLogger({ level: "silent" });
    const notifier = new Notifier({ connectionString: fixture.db.url, logger });
    await notifier.start();
    cleanups.push(() => notifier.close());
    const backends = await createBackends(config.models);
    cleanups.push(() => closeBackends(backends));
    const claims = new Map<string, number>();
    const observer = {
      claimed: (model: string) => void claims.set(model, (claims.get(model) ?? 0) + 1),
      callEnded: () => {},
      callFailed: () => {},
      rescued: () => {},
      databaseFailed: () => {},
    };
    const dispatcher = new Dispatcher({ pool: fixture.pool, notifier, backends, models: config.models, worker: config.worker, workerId, logger, observer });
    return {
      sim,
      claims,
      start: () => {
        dispatcher.start();
        cleanups.push(() => dispatcher.stop(1_000));
      },
    };
  }
  const completed = (id: string) => until(`batch ${id} completed`, async () => {
    const b = await getBatch(fixture.pool, "t1", id);
    return b?.status === "completed" ? b : undefined;
  }, 30_000);

  it("never runs more than worker.concurrency calls at once across its models", async () => {
    const node = await startNode("w-node-limit");
    // Both batches are there before the dispatcher starts, so both loops' first claims find work at once.
    const a = newBatchId();
    const b = newBatchId();
    await createBatch(fixture.pool, chatBatch(a, "sim-a", 20));
    await createBatch(fixture.pool, chatBatch(b, "sim-b", 20));
    node.start();
    await completed(a);
    await completed(b);
    // Before, each loop claimed up to 4 from the same count of calls in flight, and 8 calls ran at once.
    expect(node.sim.stats().maxInFlight).toBeLessThanOrEqual(4);
    expect(node.sim.stats().requests).toBe(40);
  });

  it("gives a node's freed slots to each model with work in turn, so a small batch does not wait for a big one of another model", async () => {
    const node = await startNode("w-node-turns");
    const big = newBatchId();
    await createBatch(fixture.pool, chatBatch(big, "sim-a", 200));
    node.start();
    await until("the big batch's calls filling the node", () => node.sim.stats().inFlight === 4, 10_000);
    const small = newBatchId();
    await createBatch(fixture.pool, chatBatch(small, "sim-b", 20));
    expect((await completed(small)).completed).toBe(20);
    // Freed slots alternate between the models: the small batch's 20 calls end beside about 20 of the big one's.
    // Before, the model whose call ended took its slot back at once, while the other, finding the node full, looked
    // again only a poll (1 s) later: the small batch finished after most of the big one (5 s of calls).
    const bigNow = await getBatch(fixture.pool, "t1", big);
    expect(bigNow!.completed).toBeLessThan(100);
    expect(node.sim.stats().maxInFlight).toBeLessThanOrEqual(4);
  });

  it("lets a model with no work sit out while the node is full: a slot freed by another model's call costs it no claim", async () => {
    const node = await startNode("w-node-idle");
    const a = newBatchId();
    await createBatch(fixture.pool, chatBatch(a, "sim-a", 40));
    node.start();
    await completed(a);
    // 40 calls ended on a full node in ~1 s. An idle model claims at start, then looks again 25 ms after, doubling
    // (6 claims in that second); a slot freed while it waits in line for one costs it one claim at most per look,
    // not one per call's end (40, or 80 with both built-in models taking turns).
    expect(node.claims.get("sim-a")).toBeGreaterThanOrEqual(10);
    expect(node.claims.get("lote-sentiment")).toBeLessThan(20);
  });
});
