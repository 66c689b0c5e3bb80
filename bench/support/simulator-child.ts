/**
 * The simulated backend as its own process for the dispatch benchmark: the real simulator (startSimulator, the
 * code `src/simulator/main.ts` runs), plus a clock on every call it receives. The clock hangs off node's
 * diagnostics channels (`http2.server.stream.start`/`close`, `http.server.request.start` and
 * `http.server.response.finish`), so the simulator itself is not changed and costs the same as in `lote simulate`:
 * one counter and two timestamps per call.
 *
 * argv[2]: latency in ms (fixed). Prints `{"h2c": "h2c://127.0.0.1:PORT", "http1": "http://127.0.0.1:PORT"}` when
 * listening (one port, both protocols), then answers IPC
 * messages from the parent (see simulator-process.ts): "mark" starts a new window, "report" sends its figures,
 * "announce"/"quiet" switch a message per arriving call on or off (latency probes).
 */
import { subscribe } from "node:diagnostics_channel";
import type { IncomingMessage } from "node:http";
import type { IncomingHttpHeaders } from "node:http2";
import { startSimulator } from "../../src/simulator/index.ts";
import { monoMs } from "./clocks.ts";

const latencyMs = Number(process.argv[2] ?? 0);
const sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: latencyMs }, seed: 1 });

let calls = 0;
let firstAt = 0;
let lastAt = 0;
let announce = false;
// Calls in flight, and their sum over arrivals: inFlightSum / calls is the mean concurrency an arriving call
// finds, i.e. how many of the client's slots are really at the backend.
let inFlight = 0;
let inFlightSum = 0;
// When each call arrived, and the sum of how long the simulator held each answered call (arrival to close): at
// a fixed latency L, holdSum / answered - L is what the simulator itself adds (timers firing late, a busy loop).
const arrivedAt = new WeakMap<object, number>();
let answered = 0;
let holdSum = 0;

function arrived(call: object): void {
  const at = monoMs();
  if (calls++ === 0) firstAt = at;
  lastAt = at;
  arrivedAt.set(call, at);
  inFlightSum += ++inFlight;
  if (announce) process.send!({ arrival: at });
}
function answeredNow(call: object): void {
  const at = arrivedAt.get(call);
  if (at === undefined) return;
  arrivedAt.delete(call);
  inFlight--;
  answered++;
  holdSum += monoMs() - at;
}
subscribe("http2.server.stream.start", (message) => {
  const { stream, headers } = message as { stream: object; headers: IncomingHttpHeaders };
  if ((headers[":path"] ?? "").startsWith("/v1/")) arrived(stream);
});
subscribe("http2.server.stream.close", (message) => answeredNow((message as { stream: object }).stream));
subscribe("http.server.request.start", (message) => {
  const { request } = message as { request: IncomingMessage };
  if ((request.url ?? "").startsWith("/v1/")) arrived(request);
});
subscribe("http.server.response.finish", (message) => answeredNow((message as { request: object }).request));

process.on("message", (m: { cmd: "mark" | "report" | "announce" | "quiet" }) => {
  if (m.cmd === "mark") {
    calls = 0;
    firstAt = lastAt = 0;
    inFlightSum = 0;
    answered = holdSum = 0;
    sim.resetStats();
  } else if (m.cmd === "report") {
    const s = sim.stats();
    process.send!({ report: { calls, firstAt, lastAt, meanInFlight: calls ? inFlightSum / calls : 0, meanHoldMs: answered ? holdSum / answered : 0, maxInFlight: s.maxInFlight, connections: s.connections, byStatus: s.byStatus } });
  } else {
    announce = m.cmd === "announce";
    process.send!({ ack: m.cmd });
  }
});
process.once("disconnect", () => void sim.close().then(() => process.exit(0)));
process.stdout.write(`${JSON.stringify({ h2c: sim.h2cUrl, http1: sim.url })}\n`);
