import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/database.ts";
import { startLoteProcess } from "../support/lote-process.ts";
import { until } from "../support/until.ts";

const run = promisify(execFile);
const root = new URL("../../", import.meta.url).pathname;

describe("lote workers (the worker nodes, read from the database)", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db.drop();
  });

  const lote = async (...args: string[]) =>
    (await run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "workers", ...args], { cwd: root, env: { ...process.env, DATABASE_URL: db.url } })).stdout;

  it("lists a running worker with its models and what it can run of each, and a killed one only with --all once its lease is over", async () => {
    const config = {
      models: [{ name: "sim-model", backend: { kind: "openai", urls: ["h2c://127.0.0.1:9"] }, max_concurrency: 40 }],
      worker: { concurrency: 16, lease_ms: 1_000 },
    };
    const worker = await startLoteProcess({ databaseUrl: db.url, role: "worker", config });
    try {
      const listed = await until("the worker listed", async () => {
        const rows = JSON.parse(await lote("--json"));
        return rows.length === 1 ? rows : undefined;
      }, 10_000);
      expect(listed[0].id).toContain(`_${worker.child.pid}_`);
      expect(listed[0].alive).toBe(true);
      // min(worker.concurrency 16, max_concurrency 40); the built-in models come with every node.
      expect(listed[0].models).toContainEqual({ model: "sim-model", capacity: 16 });
      const text = await lote();
      expect(text.split("\n")[0]).toMatch(/^WORKER\s+STATE\s+STARTED \(UTC\)\s+ALIVE UNTIL \(UTC\)\s+MODELS \(CALLS IT CAN RUN\)$/);
      expect(text).toMatch(new RegExp(`_${worker.child.pid}_\\S*\\s+alive\\s+.*sim-model \\(16\\)`));

      worker.child.kill("SIGKILL");
      await worker.exited;
      // Its row stays (nobody removed it) and stops counting when its 1 s lease is over.
      await until("the killed worker no longer alive", async () => ((await lote()) === "no worker nodes alive\n" ? true : undefined), 10_000);
      const all = JSON.parse(await lote("--all", "--json"));
      expect(all).toHaveLength(1);
      expect(all[0].alive).toBe(false);
      expect(await lote("--all")).toMatch(/\sdead\s/);
    } finally {
      await worker.stop();
    }
  });

  it("lists nothing once a worker stopped cleanly: it removes its own row", async () => {
    const worker = await startLoteProcess({ databaseUrl: db.url, role: "worker", config: {} });
    await until("the worker listed", async () => (JSON.parse(await lote("--json")).length === 1 ? true : undefined), 10_000);
    const pid = worker.child.pid;
    expect(await worker.stop()).toBe(0);
    const all: { id: string }[] = JSON.parse(await lote("--all", "--json"));
    expect(all.filter((w) => w.id.includes(`_${pid}_`))).toEqual([]);
  });
});
