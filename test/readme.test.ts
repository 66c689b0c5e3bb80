import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { renderReadme } from "../scripts/readme-commands.ts";
import { curlCommands } from "./clients/readme-commands.ts";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));

describe("README", () => {
  it("shows exactly the buf curl and grpcurl lines the tests run (regenerate with scripts/readme-commands.ts)", () => {
    expect(renderReadme(readme)).toBe(readme);
  });

  it("shows the tested plain-curl RunBatch line", () => {
    for (const c of curlCommands) expect(readme).toContain(c.command);
  });

  it("gives the two set-up commands, and .ci/run calls the same test command", () => {
    expect(readme).toContain("npm install && npm start");
    expect(readme).toContain("npm install && npm test");
    expect(pkg.scripts.start).toBeTruthy();
    expect(readFileSync(new URL("../.ci/run", import.meta.url), "utf8")).toMatch(/^npm test$/m);
  });

  it("lists a reason for every runtime dependency", () => {
    const deps = [...Object.keys(pkg.dependencies), ...Object.keys(pkg.optionalDependencies ?? {})];
    for (const dep of deps) expect(readme, dep).toContain(`\`${dep}\``);
  });
});
