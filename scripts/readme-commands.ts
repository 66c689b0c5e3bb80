/**
 * Writes the tested command lines (test/clients/readme-commands.ts) into README.md between the COMMANDS markers.
 * `node --import tsx scripts/readme-commands.ts`; test/readme.test.ts fails when the README and the data disagree.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { bufCurlCommands, grpcurlCommands, type ReadmeCommand } from "../test/clients/readme-commands.ts";

export function commandsMarkdown(): string {
  const block = (title: string, commands: readonly ReadmeCommand[]) =>
    [`${title}`, "", "```sh", ...commands.flatMap((c) => [`# ${c.name}: ${c.shows}`, c.command]), "```", ""].join("\n");
  return [
    block("With `buf curl` (every line is run by `test/clients/buf-curl.test.ts`):", bufCurlCommands),
    block("With `grpcurl` (the same JSON; grpcurl is not installable on the CI machine, so these mirror the tested lines above):", grpcurlCommands),
  ].join("\n");
}

const begin = "<!-- BEGIN COMMANDS -->";
const end = "<!-- END COMMANDS -->";

export function renderReadme(readme: string): string {
  const a = readme.indexOf(begin);
  const b = readme.indexOf(end);
  if (a < 0 || b < a) throw new Error("README.md has no COMMANDS markers");
  return `${readme.slice(0, a + begin.length)}\n${commandsMarkdown()}${readme.slice(b)}`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const path = new URL("../README.md", import.meta.url);
  writeFileSync(path, renderReadme(readFileSync(path, "utf8")));
}
