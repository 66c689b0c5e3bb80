/**
 * "The wire limit": the same calls lote makes, from a process that does nothing else. It uses lote's own
 * OpenAI backend (src/backends/openai, h2c over node:http2, the code path the dispatcher calls), `concurrency`
 * calls in flight, each worker taking the next body as soon as its call returns. No Postgres, no bookkeeping:
 * what is left is the HTTP/2 client and the simulator sharing the machine.
 *
 * argv: url concurrency count bodies ("chat" | "compact") [streamsPerSession]. Prints one JSON line with monoMs()
 * times.
 */
import { createOpenAIBackend } from "../../src/backends/openai/index.ts";
import { benchBodies } from "./bench-bodies.ts";
import { monoMs } from "./clocks.ts";

const [url, concurrencyText, countText, kind, streamsText] = process.argv.slice(2);
const concurrency = Number(concurrencyText);
const count = Number(countText);
const bodies = benchBodies(count, "bench-chat", kind === "compact" ? "compact" : "chat");
const streamsPerSession = streamsText === undefined ? undefined : Number(streamsText);
const backend = createOpenAIBackend({ name: "openai:bare", urls: [url!], maxConcurrency: concurrency, streamsPerSession });
const signal = new AbortController().signal;

let next = 0;
let ok = 0;
let failed = 0;
let firstAt = 0;
let lastAt = 0;
const startedAt = monoMs();
async function worker(): Promise<void> {
  while (next < count) {
    const body = bodies[next++]!;
    const reply = await backend.infer({ endpoint: "/v1/chat/completions", body, signal });
    if (reply.status === 200) ok++;
    else failed++;
    lastAt = monoMs();
    if (firstAt === 0) firstAt = lastAt;
  }
}
await Promise.all(Array.from({ length: concurrency }, worker));
await backend.close();
process.stdout.write(`${JSON.stringify({ startedAt, firstAt, lastAt, ok, failed })}\n`);
