import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/database.ts";
import { startLoteProcess, type LoteProcess } from "../support/lote-process.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";
import { until } from "../support/until.ts";

const protoDir = new URL("../../proto/", import.meta.url).pathname;

function healthClient(port: number): any {
  const def = protoLoader.loadSync("grpc/health/v1/health.proto", { includeDirs: [protoDir], enums: String });
  const pkg = grpc.loadPackageDefinition(def) as any;
  return new pkg.grpc.health.v1.Health(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}

const check = (client: any): Promise<string> =>
  new Promise((resolve, reject) => client.check({ service: "" }, (err: Error | null, res: any) => (err ? reject(err) : resolve(res.status))));


describe("health follows Postgres", () => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  let lote: LoteProcess;
  let client: any;

  beforeAll(async () => {
    db = await createTestDatabase();
    const url = new URL(db.url);
    proxy = new TcpProxy({ host: url.hostname, port: Number(url.port || 5432) });
    const port = await proxy.start();
    url.hostname = "127.0.0.1";
    url.port = String(port);
    lote = await startLoteProcess({ databaseUrl: url.toString() });
    client = healthClient(lote.port);
  });
  afterAll(async () => {
    client?.close();
    await lote?.stop();
    await proxy?.cut();
    await db?.drop();
  });

  it("reports SERVING, NOT_SERVING while Postgres is unreachable, and SERVING again when it is back", async () => {
    expect(await check(client)).toBe("SERVING");
    const port = proxy.port;
    await proxy.cut();
    await until("NOT_SERVING", async () => (await check(client)) === "NOT_SERVING", 20_000, 100);
    await proxy.start(port);
    await until("SERVING again", async () => (await check(client)) === "SERVING", 20_000, 100);
  });
});
