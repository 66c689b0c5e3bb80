import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { useLoteServer, type LoteProcess } from "./support/lote-process.ts";

const run = promisify(execFile);
const root = new URL("../", import.meta.url).pathname;
const readme = readFileSync(join(root, "README.md"), "utf8");

/** The first ```sh block after a heading. */
function shBlockAfter(heading: string): string {
  const from = readme.indexOf(heading);
  const start = readme.indexOf("```sh\n", from) + "```sh\n".length;
  return readme.slice(start, readme.indexOf("```", start));
}

describe("the README's five-minute walkthrough", () => {
  const fixture = useLoteServer();
  let lote: LoteProcess;
  beforeAll(() => {
    lote = fixture.lote;
  });

  it("runs as written: submit, watch, results into OpenAI-format files, list", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lote-readme-"));
    // The block runs verbatim in a scratch directory; `npx lote` there would look on the registry, so it is pointed
    // at this checkout's bin (which is what `npx lote` resolves to inside the project).
    const script = `set -euo pipefail\nnpx() { shift; node ${join(root, "bin/lote.js")} "$@"; }\n${shBlockAfter("## Five minutes with lote")}`;
    const { stdout } = await run("bash", ["-c", script], { cwd: dir, env: { ...process.env, LOTE_SERVER: lote.url }, timeout: 60_000 });
    const lines = readFileSync(join(dir, "output.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const labels = Object.fromEntries(lines.map((l) => [l.custom_id, l.response.body.data[0].label]));
    expect(labels).toEqual({ s0: "positive", s1: "negative", s2: "negative" });
    expect(lines.every((l) => l.error === null && l.response.status_code === 200)).toBe(true);
    expect(readFileSync(join(dir, "errors.jsonl"), "utf8")).toBe("");
    expect(stdout).toMatch(/batch_[0-9a-z]{26}/);
  });

  it("classifies the three sentences with the README's plain curl line", async () => {
    const line = shBlockAfter("### The synchronous call").trim().replace("http://127.0.0.1:50051", lote.url);
    const { stdout } = await run("bash", ["-c", line]);
    const answer = JSON.parse(stdout);
    expect(answer.results.map((r: any) => r.response.body.data[0].label)).toEqual(["positive", "negative", "negative"]);
  });
});
