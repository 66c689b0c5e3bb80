import { exec } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/database.ts";
import { startLoteProcess, useLoteServer, type LoteProcess } from "../support/lote-process.ts";
import { atPort, bufCurlCommands, curlCommands, type ReadmeCommand } from "./readme-commands.ts";

const execShell = promisify(exec);
const root = new URL("../../", import.meta.url).pathname;

/** The README line called `name`, pointed at `lote`. */
function line(list: readonly ReadmeCommand[], name: string, lote: LoteProcess): string {
  const found = list.find((c) => c.name === name);
  if (!found) throw new Error(`readme-commands.ts has no command named ${name}`);
  return atPort(found.command, lote.port);
}

/** Runs a README line through sh, as a reader would paste it, with $BATCH exported. */
async function shell(command: string, batch = ""): Promise<string> {
  try {
    const { stdout } = await execShell(command, { cwd: root, timeout: 30_000, env: { ...process.env, BATCH: batch } });
    return stdout;
  } catch (error: any) {
    throw new Error(`\`${command}\` failed (exit ${error.code}): ${error.stderr}`);
  }
}

/** The JSON documents buf curl prints one after another (one per message of a server stream). */
function jsonDocuments(text: string): any[] {
  const docs: any[] = [];
  let depth = 0, start = -1, inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" && depth++ === 0) start = i;
    else if (c === "}" && --depth === 0) docs.push(JSON.parse(text.slice(start, i + 1)));
  }
  return docs;
}

const bufCurl = (name: string, lote: LoteProcess, batch?: string) => shell(line(bufCurlCommands, name, lote), batch);
const labels = (results: any[]) => Object.fromEntries(results.map((r) => [r.customId, r.response.body.data[0].label]));
const expectedLabels = { s0: "positive", s1: "negative", s2: "negative" };
const batchMethods = ["CreateBatch", "GetBatch", "ListBatches", "CancelBatch", "StreamResults", "WatchBatch", "RunBatch", "RetryBatch", "EstimateBatch"];

describe("README commands against a serving node (buf curl over gRPC with reflection only, curl over Connect)", () => {
  const fixture = useLoteServer();
  let lote: LoteProcess;
  let batch: string;
  beforeAll(() => {
    lote = fixture.lote;
  });

  it("lists the services from reflection: BatchService, health and both reflection versions", async () => {
    const services = (await bufCurl("list-services", lote)).trim().split("\n");
    expect(services).toEqual(expect.arrayContaining([
      "lote.v1.BatchService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
    ]));
  });

  it("lists every BatchService method from reflection", async () => {
    const methods = (await bufCurl("list-methods", lote)).trim().split("\n");
    expect(methods).toEqual(expect.arrayContaining(batchMethods.map((m) => `lote.v1.BatchService/${m}`)));
  });

  it("answers the health check with SERVING", async () => {
    expect(JSON.parse(await bufCurl("Health/Check", lote))).toEqual({ status: "SERVING" });
  });

  it("CreateBatch queues the three sentences on the classify endpoint", async () => {
    const created = JSON.parse(await bufCurl("CreateBatch", lote));
    expect(created.id).toMatch(/^batch_[0-9a-z]{26}$/);
    expect(created.endpoint).toBe("ENDPOINT_CLASSIFY");
    expect(created.model).toBe("lote-sentiment");
    expect(created.requestCounts.total).toBe("3");
    batch = created.id;
  });

  it("WatchBatch prints the batch on every change and ends once it is COMPLETED", async () => {
    const updates = jsonDocuments(await bufCurl("WatchBatch", lote, batch)).map((m) => m.batch);
    expect(updates.length).toBeGreaterThanOrEqual(1);
    expect(updates.every((b) => b.id === batch)).toBe(true);
    expect(updates.at(-1).status).toBe("BATCH_STATUS_COMPLETED");
    expect(updates.at(-1).requestCounts.completed).toBe("3");
  });

  it("GetBatch shows the finished batch with its timestamps", async () => {
    const got = JSON.parse(await bufCurl("GetBatch", lote, batch));
    expect(got).toMatchObject({ id: batch, status: "BATCH_STATUS_COMPLETED", requestCounts: { total: "3", completed: "3" } });
    expect(Date.parse(got.completedAt)).toBeGreaterThanOrEqual(Date.parse(got.createdAt));
  });

  it("StreamResults prints one result per sentence with its label", async () => {
    const results = jsonDocuments(await bufCurl("StreamResults", lote, batch)).map((m) => m.result);
    expect(results).toHaveLength(3);
    expect(results.every((r) => r.response.statusCode === 200 && typeof r.cursor === "string")).toBe(true);
    expect(labels(results)).toEqual(expectedLabels);
  });

  it("ListBatches shows the batch, newest first", async () => {
    const listed = JSON.parse(await bufCurl("ListBatches", lote));
    expect(listed.batches.map((b: any) => b.id)).toContain(batch);
  });

  it("EstimateBatch estimates tokens per request without queueing anything", async () => {
    const before = JSON.parse(await bufCurl("ListBatches", lote)).batches.length;
    const estimate = JSON.parse(await bufCurl("EstimateBatch", lote));
    expect(estimate.model).toBe("lote-sentiment");
    expect(estimate.requests.map((r: any) => r.customId)).toEqual(["s0", "s1", "s2"]);
    expect(Number(estimate.totalInputTokens)).toBeGreaterThan(0);
    expect(JSON.parse(await bufCurl("ListBatches", lote)).batches.length).toBe(before);
  });

  it("RunBatch returns every result inline, in input order", async () => {
    const ran = JSON.parse(await bufCurl("RunBatch", lote));
    // RunBatch answers once every result is in, which can be before the batch itself is finalized.
    expect(ran.batch).toMatchObject({ id: expect.stringMatching(/^batch_/), requestCounts: { total: "3" } });
    expect(ran.results.map((r: any) => r.customId)).toEqual(["s0", "s1", "s2"]);
    expect(labels(ran.results)).toEqual(expectedLabels);
  });

  // Needs HTTP/1.1 on the gRPC port (the one-port listener serves h2c and HTTP/1.1 by sniffing the preface).
  it("plain curl runs a batch over Connect JSON on HTTP/1.1", async () => {
    const ran = JSON.parse(await shell(line(curlCommands, "RunBatch", lote)));
    expect(ran.batch).toMatchObject({ id: expect.stringMatching(/^batch_/), requestCounts: { total: "3" } });
    expect(ran.results.map((r: any) => r.customId)).toEqual(["s0", "s1", "s2"]);
    expect(labels(ran.results)).toEqual(expectedLabels);
  });
});

// An API-only node runs no worker, so its batches stay unstarted until cancelled: CancelBatch meets a batch that is
// certainly not terminal, with nothing running, and moves it straight to CANCELLED (see src/store/cancel-batch.ts).
describe("README commands for CancelBatch and RetryBatch against an API-only node", () => {
  let db: TestDatabase;
  let api: LoteProcess;
  let batch: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    api = await startLoteProcess({ databaseUrl: db.url, role: "api" });
    batch = JSON.parse(await bufCurl("CreateBatch", api)).id;
  });
  afterAll(async () => {
    await api?.stop();
    await db?.drop();
  });

  it("CancelBatch cancels a batch nothing has run yet, straight to CANCELLED", async () => {
    const cancelled = JSON.parse(await bufCurl("CancelBatch", api, batch));
    expect(cancelled).toMatchObject({ id: batch, status: "BATCH_STATUS_CANCELLED", requestCounts: { total: "3", cancelled: "3" } });
    // WatchBatch on a terminal batch sends it once and ends.
    expect(jsonDocuments(await bufCurl("WatchBatch", api, batch)).map((m) => m.batch.status)).toEqual(["BATCH_STATUS_CANCELLED"]);
  });

  it("RetryBatch re-queues the cancelled requests as a new batch that points back at the original", async () => {
    const retry = JSON.parse(await bufCurl("RetryBatch", api, batch));
    expect(retry.id).toMatch(/^batch_[0-9a-z]{26}$/);
    expect(retry.id).not.toBe(batch);
    expect(retry.retriedFrom).toBe(batch);
    expect(retry.requestCounts.total).toBe("3");
  });
});
