import { create } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { BatchSchema } from "../../gen/lote/v1/batch_pb.ts";
import { BatchService } from "../../gen/lote/v1/batch_service_pb.ts";
import { HealthMonitor } from "../../src/api/health.ts";
import { type ApiServer, listen } from "../../src/api/listen.ts";
import { until } from "../support/until.ts";

const protoDir = new URL("../../proto", import.meta.url).pathname;
const definition = protoLoader.loadSync("grpc/health/v1/health.proto", { includeDirs: [protoDir], enums: String });
const HealthClient = (grpc.loadPackageDefinition(definition) as any).grpc.health.v1.Health as typeof grpc.Client;
type Client = grpc.Client & {
  check(req: object, callback: (err: grpc.ServiceError | null, res: { status: string }) => void): void;
  watch(req: object): grpc.ClientReadableStream<{ status: string }>;
};

const routes = (router: ConnectRouter) => router.service(BatchService, { getBatch: (req) => create(BatchSchema, { id: req.id }) });

function check(client: Client, service: string): Promise<string> {
  return new Promise((resolve, reject) =>
    client.check({ service }, (err, res) => (err ? reject(err) : resolve(res.status))),
  );
}

/** A Watch stream whose statuses collect in `seen`; `ended` resolves with the final gRPC status. */
function watch(client: Client, service: string) {
  const call = client.watch({ service });
  const seen: string[] = [];
  call.on("data", (res: { status: string }) => seen.push(res.status));
  call.on("error", () => {});
  const ended = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
  return { call, seen, ended };
}


describe("grpc.health.v1.Health", () => {
  let server: ApiServer;
  let client: Client;
  const reporter = { healthy: true, check: async () => reporter.healthy };
  beforeAll(async () => {
    server = await listen({ port: 0, routes, health: reporter, healthPollMs: 20, logger: pino({ level: "silent" }) });
    client = new HealthClient(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure()) as Client;
  });
  afterAll(async () => {
    client.close();
    await server.close(1000);
  });

  it("checks SERVING for the server and BatchService, then NOT_SERVING when the reporter says so", async () => {
    reporter.healthy = true;
    expect(await check(client, "")).toBe("SERVING");
    expect(await check(client, "lote.v1.BatchService")).toBe("SERVING");
    reporter.healthy = false;
    expect(await check(client, "")).toBe("NOT_SERVING");
    expect(await check(client, "lote.v1.BatchService")).toBe("NOT_SERVING");
    reporter.healthy = true;
  });

  it("answers NOT_FOUND to a check of an unknown service", async () => {
    await expect(check(client, "lote.v1.Nope")).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it("watches: sends the status at once, then each change", async () => {
    reporter.healthy = true;
    const w = watch(client, "lote.v1.BatchService");
    await until("first status", () => w.seen.length === 1, 5_000, 5);
    reporter.healthy = false;
    await until("NOT_SERVING", () => w.seen.length === 2, 5_000, 5);
    reporter.healthy = true;
    await until("SERVING again", () => w.seen.length === 3, 5_000, 5);
    expect(w.seen).toEqual(["SERVING", "NOT_SERVING", "SERVING"]);
    w.call.cancel();
    expect((await w.ended).code).toBe(grpc.status.CANCELLED);
  });

  it("watches an unknown service as SERVICE_UNKNOWN and keeps the stream open", async () => {
    const w = watch(client, "lote.v1.Nope");
    await until("first status", () => w.seen.length === 1, 5_000, 5);
    expect(w.seen).toEqual(["SERVICE_UNKNOWN"]);
    w.call.cancel();
    expect((await w.ended).code).toBe(grpc.status.CANCELLED);
  });
});

describe("health during shutdown", () => {
  it("tells a watcher NOT_SERVING, then ends its stream with UNAVAILABLE", async () => {
    const server = await listen({ port: 0, routes, health: { check: async () => true }, logger: pino({ level: "silent" }) });
    const client = new HealthClient(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure()) as Client;
    const w = watch(client, "");
    await until("first status", () => w.seen.length === 1, 5_000, 5);
    await server.close(2000);
    expect(w.seen).toEqual(["SERVING", "NOT_SERVING"]);
    expect((await w.ended).code).toBe(grpc.status.UNAVAILABLE);
    client.close();
  });
});

describe("HealthMonitor", () => {
  it("counts a reporter that throws or hangs past checkTimeoutMs as NOT_SERVING", async () => {
    const failing = new HealthMonitor({ reporter: { check: () => Promise.reject(new Error("no database")) } });
    expect(await failing.status()).toBe(ServingStatus.NOT_SERVING);
    const hanging = new HealthMonitor({ reporter: { check: () => new Promise(() => {}) }, checkTimeoutMs: 20 });
    expect(await hanging.status()).toBe(ServingStatus.NOT_SERVING);
  });

  it("polls the reporter only while someone watches", async () => {
    let calls = 0;
    const monitor = new HealthMonitor({ reporter: { check: async () => (calls++, true) }, pollMs: 5 });
    const watching = new AbortController();
    const statuses = monitor.watch(watching.signal);
    expect(await statuses.next()).toEqual({ done: false, value: ServingStatus.SERVING });
    expect(monitor.polling).toBe(true);
    await until("two polls after the first check", () => calls >= 3, 5_000, 5);
    watching.abort();
    expect(await statuses.next()).toEqual({ done: true, value: undefined });
    expect(monitor.polling).toBe(false);
  });

  it("reports NOT_SERVING after shutdown whatever the reporter says", async () => {
    const monitor = new HealthMonitor({ reporter: { check: async () => true } });
    expect(await monitor.status()).toBe(ServingStatus.SERVING);
    monitor.shutdown();
    expect(await monitor.status()).toBe(ServingStatus.NOT_SERVING);
  });
});
