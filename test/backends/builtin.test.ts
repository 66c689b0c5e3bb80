import { describe, expect, it } from "vitest";
import { TransportError, type EndpointPath, type InferenceReply } from "../../src/backends/backend.ts";
import { builtinModels, createBuiltinBackend } from "../../src/backends/builtin/index.ts";

const backend = createBuiltinBackend({ name: "builtin", now: () => 1_700_000_000_500 });
const live = new AbortController().signal;

async function call(endpoint: EndpointPath, body: unknown): Promise<InferenceReply> {
  return backend.infer({ endpoint, body: typeof body === "string" ? body : JSON.stringify(body), signal: live });
}

interface Classification {
  index: number;
  label: string;
  probs: number[];
  num_classes: number;
  confidence: number;
  language: string;
}

async function classify(input: string | string[], extra: object = {}): Promise<Classification[]> {
  const reply = await call("/classify", { model: "lote-sentiment", input, ...extra });
  expect(reply.status, reply.body).toBe(200);
  return JSON.parse(reply.body).data;
}

async function embed(input: string | string[], extra: object = {}): Promise<number[][]> {
  const reply = await call("/v1/embeddings", { model: "lote-embed", input, ...extra });
  expect(reply.status, reply.body).toBe(200);
  return JSON.parse(reply.body).data.map((item: { embedding: number[] }) => item.embedding);
}

const cosine = (a: number[], b: number[]): number => a.reduce((sum, x, i) => sum + x * b[i]!, 0);
const norm = (a: number[]): number => Math.sqrt(cosine(a, a));

// The first 27 Portuguese / 25 English sentences were used to choose the lexicon extras; the last 20 of each
// were written afterwards as a held-out check (39/40 right on first run; the miss, "lives", led to `live: 0`).
// Inflections, negation, intensifiers, contrast, emoji-free neutral facts.
const portuguese: Array<[string, string]> = [
  ["Eu amo estudar IA!", "positive"], ["Estou muito cansado hoje", "negative"],
  ["Esse filme foi terrível", "negative"], ["Amei o presente, obrigado!", "positive"],
  ["Adorei a comida desse restaurante", "positive"], ["Odiei o atendimento da loja", "negative"],
  ["Detestamos a viagem inteira", "negative"], ["O serviço foi horrível", "negative"],
  ["Que dia ótimo para passear", "positive"], ["A noite foi maravilhosa", "positive"],
  ["Não gostei do final do livro", "negative"], ["O produto não é bom", "negative"],
  ["Estou muito feliz com o resultado", "positive"], ["Que tristeza, perdi o ônibus de novo", "negative"],
  ["A reunião começa às três horas", "neutral"], ["O livro tem duzentas páginas", "neutral"],
  ["Vou ao mercado amanhã de manhã", "neutral"], ["Esse aplicativo é péssimo e trava o tempo todo", "negative"],
  ["Excelente trabalho, parabéns à equipe", "positive"], ["Fiquei decepcionado com a entrega atrasada", "negative"],
  ["Recomendo muito, produto de ótima qualidade", "positive"], ["O hotel era sujo e barulhento", "negative"],
  ["Nunca vi um show tão incrível", "positive"], ["A casa fica perto da estação", "neutral"],
  ["Ele odeia acordar cedo", "negative"], ["Gostamos muito da apresentação", "positive"],
  ["Isso não é ruim", "positive"],
  ["Que produto maravilhoso, chegou antes do prazo", "positive"], ["A entrega demorou demais e veio quebrado", "negative"],
  ["Adoramos o passeio de barco", "positive"], ["O atendente foi grosseiro e mal educado", "negative"],
  ["Não recomendo esse restaurante", "negative"], ["A aula de hoje foi muito interessante", "positive"],
  ["Estou triste porque meu cachorro está doente", "negative"], ["O trem sai da plataforma dois", "neutral"],
  ["Minha irmã mora em Curitiba", "neutral"], ["Que alegria rever vocês!", "positive"],
  ["Esse celular é uma porcaria", "negative"], ["O jogo foi emocionante do começo ao fim", "positive"],
  ["Fiquei com medo durante o filme", "negative"], ["Comprei pão e leite na padaria", "neutral"],
  ["Os funcionários são simpáticos e atenciosos", "positive"], ["Odiamos esperar duas horas na fila", "negative"],
  ["Ela ficou furiosa com a notícia", "negative"], ["O resultado foi excelente, estou orgulhoso", "positive"],
  ["Não foi nada divertido", "negative"], ["A comida estava deliciosa mas o serviço foi lento", "negative"],
];
const english: Array<[string, string]> = [
  ["I love studying AI!", "positive"], ["I am very tired today", "negative"],
  ["This movie was terrible", "negative"], ["I loved the gift, thank you!", "positive"],
  ["We really enjoyed the food at this restaurant", "positive"], ["I hated the customer service", "negative"],
  ["The trip was awful from start to finish", "negative"], ["What a great day for a walk", "positive"],
  ["The night was wonderful", "positive"], ["I did not like the ending of the book", "negative"],
  ["The product is not good", "negative"], ["I am so happy with the result", "positive"],
  ["The meeting starts at three o'clock", "neutral"], ["The book has two hundred pages", "neutral"],
  ["I will go to the market tomorrow morning", "neutral"], ["This app is horrible and crashes all the time", "negative"],
  ["Excellent work, congratulations to the team", "positive"], ["I was disappointed with the late delivery", "negative"],
  ["Highly recommended, amazing quality", "positive"], ["The hotel was dirty and noisy", "negative"],
  ["Never seen such an incredible show", "positive"], ["The house is near the station", "neutral"],
  ["He hates waking up early", "negative"], ["Sad news, I missed the bus again", "negative"],
  ["This is not bad at all", "positive"],
  ["What a fantastic product, it arrived early", "positive"], ["The delivery took forever and it arrived broken", "negative"],
  ["We adored the boat tour", "positive"], ["The clerk was rude and unhelpful", "negative"],
  ["I do not recommend this restaurant", "negative"], ["Today's class was very interesting", "positive"],
  ["I'm sad because my dog is sick", "negative"], ["The train leaves from platform two", "neutral"],
  ["My sister lives in Boston", "neutral"], ["So glad to see you all again!", "positive"],
  ["This phone is garbage", "negative"], ["The game was thrilling from start to end", "positive"],
  ["I was scared during the movie", "negative"], ["I bought bread and milk at the bakery", "neutral"],
  ["The staff are friendly and helpful", "positive"], ["We hated waiting two hours in line", "negative"],
  ["She was furious about the news", "negative"], ["The result was excellent, I am proud", "positive"],
  ["It was not fun at all", "negative"], ["The food was delicious but the service was slow", "negative"],
];

// Written in audit 9 from what users type to a review classifier, before any of its fixes: everyday negation
// with function words between the negator and the adjective, "ninguém", "so" in short English, contractions,
// slang and emoji. Some are still missed (counterfactuals such as "Could have been better", verbs the lexicon
// lacks such as "Não funciona"): the threshold below is what the model gets, not 100 percent.
const everyday: Array<[string, "pt" | "en", string]> = [
  ["Não foi um filme bom", "pt", "negative"], ["Não achei o filme bom", "pt", "negative"],
  ["Não é um produto muito bom", "pt", "negative"], ["Não gostei do filme", "pt", "negative"],
  ["Ninguém gostou do show", "pt", "negative"], ["Nunca vi nada tão ruim", "pt", "negative"],
  ["Não recomendo a ninguém", "pt", "negative"], ["Não fiquei satisfeito", "pt", "negative"],
  ["O atendimento foi pessimo", "pt", "negative"], ["Odiaram a comida", "pt", "negative"],
  ["Produto de péssima qualidade", "pt", "negative"], ["Não funciona", "pt", "negative"],
  ["Poderia ser melhor", "pt", "negative"], ["Ele não é feio", "pt", "positive"],
  ["Nada mal", "pt", "positive"], ["Lindo demais", "pt", "positive"], ["Amei demais 😍", "pt", "positive"],
  ["Muito satisfeito com a compra", "pt", "positive"], ["Chegou antes do prazo, recomendo!", "pt", "positive"],
  ["Top demais", "pt", "positive"], ["Estou tão feliz", "pt", "positive"], ["Só coisa boa", "pt", "positive"],
  ["A loja abre às nove", "pt", "neutral"], ["Não sei", "pt", "neutral"],
  ["I'm so happy", "en", "positive"], ["So good!", "en", "positive"], ["It's so boring", "en", "negative"],
  ["I'm so angry", "en", "negative"], ["That's so sweet", "en", "positive"], ["He's so rude", "en", "negative"],
  ["I don't love it", "en", "negative"], ["not bad at all", "en", "positive"], ["It isn't bad", "en", "positive"],
  ["It is not a good idea", "en", "negative"], ["Nobody liked it", "en", "negative"], ["I didn't like it very much", "en", "negative"],
  ["Never seen anything so bad", "en", "negative"], ["Worst purchase ever", "en", "negative"],
  ["Great product, highly recommend", "en", "positive"], ["I wouldn't recommend it", "en", "negative"],
  ["This is awesome 😍", "en", "positive"], ["Ugh, terrible 😡", "en", "negative"], ["It doesn't work", "en", "negative"],
  ["Could have been better", "en", "negative"], ["The sky is blue", "en", "neutral"], ["I don't know", "en", "neutral"],
];

describe("lote-sentiment on /classify", () => {
  it("labels the three canonical Portuguese sentences, each with a confidence", async () => {
    const data = await classify(["Eu amo estudar IA!", "Estou muito cansado hoje", "Esse filme foi terrível"]);
    expect(data.map((d) => d.label)).toEqual(["positive", "negative", "negative"]);
    for (const d of data) {
      expect(d.language).toBe("pt");
      expect(d.confidence).toBeGreaterThan(0.6);
      expect(d.confidence).toBe(Math.max(...d.probs));
    }
  });

  it.each([
    { name: "Portuguese", language: "pt", set: portuguese },
    { name: "English", language: "en", set: english },
  ])("gets at least 90 percent of the $name set right, language included", async ({ language, set }) => {
    expect(set.length).toBeGreaterThanOrEqual(15);
    for (const label of ["positive", "negative", "neutral"]) expect(set.some(([, want]) => want === label)).toBe(true);
    const data = await classify(set.map(([text]) => text));
    const wrong = set.filter(([text, want], i) => data[i]!.label !== want || data[i]!.language !== language)
      .map(([text, want], i) => `${text} (want ${want})`);
    const accuracy = (set.length - wrong.length) / set.length;
    expect(accuracy, wrong.join("; ")).toBeGreaterThanOrEqual(0.9);
  });

  // Measured when written: 30 of 46 (65 percent) before audit 9's fixes, 41 of 46 (89 percent) after.
  it("gets at least 85 percent of an everyday set of negations, short English and slang right, language included", async () => {
    const data = await classify(everyday.map(([text]) => text));
    const wrong = everyday.filter(([, language, want], i) => data[i]!.label !== want || data[i]!.language !== language)
      .map(([text, , want]) => `${text} (want ${want})`);
    expect((everyday.length - wrong.length) / everyday.length, wrong.join("; ")).toBeGreaterThanOrEqual(0.85);
  });

  it("answers in vLLM's classify shape with three probabilities summing to one", async () => {
    const reply = await call("/classify", { model: "lote-sentiment", input: ["Adorei!", "O trem sai às dez."] });
    const body = JSON.parse(reply.body);
    expect(body).toMatchObject({ object: "list", created: 1_700_000_000, model: "lote-sentiment" });
    expect(body.id).toMatch(/^classify-[0-9a-f]{32}$/);
    expect(body.id).toBe(`classify-${reply.requestId}`);
    expect(body.data.map((d: Classification) => d.index)).toEqual([0, 1]);
    for (const d of body.data as Classification[]) {
      expect(d.num_classes).toBe(3);
      expect(d.probs).toHaveLength(3);
      expect(d.probs.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
      expect(d.label).toBe(["negative", "neutral", "positive"][d.probs.indexOf(d.confidence)]);
    }
    // "adorei" "!" + "o" "trem" "sai" "às" "dez" "."
    expect(body.usage).toEqual({ prompt_tokens: 8, total_tokens: 8, completion_tokens: 0 });
  });

  it("flips negated words in both languages and keeps double negation in Portuguese negative", async () => {
    const data = await classify(["Gostei do filme", "Não gostei do filme", "Não gostei de nada", "I liked it", "I didn't like it", "not good"]);
    expect(data.map((d) => d.label)).toEqual(["positive", "negative", "negative", "positive", "negative", "negative"]);
  });

  it("negates an adjective that comes after its noun, past articles and 'é'/'foi', and after 'ninguém'", async () => {
    const data = await classify(["Não foi um filme bom", "Não achei o filme bom", "Não é um produto muito bom", "It is not a good idea", "Ninguém gostou do show"]);
    expect(data.map((d) => d.label)).toEqual(["negative", "negative", "negative", "negative", "negative"]);
  });

  it("keeps 'nunca' emphatic through a second negator: 'nunca vi nada tão ruim' is very bad", async () => {
    const [pt, en] = await classify(["Nunca vi nada tão ruim", "Never seen anything so bad"]);
    expect(pt!.label).toBe("negative");
    expect(en!.label).toBe("negative");
  });

  it("reads 'never so' as emphasis, not negation", async () => {
    const data = await classify(["Nunca fui tão feliz", "Nunca gostei disso", "I have never been so happy", "I never liked it"]);
    expect(data.map((d) => d.label)).toEqual(["positive", "negative", "positive", "negative"]);
  });

  it("is more confident about intensified and stronger sentences", async () => {
    const [plain, boosted, weak, strong] = await classify(["Estou feliz", "Estou muito feliz", "It was fine", "It was absolutely wonderful"]);
    expect(boosted!.confidence).toBeGreaterThan(plain!.confidence);
    expect(strong!.confidence).toBeGreaterThan(weak!.confidence);
    expect(strong!.confidence).toBeGreaterThan(0.95);
  });

  it("matches inflected forms and ignores accents and punctuation", async () => {
    const data = await classify(["amei", "adorei", "odiei", "detestamos", "horrivel!!!", "péssima...", "PESSIMO", "maravilhosa"]);
    expect(data.map((d) => d.label)).toEqual(["positive", "positive", "negative", "negative", "negative", "negative", "negative", "positive"]);
  });

  it("weighs what follows a 'but' more than what came before", async () => {
    const [a, b] = await classify(["A comida é boa, mas o lugar é sujo", "The place is dirty but the food is good"]);
    expect(a!.label).toBe("negative");
    expect(b!.label).toBe("positive");
  });

  it("reads short English with 'so' and contractions as English, while 'só' stays Portuguese", async () => {
    const data = await classify(["I'm so happy", "So bad", "It's so boring", "That's so sweet", "Só coisa boa", "Estou só cansado"]);
    expect(data.map((d) => [d.language, d.label])).toEqual([
      ["en", "positive"], ["en", "negative"], ["en", "negative"], ["en", "positive"], ["pt", "positive"], ["pt", "negative"],
    ]);
  });

  it("takes the language hint over detection", async () => {
    const [detected] = await classify("Eu amo estudar IA!");
    const [hinted] = await classify("Eu amo estudar IA!", { language: "en-US" });
    expect(detected!.language).toBe("pt");
    expect(hinted!.language).toBe("en");
    const [pt] = await classify("show", { language: "pt-BR" });
    expect(pt!.language).toBe("pt");
  });

  // How fast: `npm run bench:builtin` (BENCHMARKS.md), not a timed test.
  it("classifies 2,000 sentences in one call, one answer per sentence in input order, each as it would be alone", async () => {
    const inputs = Array.from({ length: 2000 }, (_, i) => `${portuguese[i % portuguese.length]![0]} ${i}`);
    const data = await classify(inputs);
    expect(data.map((d) => d.index)).toEqual(inputs.map((_, i) => i));
    const alone = await Promise.all(inputs.slice(0, portuguese.length).map(async (input) => (await classify(input))[0]!.label));
    expect(data.slice(0, portuguese.length).map((d) => d.label)).toEqual(alone);
  });
});

describe("lote-embed on /v1/embeddings", () => {
  it("answers in OpenAI's embeddings shape with 256 dimensions by default", async () => {
    const reply = await call("/v1/embeddings", { model: "lote-embed", input: ["olá mundo", "hello world"] });
    const body = JSON.parse(reply.body);
    expect(body).toMatchObject({ object: "list", model: "lote-embed", usage: { prompt_tokens: 4, total_tokens: 4 } });
    expect(body.data.map((d: { object: string; index: number }) => [d.object, d.index])).toEqual([["embedding", 0], ["embedding", 1]]);
    expect(body.data[0].embedding).toHaveLength(256);
  });

  it("gives the same vector for the same text, across calls and backend instances", async () => {
    const other = createBuiltinBackend({ name: "other" });
    const body = JSON.stringify({ model: "lote-embed", input: "Determinismo é bom", dimensions: 64 });
    const [a] = await embed("Determinismo é bom", { dimensions: 64 });
    const [b] = await embed("Determinismo é bom", { dimensions: 64 });
    const c = JSON.parse((await other.infer({ endpoint: "/v1/embeddings", body, signal: live })).body).data[0].embedding;
    expect(b).toEqual(a);
    expect(c).toEqual(a);
  });

  it("returns unit vectors, even for text with no words", async () => {
    const vectors = await embed(["uma frase qualquer", "???", "   ", "🎉", "a"], { dimensions: 32 });
    for (const v of vectors) expect(norm(v)).toBeCloseTo(1, 5);
  });

  it("puts similar sentences closer than unrelated ones, accents folded", async () => {
    const [cat, cat2, market, catNoAccents] = await embed([
      "O gato dorme no sofá da sala",
      "O gato está dormindo no sofá",
      "A bolsa de valores caiu hoje",
      "O GATO DORME NO SOFA DA SALA",
    ]);
    expect(cosine(cat!, cat2!)).toBeGreaterThan(cosine(cat!, market!) + 0.3);
    expect(cosine(cat!, catNoAccents!)).toBeCloseTo(1, 5);
  });

  it.each([1, 7, 1024, 4096])("honours dimensions=%i", async (dimensions) => {
    const [v] = await embed("dimensões", { dimensions });
    expect(v).toHaveLength(dimensions);
    expect(norm(v!)).toBeCloseTo(1, 5);
  });

  it("encodes base64 as little-endian float32, the same numbers as the float format", async () => {
    const [floats] = await embed("base64 também", { dimensions: 16 });
    const reply = await call("/v1/embeddings", { model: "lote-embed", input: "base64 também", dimensions: 16, encoding_format: "base64" });
    const encoded: string = JSON.parse(reply.body).data[0].embedding;
    const bytes = Buffer.from(encoded, "base64");
    expect(bytes.length).toBe(64);
    const decoded = Array.from({ length: 16 }, (_, i) => bytes.readFloatLE(i * 4));
    expect(decoded).toEqual(floats);
  });
});

describe("bad requests", () => {
  it.each([
    ["a body that is not JSON", "/classify", "{not json", null],
    ["a JSON array body", "/classify", "[1,2]", null],
    ["a missing input", "/classify", { model: "lote-sentiment" }, "input"],
    ["an empty input string", "/classify", { model: "lote-sentiment", input: "" }, "input"],
    ["an empty input array", "/v1/embeddings", { model: "lote-embed", input: [] }, "input"],
    ["a non-string input item", "/v1/embeddings", { model: "lote-embed", input: ["ok", 3] }, "input"],
    ["too many inputs", "/classify", { model: "lote-sentiment", input: Array(2049).fill("x") }, "input"],
    ["a missing model", "/classify", { input: "oi" }, "model"],
    ["an unknown model", "/classify", { model: "gpt-4o", input: "oi" }, "model"],
    ["the sentiment model on the embeddings endpoint", "/v1/embeddings", { model: "lote-sentiment", input: "oi" }, "model"],
    ["the embeddings model on /classify", "/classify", { model: "lote-embed", input: "oi" }, "model"],
    ["an endpoint no built-in model serves", "/v1/chat/completions", { model: "lote-sentiment", input: "oi" }, "model"],
    ["dimensions 0", "/v1/embeddings", { model: "lote-embed", input: "oi", dimensions: 0 }, "dimensions"],
    ["dimensions 4097", "/v1/embeddings", { model: "lote-embed", input: "oi", dimensions: 4097 }, "dimensions"],
    ["fractional dimensions", "/v1/embeddings", { model: "lote-embed", input: "oi", dimensions: 1.5 }, "dimensions"],
    ["dimensions as a string", "/v1/embeddings", { model: "lote-embed", input: "oi", dimensions: "8" }, "dimensions"],
    ["an unknown encoding_format", "/v1/embeddings", { model: "lote-embed", input: "oi", encoding_format: "int8" }, "encoding_format"],
    ["a language it does not know", "/classify", { model: "lote-sentiment", input: "hola", language: "es" }, "language"],
  ] as const)("answers %s with a 400 and an OpenAI error body", async (...[, endpoint, body, param]) => {
    const reply = await call(endpoint, body);
    expect(reply.status).toBe(400);
    const parsed = JSON.parse(reply.body);
    expect(parsed).toEqual({ error: { message: expect.any(String), type: "invalid_request_error", param, code: null } });
    expect(parsed.error.message).toMatch(/^(Expected|Model)/);
  });
});

describe("the backend contract", () => {
  it("rejects a call whose signal is already aborted with TransportError('aborted')", async () => {
    const controller = new AbortController();
    controller.abort();
    const promise = backend.infer({ endpoint: "/classify", body: '{"model":"lote-sentiment","input":"oi"}', signal: controller.signal });
    await expect(promise).rejects.toBeInstanceOf(TransportError);
    await expect(promise).rejects.toMatchObject({ kind: "aborted" });
  });

  it("is ready until closed, and refuses calls after close", async () => {
    const own = createBuiltinBackend({ name: "closing" });
    expect(await own.ready()).toBe(true);
    await own.close();
    expect(await own.ready()).toBe(false);
    await expect(own.infer({ endpoint: "/classify", body: "{}", signal: live })).rejects.toMatchObject({ kind: "connection_refused" });
  });

  it("lists what it serves for the config layer", () => {
    expect(builtinModels.map((m) => [m.name, m.endpoints])).toEqual([
      ["lote-sentiment", ["/classify"]],
      ["lote-embed", ["/v1/embeddings"]],
    ]);
    expect(backend.name).toBe("builtin");
  });
});
