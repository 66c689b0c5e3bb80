import { describe, expect, it } from "vitest";
import { usageOf } from "../../src/dispatch/usage.ts";

describe("usageOf", () => {
  it("reads OpenAI chat usage whether or not other members follow it", () => {
    const usage = { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17, prompt_tokens_details: { cached_tokens: 0 } };
    expect(usageOf(JSON.stringify({ id: "x", choices: [{ message: { content: "hi" } }], usage }))).toEqual({ input: 12, output: 5, total: 17 });
    expect(usageOf(JSON.stringify({ id: "x", usage, system_fingerprint: "fp", kv: null }) + "\n")).toEqual({ input: 12, output: 5, total: 17 });
  });

  it("reads Responses API names and totals input and output when total is missing", () => {
    expect(usageOf('{"output":[],"usage":{"input_tokens":3,"output_tokens":4}}')).toEqual({ input: 3, output: 4, total: 7 });
  });

  it("ignores a usage key nested in another member and reads the top-level one", () => {
    const body = JSON.stringify({ usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 }, choices: [{ usage: { prompt_tokens: 99 } }] });
    expect(usageOf(body)).toEqual({ input: 1, output: 2, total: 3 });
  });

  it("is not fooled by the word usage inside generated text", () => {
    const body = JSON.stringify({ choices: [{ message: { content: 'say "usage": {"prompt_tokens": 999}' } }], usage: { prompt_tokens: 2, completion_tokens: 1 } });
    expect(usageOf(body)).toEqual({ input: 2, output: 1, total: 3 });
    const only = JSON.stringify({ choices: [{ message: { content: '"usage": {"prompt_tokens": 999}}' } }] });
    expect(usageOf(only)).toEqual({ input: 0, output: 0, total: 0 });
  });

  it("gives zeros for bodies without usage or that are not JSON", () => {
    expect(usageOf('{"data":[{"embedding":[0.1]}]}')).toEqual({ input: 0, output: 0, total: 0 });
    expect(usageOf("not json, no usage")).toEqual({ input: 0, output: 0, total: 0 });
    expect(usageOf('{"usage": {"prompt_tokens": 1,')).toEqual({ input: 0, output: 0, total: 0 });
  });

  it("keeps absurd counts within what a batch's sums can hold", () => {
    expect(usageOf('{"usage":{"prompt_tokens":1e30,"completion_tokens":-5,"total_tokens":9007199254740993}}'))
      .toEqual({ input: 2 ** 31 - 1, output: 0, total: 2 ** 31 - 1 });
  });
});
