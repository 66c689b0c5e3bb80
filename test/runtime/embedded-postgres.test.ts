import { mkdtempSync, chmodSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { batchServiceClient, call } from "../support/grpc-client.ts";
import { startLoteProcess } from "../support/lote-process.ts";
import { freePort } from "../support/ports.ts";

describe("running out of the box", () => {
  const dir = mkdtempSync(join(tmpdir(), "lote-embedded-"));
  // As root, PostgreSQL runs as the postgres user, which must be able to enter the directory.
  chmodSync(dir, 0o755);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("starts an embedded PostgreSQL when DATABASE_URL is unset, and keeps batches across restarts", async () => {
    const env = { LOTE_DATA_DIR: join(dir, "pg"), LOTE_EMBEDDED_PG_PORT: String(await freePort()) };
    const first = await startLoteProcess({ databaseUrl: "", env });
    expect(first.logs()).toContain("embedded PostgreSQL started");
    let client = batchServiceClient(`127.0.0.1:${first.port}`);
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY",
      requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"Eu amo estudar IA!"}') }],
    });
    client.close();
    expect(await first.stop()).toBe(0);

    const second = await startLoteProcess({ databaseUrl: "", env });
    try {
      expect(second.logs()).not.toContain("initialising embedded PostgreSQL");
      client = batchServiceClient(`127.0.0.1:${second.port}`);
      const again = await call(client, "getBatch", { id: batch.id });
      expect(again.id).toBe(batch.id);
      client.close();
    } finally {
      expect(await second.stop()).toBe(0);
    }
  });
});
