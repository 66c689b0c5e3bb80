import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testPool } from "../support/database.ts";
import { batchServiceClient, call } from "../support/grpc-client.ts";
import { useLoteServer } from "../support/lote-process.ts";
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
  const fixture = useLoteServer({ behindProxy: true });
  let client: any;
  beforeAll(() => {
    client = healthClient(fixture.lote.port);
  });
  afterAll(() => client?.close());

  it("reports SERVING, NOT_SERVING while Postgres is unreachable, and SERVING again when it is back", async () => {
    const proxy = fixture.proxy!;
    expect(await check(client)).toBe("SERVING");
    const port = proxy.port;
    await proxy.cut();
    await until("NOT_SERVING", async () => (await check(client)) === "NOT_SERVING", 20_000, 100);
    await proxy.start(port);
    await until("SERVING again", async () => (await check(client)) === "SERVING", 20_000, 100);
  });
});

describe("health checks while Postgres hangs", () => {
  const fixture = useLoteServer({ role: "api", behindProxy: true });
  let client: any;
  beforeAll(() => {
    client = healthClient(fixture.lote.port);
  });
  afterAll(() => client?.close());

  it("share one ping, so probes that keep coming hold at most one connection of the API pool", async () => {
    const proxy = fixture.proxy!;
    expect(await check(client)).toBe("SERVING");
    // Postgres hung: the open connections pass nothing, and new ones are accepted but never answered.
    proxy.freeze();
    proxy.hold();
    // Two waves of probes, as several probers every second or two would send. Each check gives up after 2 s; before,
    // each one's ping stayed behind in its own pool connection for query_timeout_ms (10 s): 24 probes, 20 connections.
    for (let wave = 0; wave < 2; wave++) {
      const statuses = await Promise.all(Array.from({ length: 12 }, () => check(client)));
      expect(statuses).toEqual(Array(12).fill("NOT_SERVING"));
    }
    // The one ping waits on the connection that was idle (frozen) or on one new connection (held).
    expect(proxy.heldOpen).toBeLessThanOrEqual(1);
    proxy.release();
    // The shared ping gives up after query_timeout_ms and the next one gets through.
    await until("SERVING again", async () => (await check(client)) === "SERVING", 20_000, 100);
  });
});

describe("reads when Postgres goes silent", () => {
  const fixture = useLoteServer({ role: "api", config: { query_timeout_ms: 1_000 }, behindProxy: true });
  let client: any;
  beforeAll(() => {
    client = batchServiceClient(`127.0.0.1:${fixture.lote.port}`);
  });
  afterAll(() => client?.close());

  it("answers UNAVAILABLE, then reads again over new connections, when its connections go silent as in a failover", async () => {
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"bom"}') }],
    });
    // Several pool connections open and idle, all of them frozen next: no data, no FIN, no RST. Before query
    // timeouts each read sent into one waited ~15 minutes for TCP, and held its pool connection as long.
    await Promise.all(Array.from({ length: 8 }, () => call(client, "getBatch", { id: batch.id })));
    expect(fixture.proxy!.freeze()).toBeGreaterThanOrEqual(2);
    const deadline = () => ({ deadline: Date.now() + 3_000 });
    const codes: number[] = [];
    const read = await until("a read answered over a new connection", async () =>
      call(client, "getBatch", { id: batch.id }, undefined, deadline()).catch((err: grpc.ServiceError) => void codes.push(err.code)), 20_000, 50);
    expect(read.id).toBe(batch.id);
    // The reads that met a frozen connection were told to retry (the server gave up after 1 s), not left to the
    // client's deadline.
    expect(codes.length).toBeGreaterThanOrEqual(1);
    expect(new Set(codes)).toEqual(new Set([grpc.status.UNAVAILABLE]));
    const again = await Promise.all(Array.from({ length: 8 }, () => call(client, "getBatch", { id: batch.id }, undefined, deadline())));
    expect(again.every((b) => b.id === batch.id)).toBe(true);
  });

  it("creates a small batch again soon after its connections go silent, answering UNAVAILABLE meanwhile", async () => {
    const small = () => call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"bom"}') }],
    }, undefined, { deadline: Date.now() + 3_000 });
    await Promise.all(Array.from({ length: 4 }, small));
    expect(fixture.proxy!.freeze()).toBeGreaterThanOrEqual(1);
    // A small batch goes in over the pool whose queries time out; on the bulk pool it waited for TCP.
    const codes: number[] = [];
    const created = await until("a batch created over a new connection", async () =>
      small().catch((err: grpc.ServiceError) => void codes.push(err.code)), 20_000, 50);
    expect(created.status).toBe("BATCH_STATUS_IN_PROGRESS");
    expect(codes.every((c) => c === grpc.status.UNAVAILABLE)).toBe(true);
  });
});

describe("reads when Postgres accepts connections but never answers them", () => {
  const fixture = useLoteServer({ role: "api", config: { query_timeout_ms: 1_000 }, behindProxy: true });
  let client: any;
  beforeAll(() => {
    client = batchServiceClient(`127.0.0.1:${fixture.lote.port}`);
  });
  afterAll(() => client?.close());

  it("answers UNAVAILABLE after query_timeout_ms for a read that needs a new connection, not at the client's deadline", async () => {
    const proxy = fixture.proxy!;
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"bom"}') }],
    });
    // A hung server (or a pooler in front of it): the open connections pass nothing, new ones are accepted and then
    // never answered. 25 reads: more than the pool's 20 connections, so most of them need a new one.
    proxy.freeze();
    proxy.hold();
    const codes = await Promise.all(Array.from({ length: 25 }, () =>
      call(client, "getBatch", { id: batch.id }, undefined, { deadline: Date.now() + 6_000 }).then(() => 0, (err: grpc.ServiceError) => err.code)));
    // Before, a connection being made had no deadline: those reads waited for the client's (DEADLINE_EXCEEDED), or
    // for good without one, each holding a place in the pool.
    expect(new Set(codes)).toEqual(new Set([grpc.status.UNAVAILABLE]));
    expect(proxy.heldOpen).toBeGreaterThanOrEqual(1);
    proxy.release();
    const read = await until("a read answered again", async () =>
      call(client, "getBatch", { id: batch.id }, undefined, { deadline: Date.now() + 3_000 }).catch(() => undefined), 20_000, 100);
    expect(read.id).toBe(batch.id);
  });
});

describe("writes that wait too long on Postgres", () => {
  const fixture = useLoteServer({ role: "api", config: { query_timeout_ms: 1_000 } });
  let client: any;
  let pool: pg.Pool;
  beforeAll(() => {
    client = batchServiceClient(`127.0.0.1:${fixture.lote.port}`);
    pool = testPool(fixture.db.url);
  });
  afterAll(async () => {
    client?.close();
    await pool?.end();
  });

  it("answers UNAVAILABLE for a CreateBatch that waited past its timeout on a lock, and leaves no batch behind", async () => {
    const batches = async () => (await pool.query("SELECT count(*)::int AS n FROM lote.batches")).rows[0].n as number;
    const before = await batches();
    // A lock that holds back every insert into lote.batches, as a long transaction or a busy disk would.
    const locker = await pool.connect();
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE lote.batches IN SHARE MODE");
      const err: grpc.ServiceError = await call(client, "createBatch", {
        endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"bom"}') }],
      }, undefined, { deadline: Date.now() + 10_000 }).then(() => { throw new Error("accepted"); }, (e) => e);
      expect(err.code).toBe(grpc.status.UNAVAILABLE);
      await locker.query("COMMIT");
    } finally {
      locker.release();
    }
    // Nothing of lote's is still at work in this database: a statement still waiting would insert once the lock
    // came free. Before, Postgres was not told of the timeout, and the batch appeared after the answer.
    await until("no statement of the API node running", async () => (await pool.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'lote' AND state = 'active'")).rows[0].n === 0);
    expect(await batches()).toBe(before);
  });
});

describe("logs while Postgres is down", () => {
  const fixture = useLoteServer({ role: "api", behindProxy: true });
  let client: any;
  beforeAll(() => {
    client = batchServiceClient(`127.0.0.1:${fixture.lote.port}`);
  });
  afterAll(() => client?.close());

  it("warns of the same failed call once every 10 s, not once per call", async () => {
    const proxy = fixture.proxy!;
    const port = proxy.port;
    await proxy.cut();
    const codes = await Promise.all(Array.from({ length: 40 }, (_, i) =>
      call(client, "getBatch", { id: `batch_${i}` }).then(() => 0, (err: grpc.ServiceError) => err.code)));
    expect(new Set(codes)).toEqual(new Set([grpc.status.UNAVAILABLE]));
    const lines = () => fixture.lote.logs().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    // Each call's own "rpc" line is written after its warning: once all 40 are there, so are the warnings.
    await until("the 40 calls logged", () => lines().filter((l) => l.msg === "rpc" && l.procedure === "lote.v1.BatchService/GetBatch").length >= 40 || undefined);
    const failed = lines().filter((l) => l.msg === "call failed");
    // Before, 40 identical warnings: a Postgres down at 1,000 calls/s wrote 1,000 a second.
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ procedure: "GetBatch", code: "Unavailable" });
    await proxy.start(port);
  });
});
