import { spawn } from "node:child_process";
import { once } from "node:events";
import { connect, type ClientHttp2Session } from "node:http2";
import { connect as netConnect } from "node:net";
import { createInterface } from "node:readline";
import { Agent, request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { startSimulator, type Simulator, type SimulatorOptions } from "../src/simulator/index.ts";
import { freePort } from "./support/ports.ts";

const sims: Simulator[] = [];
const agents: Agent[] = [];
const sessions: ClientHttp2Session[] = [];

async function simulator(o: SimulatorOptions = {}): Promise<Simulator> {
  const s = await startSimulator({ seed: 1, ...o });
  sims.push(s);
  return s;
}

afterEach(async () => {
  for (const s of sessions.splice(0)) s.destroy();
  await Promise.all(agents.splice(0).map((a) => a.destroy()));
  await Promise.all(sims.splice(0).map((s) => s.close()));
});

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** HTTP/1.1 through undici: many sockets, so concurrent calls really are concurrent. */
async function http1(sim: Simulator, method: "GET" | "POST", path: string, body?: object, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Answer> {
  const agent = new Agent({ connections: 100 });
  agents.push(agent);
  const r = await request(`${sim.url}${path}`, { method, dispatcher: agent, body: body && JSON.stringify(body), headers, signal });
  return { status: r.statusCode, headers: r.headers, body: await r.body.text() };
}

/** HTTP/2 with prior knowledge over one session. */
function h2(session: ClientHttp2Session, path: string, body?: object, signal?: AbortSignal): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":method": body ? "POST" : "GET", ":path": path }, { signal, endStream: !body });
    let text = "";
    let headers: Record<string, string | string[] | undefined> = {};
    stream.setEncoding("utf8");
    stream.on("response", (h) => (headers = h));
    stream.on("data", (c: string) => (text += c));
    stream.on("end", () => resolve({ status: Number(headers[":status"]), headers, body: text }));
    stream.on("error", reject);
    if (body) stream.end(JSON.stringify(body));
  });
}

/** A POST whose headers go out at once and whose body follows `delayMs` later; resolves with the status. */
async function slowBodyH2(session: ClientHttp2Session, body: string, delayMs: number): Promise<number> {
  const stream = session.request({ ":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json" });
  const status = new Promise<number>((resolve, reject) => {
    stream.on("response", (h) => resolve(Number(h[":status"])));
    stream.on("error", reject);
  });
  setTimeout(() => stream.end(body), delayMs);
  const answer = await status;
  stream.resume();
  return answer;
}

/** The same over a raw HTTP/1.1 socket, so nothing buffers the head until the body is there. */
async function slowBodyHttp1(port: number, body: string, delayMs: number): Promise<number> {
  const socket = netConnect(port, "127.0.0.1");
  await once(socket, "connect");
  socket.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n`);
  setTimeout(() => socket.write(body), delayMs);
  const [head] = (await once(socket, "data")) as [Buffer];
  socket.destroy();
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(head.toString("latin1"))?.[1]);
}

function h2session(sim: Simulator): ClientHttp2Session {
  const s = connect(sim.url);
  sessions.push(s);
  return s;
}

async function waitFor(check: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("simulator", () => {
  it("answers every endpoint in its OpenAI shape with usage, echoing the model", async () => {
    const sim = await simulator();
    const chat = await http1(sim, "POST", "/v1/chat/completions", { model: "llama-3", messages: [{ role: "user", content: "hello" }] });
    expect(chat.status).toBe(200);
    expect(chat.headers["x-request-id"]).toMatch(/^sim-\d+$/);
    const c = JSON.parse(chat.body);
    expect(c).toMatchObject({ object: "chat.completion", model: "llama-3", choices: [{ message: { role: "assistant" }, finish_reason: "stop" }] });
    expect(c.usage.total_tokens).toBe(c.usage.prompt_tokens + c.usage.completion_tokens);

    const completion = JSON.parse((await http1(sim, "POST", "/v1/completions", { model: "m", prompt: "x" })).body);
    expect(completion).toMatchObject({ object: "text_completion", model: "m", usage: { completion_tokens: 16 } });
    const embeddings = JSON.parse((await http1(sim, "POST", "/v1/embeddings", { model: "e", input: ["a", "b", "c"] })).body);
    expect(embeddings.data.map((d: { index: number }) => d.index)).toEqual([0, 1, 2]);
    expect(embeddings.data[0].embedding).toHaveLength(8);
    const responses = JSON.parse((await http1(sim, "POST", "/v1/responses", { model: "r", input: "hi" })).body);
    expect(responses).toMatchObject({ object: "response", status: "completed", model: "r", usage: { output_tokens: 16 } });
    expect(responses.usage.total_tokens).toBe(responses.usage.input_tokens + 16);
    const classify = JSON.parse((await http1(sim, "POST", "/classify", { model: "c", input: ["good", "bad"] })).body);
    expect(classify.data).toHaveLength(2);
    expect(classify.data[0]).toMatchObject({ label: "positive", num_classes: 2 });

    expect(JSON.parse((await http1(sim, "GET", "/v1/models")).body).data[0].id).toBe("sim-model");
    expect((await http1(sim, "GET", "/health")).status).toBe(200);
    expect((await http1(sim, "POST", "/v1/nope", {})).status).toBe(404);
    // Only inference calls count: probes and unknown paths must not move the numbers tests assert on.
    expect(sim.stats()).toMatchObject({ requests: 5, byStatus: { 200: 5 } });
  });

  it("answers `status` to the first `fail_first` attempts of a body, then succeeds", async () => {
    const sim = await simulator();
    const body = { model: "m", sim: { fail_first: 2, status: 429, retry_after: "1" } };
    const first = await http1(sim, "POST", "/v1/chat/completions", body);
    expect([first.status, first.headers["retry-after"]]).toEqual([429, "1"]);
    expect((await http1(sim, "POST", "/v1/chat/completions", body)).status).toBe(429);
    // Another body has its own count.
    expect((await http1(sim, "POST", "/v1/chat/completions", { ...body, n: 2 })).status).toBe(429);
    expect((await http1(sim, "POST", "/v1/chat/completions", body)).status).toBe(200);
    expect(sim.stats().byStatus).toEqual({ 200: 1, 429: 3 });
  });

  it("delays the answer by latency_ms", async () => {
    const sim = await simulator();
    const started = performance.now();
    await http1(sim, "POST", "/v1/chat/completions", { sim: { latency_ms: 60 } });
    expect(performance.now() - started).toBeGreaterThanOrEqual(59);
  });

  // A latency of 1.5 s and a body sent 1.4 s after the headers. Counted from the body's end, the answer comes 2.9 s
  // after the headers at the earliest (two timers, which never fire early); counted from their arrival, at ~1.5 s.
  // The bound of 2.8 s leaves a loaded machine 1.3 s of slack, where 500 ms, 400 ms and 850 ms left it 350 ms.
  describe.each(["h2c", "HTTP/1.1"] as const)("over %s", (protocol) => {
    it("counts the latency from the request's arrival, so a slow body does not add to it", async () => {
      const sim = await simulator({ latency: { kind: "fixed", ms: 1_500 } });
      const body = JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] });
      const started = performance.now();
      const status = protocol === "h2c" ? await slowBodyH2(h2session(sim), body, 1_400) : await slowBodyHttp1(sim.port, body, 1_400);
      const elapsed = performance.now() - started;
      expect(status).toBe(200);
      expect(elapsed).toBeGreaterThanOrEqual(1_499);
      expect(elapsed).toBeLessThan(2_800);
    });
  });

  it("counts maxInFlight exactly under 50 concurrent calls with 20 ms latency", async () => {
    const sim = await simulator({ latency: { kind: "fixed", ms: 20 } });
    const session = h2session(sim);
    const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => h2(session, "/v1/chat/completions", { n: i })));
    expect(answers.every((a) => a.status === 200)).toBe(true);
    expect(sim.stats()).toMatchObject({ requests: 50, inFlight: 0, maxInFlight: 50 });
    // A second wave after the first finished does not raise the peak.
    await Promise.all(Array.from({ length: 10 }, (_, i) => h2(session, "/v1/chat/completions", { n: i })));
    expect(sim.stats().maxInFlight).toBe(50);
  });

  it("keeps abandoned HTTP/1.1 calls in flight until the client goes, then counts them out", async () => {
    const sim = await simulator();
    const ac = new AbortController();
    const calls = Array.from({ length: 50 }, (_, i) =>
      http1(sim, "POST", "/v1/chat/completions", { n: i, sim: { hang: true } }, {}, ac.signal).catch(() => "aborted"));
    await waitFor(() => sim.stats().requests === 50);
    expect(sim.stats()).toMatchObject({ inFlight: 50, maxInFlight: 50, hangs: 50 });
    ac.abort();
    expect(await Promise.all(calls)).toEqual(Array(50).fill("aborted"));
    await waitFor(() => sim.stats().inFlight === 0);
    expect(sim.stats().maxInFlight).toBe(50);
  });

  it("serves HTTP/1.1 and h2c on one port", async () => {
    const sim = await simulator();
    expect((await http1(sim, "POST", "/v1/chat/completions", { model: "a" })).status).toBe(200);
    expect((await h2(h2session(sim), "/v1/chat/completions", { model: "b" })).status).toBe(200);
    expect(sim.stats()).toMatchObject({ requests: 2, connections: 2, byProtocol: { http1: 1, h2: 1 } });
  });

  it("resets one HTTP/2 stream without disturbing the others on its session", async () => {
    const sim = await simulator();
    const session = h2session(sim);
    const [reset, ok] = await Promise.allSettled([
      h2(session, "/v1/chat/completions", { sim: { reset: true } }),
      h2(session, "/v1/chat/completions", { sim: { latency_ms: 20 } }),
    ]);
    expect(reset.status === "rejected" && String(reset.reason)).toContain("NGHTTP2_INTERNAL_ERROR");
    expect(ok.status === "fulfilled" && ok.value.status).toBe(200);
    expect(sim.stats().resets).toBe(1);
  });

  it("draws random faults at the configured rates, the same ones for the same seed", async () => {
    const run = async () => {
      const sim = await simulator({ seed: 42, errorRate: 0.3, rateLimitRate: 0.2, retryAfterSeconds: 7 });
      const session = h2session(sim);
      const statuses: number[] = [];
      for (let i = 0; i < 200; i++) {
        const a = await h2(session, "/v1/chat/completions", { n: i });
        statuses.push(a.status);
        if (a.status === 429) expect(a.headers["retry-after"]).toBe("7");
      }
      return statuses;
    };
    const first = await run();
    expect(await run()).toEqual(first);
    const count = (s: number) => first.filter((x) => x === s).length;
    expect(count(500)).toBeGreaterThan(35);
    expect(count(500)).toBeLessThan(85);
    expect(count(429)).toBeGreaterThan(20);
    expect(count(429)).toBeLessThan(60);
  });

  it("answers 401 without the configured bearer key, and accepts it once given", async () => {
    const sim = await simulator({ requireApiKey: "sk-sim" });
    expect((await http1(sim, "POST", "/v1/chat/completions", {})).status).toBe(401);
    expect((await http1(sim, "POST", "/v1/chat/completions", {}, { authorization: "Bearer sk-sim" })).status).toBe(200);
    expect((await http1(sim, "GET", "/health")).status).toBe(200);
    sim.configure({ requireApiKey: undefined });
    expect((await http1(sim, "POST", "/v1/chat/completions", {})).status).toBe(200);
  });

  it("serves its stats and resets them over HTTP without counting itself", async () => {
    const sim = await simulator();
    await http1(sim, "POST", "/v1/chat/completions", {});
    expect(JSON.parse((await http1(sim, "GET", "/sim/stats")).body)).toMatchObject({ requests: 1, byStatus: { 200: 1 } });
    await http1(sim, "POST", "/sim/reset", {});
    expect(sim.stats()).toMatchObject({ requests: 0, byStatus: {} });
  });

  it("closes with requests still hanging", async () => {
    const sim = await simulator();
    const pending = http1(sim, "POST", "/v1/chat/completions", { sim: { hang: true } }).catch((e: Error) => e);
    await waitFor(() => sim.stats().inFlight === 1);
    await sims.pop()!.close();
    expect(await pending).toBeInstanceOf(Error);
  });

  it("rejects options it cannot honour, saying what it expected", async () => {
    await expect(startSimulator({ errorRate: 2 })).rejects.toThrow("Expected `errorRate` to be a number in [0, 1], got 2");
    await expect(startSimulator({ errorRate: 0.6, resetRate: 0.6 })).rejects.toThrow("to be at most 1");
    await expect(startSimulator({ latency: { kind: "uniform", minMs: 5, maxMs: 1 } })).rejects.toThrow("latency.maxMs");
  });
});

describe("simulator CLI", () => {
  it("runs as `lote simulate` with the README's flags, prints its JSON line when listening and exits 0 on SIGTERM", async () => {
    const port = await freePort();
    // Through the lote command, as the README runs it: its flags are the simulator's, passed through.
    const child = spawn(process.execPath, [
      "--import", "tsx", "src/cli/main.ts", "simulate", "--port", String(port), "--latency", "lognormal:20:200",
      "--error-rate", "0.01", "--rate-limit-rate", "0.01", "--retry-after", "1", "--reset-rate", "0", "--hang-rate", "0",
    ], { cwd: new URL("..", import.meta.url), stdio: ["ignore", "pipe", "inherit"] });
    const [line] = (await once(createInterface({ input: child.stdout! }), "line")) as [string];
    expect(JSON.parse(line)).toMatchObject({ listening: `http://127.0.0.1:${port}` });
    const health = await request(`http://127.0.0.1:${port}/health`);
    expect(health.statusCode).toBe(200);
    await health.body.text();
    child.kill("SIGTERM");
    const [code] = await once(child, "exit");
    expect(code).toBe(0);
  });

  /** Runs `lote simulate` with these flags until it exits: its exit code and what it wrote to stderr. */
  async function loteSimulateFails(args: string[]): Promise<{ code: number | null; stderr: string }> {
    const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "simulate", ...args], {
      cwd: new URL("..", import.meta.url), stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (c) => (stderr += c));
    const [code] = (await once(child, "exit")) as [number | null];
    return { code, stderr };
  }

  it("`lote simulate` on a port already in use exits 1 with one line naming the address, not a stack trace", async () => {
    const busy = await simulator();
    const { code, stderr } = await loteSimulateFails(["--port", String(busy.port)]);
    expect(code).toBe(1);
    expect(stderr).toBe(`lote: simulate: cannot listen on 127.0.0.1:${busy.port}: the address is already in use ` +
      "(another simulator, or another program, listens there); choose another with --port or --host\n");
  });

  it("`lote simulate` with an unknown flag or a bad value exits 2 with one line saying what it expected", async () => {
    const unknown = await loteSimulateFails(["--bogus"]);
    expect(unknown).toEqual({ code: 2, stderr: "lote: simulate: Unknown option '--bogus'\n" });
    const notNumber = await loteSimulateFails(["--port", "abc"]);
    expect(notNumber).toEqual({ code: 2, stderr: 'lote: simulate: Expected `--port` to be a number, got "abc"\n' });
  });

  it("exits 2 with a message on a bad flag value", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "src/simulator/main.ts", "--latency", "gaussian:1"], {
      cwd: new URL("..", import.meta.url), stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (c) => (stderr += c));
    const [code] = await once(child, "exit");
    expect(code).toBe(2);
    expect(stderr).toContain("Expected `--latency`");
  });
});
