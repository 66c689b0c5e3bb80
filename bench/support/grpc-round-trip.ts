/**
 * A gRPC unary round trip with nothing behind it: a connect-node server answering at once and a client, both in
 * this process. Back to back, it is what the gRPC stack costs on this machine; 20 ms apart, what coming back from
 * idle adds (on the 2026-12-06 VM 1.26 ms -> 3.03 ms, in one process, with no other process to wake). (c) is made
 * of such hops after 20 ms idle (client -> lote -> Postgres -> lote -> Postgres -> lote -> simulator), so this line
 * says how much of (c) a machine sets.
 */
import { createServer, type ServerHttp2Session } from "node:http2";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import { BatchService } from "../../gen/lote/v1/batch_service_pb.ts";
import { percentile } from "./submit-latency.ts";

export interface RoundTrip {
  /** p50 of 200 round trips back to back, and of 100 sent 20 ms apart, ms. */
  readonly backToBackMs: number;
  readonly idleMs: number;
}

export async function grpcRoundTrip(): Promise<RoundTrip> {
  const server = createServer(connectNodeAdapter({
    routes: (router) => router.rpc(BatchService.method.getBatch, () => { throw new ConnectError("calibration", Code.NotFound); }),
  }));
  const sessions: ServerHttp2Session[] = [];
  server.on("session", (s) => sessions.push(s));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  const client = createClient(BatchService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
  const time = async (n: number, gapMs: number) => {
    const ms: number[] = [];
    for (let i = 0; i < n; i++) {
      if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
      const started = performance.now();
      await client.getBatch({ id: "calibration" }).catch(() => {});
      ms.push(performance.now() - started);
    }
    return percentile(ms.sort((a, b) => a - b), 50);
  };
  await time(50, 0); // warm-up: the session, the JIT
  const figures = { backToBackMs: await time(200, 0), idleMs: await time(100, 20) };
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    // close() waits for open sessions; the client's idle one would keep it open.
    for (const s of sessions) s.destroy();
  });
  return figures;
}
