/**
 * Realistic chat-completions requests for the ingest benchmark: a system prompt (one of a few), a user message of
 * 200-410 characters of varied whole words (about 1 in 20 with non-ASCII text, so UTF-8 paths are exercised),
 * max_tokens and temperature. Seeded, so every run and every machine builds the same bytes.
 */
import { seededRandom } from "../../src/simulator/latency-sampler.ts";

export interface ChatBody {
  model: string;
  messages: { role: "system" | "user"; content: string }[];
  max_tokens: number;
  temperature: number;
}

const systemPrompts = [
  "You are a careful assistant. Answer in plain English, in at most three sentences, and say so when you are unsure.",
  "You classify customer support tickets. Reply with one of: billing, shipping, account, product, other.",
  "You summarise documents for busy engineers. Keep numbers and names exactly as written; no preamble.",
  "Translate the user's text into French. Keep the tone and the formatting; do not add explanations.",
];

const words = (
  "the order arrived late and the box was damaged so I would like a refund or a replacement please " +
  "our quarterly report shows revenue growth of twelve percent driven by new customers in the northern region " +
  "can you explain how the scheduler decides which job runs next when two queues have the same priority " +
  "summarise this paragraph about database indexes partial indexes and why a covering index avoids heap fetches " +
  "my password reset email never came although I checked the spam folder twice yesterday evening " +
  "write a short product description for a waterproof hiking backpack with a thirty litre capacity"
).split(" ");
const nonAscii = ["café", "naïve", "Zürich", "São Paulo", "東京", "😀", "€42", "Ångström", "façade", "Ελλάδα"];

// mulberry32, the simulator's seeded PRNG: good enough to vary text (not for anything secret).
const prng = seededRandom;

/** `count` bodies for `model`, custom ids "req-0" ... "req-<count-1>". */
export function chatRequests(count: number, model: string, seed = 42): { customId: string; body: ChatBody }[] {
  const random = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const out: { customId: string; body: ChatBody }[] = new Array(count);
  for (let n = 0; n < count; n++) {
    const target = 200 + Math.floor(random() * 201);
    const withUnicode = random() < 0.05;
    let text = `Request ${n}:`;
    while (text.length < target) text += " " + (withUnicode && random() < 0.1 ? pick(nonAscii) : pick(words));
    out[n] = {
      customId: `req-${n}`,
      body: {
        model,
        messages: [
          { role: "system", content: pick(systemPrompts) },
          { role: "user", content: text },
        ],
        max_tokens: 64 * (1 + Math.floor(random() * 8)),
        temperature: Math.round(random() * 10) / 10,
      },
    };
  }
  return out;
}
