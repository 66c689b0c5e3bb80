/**
 * Reads an OpenAI batch input file (JSONL, one request per line:
 * {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}) into CreateBatch requests.
 * The file is read line by line, so only the requests themselves are held, never the file's text. Every bad line is
 * reported, not just the first, so one run shows everything there is to fix.
 */
import { createReadStream } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { Endpoint, RequestSchema, type Request } from "../../gen/lote/v1/batch_pb.ts";
import { CliError, ExitCode } from "./exit-codes.ts";
import { rawMember } from "./raw-json-member.ts";

/** The `url` values of the OpenAI input format and the endpoint each one means. */
export const endpointOfUrl: ReadonlyMap<string, Endpoint> = new Map([
  ["/v1/chat/completions", Endpoint.CHAT_COMPLETIONS],
  ["/v1/completions", Endpoint.COMPLETIONS],
  ["/v1/embeddings", Endpoint.EMBEDDINGS],
  ["/v1/responses", Endpoint.RESPONSES],
  ["/classify", Endpoint.CLASSIFY],
]);

export interface BatchFile {
  readonly endpoint: Endpoint;
  readonly requests: Request[];
  /** lineOf[i] is the 1-based line of the file that requests[i] came from (blank lines are skipped). */
  readonly lineOf: number[];
}

export interface LineProblem {
  readonly line: number;
  readonly message: string;
}

const encoder = new TextEncoder();

export async function readBatchFile(path: string): Promise<BatchFile> {
  const requests: Request[] = [];
  const lineOf: number[] = [];
  const problems: LineProblem[] = [];
  let url: string | undefined;
  let urlLine = 0;
  let line = 0;
  // Bytes, not "utf8" text: decoding the stream replaced every byte that is not UTF-8 (a file saved as Latin-1 or
  // Windows-1252: "terr\xedvel") with U+FFFD, and the request went to the model changed, with no word to the user.
  const input = createReadStream(path);
  const opened = new Promise<void>((resolve, reject) => {
    input.once("open", () => resolve());
    input.once("error", reject);
  });
  try {
    await opened;
  } catch (err) {
    throw new CliError(`cannot read ${path}: ${(err as Error).message}`, ExitCode.NoInput);
  }
  try {
    for await (const bytes of jsonLines(input)) {
      line++;
      const bad = (message: string) => problems.push({ line, message });
      let raw: string;
      try {
        raw = utf8.decode(bytes);
      } catch {
        bad(`not UTF-8 text at byte ${invalidUtf8At(bytes) + 1} of the line: an OpenAI batch file is UTF-8 (save it as UTF-8)`);
        continue;
      }
      const text = line === 1 ? raw.replace(/^\uFEFF/, "") : raw;
      if (text.trim() === "") continue; // a trailing or stray blank line carries no request
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        bad(`not JSON: ${(err as Error).message}`);
        continue;
      }
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        bad(`expected a JSON object, got ${describe(parsed)}`);
        continue;
      }
      const o = parsed as Record<string, unknown>;
      const before = problems.length;
      if (typeof o.custom_id !== "string" || o.custom_id === "") bad(`expected "custom_id" to be a non-empty string, got ${describe(o.custom_id)}`);
      if (o.method !== "POST") bad(`expected "method" to be "POST", got ${describe(o.method)}`);
      if (typeof o.url !== "string" || !endpointOfUrl.has(o.url)) {
        bad(`expected "url" to be one of ${[...endpointOfUrl.keys()].join(", ")}, got ${describe(o.url)}`);
      } else if (url === undefined) {
        url = o.url;
        urlLine = line;
      } else if (o.url !== url) {
        // OpenAI's rule too: a batch has one endpoint.
        bad(`expected "url" to be ${JSON.stringify(url)} like line ${urlLine} (one endpoint per batch), got ${JSON.stringify(o.url)}`);
      }
      if (typeof o.body !== "object" || o.body === null || Array.isArray(o.body)) bad(`expected "body" to be a JSON object, got ${describe(o.body)}`);
      if (problems.length > before) continue;
      requests.push(create(RequestSchema, { customId: o.custom_id as string, bodyJson: encoder.encode(rawMember(text, "body")!) }));
      lineOf.push(line);
    }
  } catch (err) {
    // Opened but not readable: a directory (EISDIR), an I/O error. Anything else is a bug, not the file's fault.
    if (typeof (err as NodeJS.ErrnoException).code !== "string") throw err;
    throw new CliError(`cannot read ${path}: ${(err as Error).message}`, ExitCode.NoInput);
  }
  if (problems.length === 0 && requests.length === 0) throw new CliError(`${path}: no requests: the file is empty`, ExitCode.DataError);
  if (problems.length > 0) {
    const n = new Set(problems.map((p) => p.line)).size;
    throw new CliError(`${path}: ${n} invalid line${n === 1 ? "" : "s"}; nothing was sent`, ExitCode.DataError,
      problems.map((p) => `${path}:${p.line}: ${p.message}`));
  }
  return { endpoint: endpointOfUrl.get(url!)!, requests, lineOf };
}

/**
 * The file's lines as bytes, split on "\n" only (a "\r" before it dropped); 0x0A is never part of a multi-byte
 * UTF-8 character, so each line can be decoded alone. Not node:readline, which also ends a line at a lone "\r" and at
 * U+2028 / U+2029: JSON allows those two raw inside a string, so readline cut such a request in two. A long line is
 * gathered in pieces and joined once.
 */
async function* jsonLines(input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let pieces: Buffer[] = [];
  const line = () => {
    const bytes = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
    pieces = [];
    return bytes.at(-1) === 0x0d ? bytes.subarray(0, -1) : bytes;
  };
  for await (const chunk of input) {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      pieces.push(chunk.subarray(start, nl));
      yield line();
      start = nl + 1;
    }
    if (start < chunk.length) pieces.push(chunk.subarray(start));
  }
  if (pieces.length > 0) yield line();
}

// ignoreBOM: the first line's byte-order mark stays in the text, to be dropped above as before.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** The offset of the first byte that does not begin a valid UTF-8 sequence (RFC 3629 §4). */
function invalidUtf8At(bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i]!;
    const n = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (n === 0 || i + n > bytes.length) return i;
    try {
      if (n > 1) utf8.decode(bytes.subarray(i, i + n));
    } catch {
      return i;
    }
    i += n;
  }
  return 0;
}

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  const s = JSON.stringify(v);
  return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}
