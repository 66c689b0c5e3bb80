/**
 * `npm run bench:builtin`: how fast the built-in models answer, through the backend the dispatcher calls (request
 * JSON in, reply JSON out). Inputs of 2,000 short sentences (Portuguese and English, each with a number so no two are
 * the same) in one call, to the sentiment classifier and to the embeddings model, timed over several runs after a
 * warm-up. This replaced a test that asserted 2,000 classifications in under a second: a speed target belongs in a
 * benchmark that prints figures, not in a timed test that can fail on a busy machine.
 *
 * Flags: --runs=N (default 10), --inputs=N per call (default 2,000).
 */
import { createBuiltinBackend } from "../src/backends/builtin/index.ts";
import type { EndpointPath } from "../src/backends/backend.ts";

const flag = (name: string, dflt: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split("=")[1] ?? dflt);
const runs = flag("runs", 10);
const inputsPerCall = flag("inputs", 2_000);

const sentences = [
  "Eu amo estudar IA!", "Estou muito cansado hoje", "Esse filme foi terrível", "O atendimento foi excelente e rápido",
  "Não gostei nada do final", "I love this new phone", "The delivery was late again", "Not bad at all, honestly",
];
const inputs = Array.from({ length: inputsPerCall }, (_, i) => `${sentences[i % sentences.length]} ${i}`);
const backend = createBuiltinBackend({ name: "builtin" });
const signal = new AbortController().signal;

async function time(endpoint: EndpointPath, model: string): Promise<number[]> {
  const body = JSON.stringify({ model, input: inputs });
  const call = async () => {
    const reply = await backend.infer({ endpoint, body, signal });
    if (reply.status !== 200) throw new Error(`Expected 200 from ${model}, got ${reply.status}: ${reply.body}`);
  };
  await call(); // warm-up: JIT, and the lexicon's first lookups
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await call();
    ms.push(performance.now() - started);
  }
  return ms.sort((a, b) => a - b);
}

console.log(`node ${process.version}, ${inputsPerCall.toLocaleString("en")} inputs per call, ${runs} runs after a warm-up`);
for (const [label, endpoint, model] of [["sentiment (/classify)", "/classify", "lote-sentiment"], ["embeddings (/v1/embeddings)", "/v1/embeddings", "lote-embed"]] as const) {
  const ms = await time(endpoint, model);
  const p50 = ms[Math.floor(ms.length / 2)]!;
  console.log(`${label}: p50 ${p50.toFixed(1)} ms per call (min ${ms[0]!.toFixed(1)}, max ${ms[ms.length - 1]!.toFixed(1)}) = ${Math.round(inputsPerCall / (p50 / 1000)).toLocaleString("en")} inputs/s`);
}
