import { execFile } from "node:child_process";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/database.ts";
import { batchServiceClient, call, collect } from "../support/grpc-client.ts";
import { startLoteProcess, type LoteProcess } from "../support/lote-process.ts";
import { until } from "../support/until.ts";

const run = promisify(execFile);
const root = new URL("../../", import.meta.url).pathname;

async function createKey(databaseUrl: string, tenant: string): Promise<string> {
  const { stdout } = await run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "keys", "create", "--tenant", tenant], {
    cwd: root, env: { ...process.env, DATABASE_URL: databaseUrl },
  });
  return stdout.trim();
}

function bearer(key: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${key}`);
  return md;
}

describe("API keys and tenants", () => {
  let db: TestDatabase;
  let lote: LoteProcess;
  let client: any;
  let keyA: string;
  let keyB: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    lote = await startLoteProcess({ databaseUrl: db.url, env: { LOTE_AUTH_REQUIRED: "true" } });
    [keyA, keyB] = await Promise.all([createKey(db.url, "acme"), createKey(db.url, "globex")]);
    client = batchServiceClient(`127.0.0.1:${lote.port}`);
  });
  afterAll(async () => {
    client?.close();
    await lote?.stop();
    await db?.drop();
  });

  const request = { endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"bom"}') }] };

  it("refuses a call without a key, or with an unknown one, as UNAUTHENTICATED", async () => {
    await expect(call(client, "listBatches", {})).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    await expect(call(client, "listBatches", {}, bearer("lote_not-a-key"))).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
  });

  it("keeps each tenant's batches invisible to every other tenant", async () => {
    const batch = await call(client, "createBatch", request, bearer(keyA));
    expect((await call(client, "getBatch", { id: batch.id }, bearer(keyA))).id).toBe(batch.id);
    await expect(call(client, "getBatch", { id: batch.id }, bearer(keyB))).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(call(client, "cancelBatch", { id: batch.id }, bearer(keyB))).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(collect(client.streamResults({ batchId: batch.id }, bearer(keyB)))).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(collect(client.watchBatch({ id: batch.id }, bearer(keyB)))).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    const listedByB = await call(client, "listBatches", {}, bearer(keyB));
    expect(listedByB.batches.map((b: any) => b.id)).not.toContain(batch.id);
    const listedByA = await call(client, "listBatches", {}, bearer(keyA));
    expect(listedByA.batches.map((b: any) => b.id)).toContain(batch.id);
  });

  it("scopes request_id idempotency to the tenant", async () => {
    const a = await call(client, "createBatch", { ...request, requestId: "same" }, bearer(keyA));
    const b = await call(client, "createBatch", { ...request, requestId: "same" }, bearer(keyB));
    expect(b.id).not.toBe(a.id);
  });

  it("never writes a key into its logs", () => {
    expect(lote.logs()).not.toContain(keyA);
    expect(lote.logs()).not.toContain(keyB);
  });
  it("lists keys without showing them, and stops accepting a revoked one at once on every node", async () => {
    const lote2 = await startLoteProcess({ databaseUrl: db.url, role: "api", env: { LOTE_AUTH_REQUIRED: "true" } });
    const client2 = batchServiceClient(`127.0.0.1:${lote2.port}`);
    try {
      const cli = (...args: string[]) => run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "keys", ...args], {
        cwd: root, env: { ...process.env, DATABASE_URL: db.url },
      });
      const key = (await cli("create", "--tenant", "initech", "--label", "ci")).stdout.trim();
      // Both nodes have the key cached: each has answered a call with it.
      for (const c of [client, client2]) expect((await call(c, "listBatches", {}, bearer(key))).batches).toEqual([]);
      const listed = JSON.parse((await cli("list", "--tenant", "initech", "--json")).stdout);
      expect(listed).toEqual([expect.objectContaining({ tenantId: "initech", label: "ci", revokedAt: null })]);
      expect(listed[0].id).toMatch(/^[0-9a-f]{12}$/);
      expect(JSON.stringify(listed)).not.toContain(key);
      expect((await cli("list")).stdout).toMatch(new RegExp(`^${listed[0].id}\\s+initech\\s+valid\\s`, "m"));
      expect((await cli("revoke", "--tenant", "initech", "--label", "ci")).stdout).toBe(`revoked ${listed[0].id}\n`);
      // Within the notification's way to each node, far under the cache's 30 s.
      for (const c of [client, client2]) {
        await until("the key refused", () => call(c, "listBatches", {}, bearer(key)).then(() => undefined, (e: grpc.ServiceError) => e.code === grpc.status.UNAUTHENTICATED), 5_000, 50);
      }
      // Nothing left to revoke, and a revoke must say which keys.
      const again = await cli("revoke", "--tenant", "initech", "--all").then(() => undefined, (e: { code: number; stderr: string }) => e);
      expect(again).toMatchObject({ code: 1, stderr: 'lote: no valid key of tenant "initech" matched\n' });
      const unspecific = await cli("revoke", "--tenant", "initech").then(() => undefined, (e: { code: number }) => e);
      expect(unspecific?.code).toBe(2);
      // The other tenants' keys still work.
      expect((await call(client, "listBatches", {}, bearer(keyA))).batches).toBeDefined();
    } finally {
      client2.close();
      await lote2.stop();
    }
  });
  it("revokes no key when an --id prefix matches several of the tenant's keys, and names the ones it matched", async () => {
    const pool = new pg.Pool({ connectionString: db.url });
    const cli = (...args: string[]) => run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "keys", ...args], {
      cwd: root, env: { ...process.env, DATABASE_URL: db.url },
    });
    const valid = async () => (await pool.query("SELECT count(*)::int AS n FROM lote.api_keys WHERE tenant_id = 'hooli' AND revoked_at IS NULL")).rows[0].n;
    try {
      // Two keys whose ids share their first four digits (set by hand: random ones would take ~300 keys to collide).
      await pool.query("INSERT INTO lote.tenants (id) VALUES ('hooli') ON CONFLICT DO NOTHING");
      for (const hex of ["abcd11", "abcd22"]) {
        await pool.query("INSERT INTO lote.api_keys (key_sha256, tenant_id) VALUES (decode($1, 'hex'), 'hooli')", [hex.padEnd(64, "0")]);
      }
      const ambiguous = await cli("revoke", "--tenant", "hooli", "--id", "abcd").then(() => undefined, (e: { code: number; stderr: string }) => e);
      expect(ambiguous).toMatchObject({
        code: 1, stderr: `lote: --id abcd matches 2 valid keys of tenant "hooli" (abcd11000000, abcd22000000); none was revoked: give more of the id's digits\n`,
      });
      expect(await valid()).toBe(2);
      expect((await cli("revoke", "--tenant", "hooli", "--id", "ABCD1")).stdout).toBe("revoked abcd11000000\n");
      expect(await valid()).toBe(1);
    } finally {
      await pool.end();
    }
  });
});

describe("start-up safety", () => {
  it("refuses to run without authentication on a non-loopback address", async () => {
    const err = await run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve"], {
      cwd: root, env: { ...process.env, LOTE_HOST: "0.0.0.0", DATABASE_URL: "postgres://127.0.0.1:1/none" },
    }).then(() => undefined, (e) => e);
    expect(err?.code).toBe(78);
    expect(err?.stderr).toContain("auth_required is false but host is 0.0.0.0");
  });
});
