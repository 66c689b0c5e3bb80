import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const root = new URL("../../", import.meta.url).pathname;

describe("node flags of the server roles", () => {
  it("are the same in `npm start` and in the lote command's shebang", () => {
    const start = JSON.parse(readFileSync(`${root}package.json`, "utf8")).scripts.start as string;
    const shebang = readFileSync(`${root}bin/lote.js`, "utf8").split("\n", 1)[0]!;
    const flags = (line: string) => line.split(" ").filter((arg) => arg.startsWith("--max-"));
    expect(flags(start)).toEqual(["--max-semi-space-size=16"]);
    expect(shebang).toBe(`#!/usr/bin/env -S node ${flags(start).join(" ")}`);
  });
});
