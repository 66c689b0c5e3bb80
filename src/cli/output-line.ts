/**
 * One line of an OpenAI batch output (or error) file, byte-compatible with what OpenAI writes:
 *   {"id": "...", "custom_id": "...", "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}
 *   {"id": "...", "custom_id": "...", "response": null, "error": {"code": "...", "message": "..."}}
 * (OpenAI's files use ", " and ": " separators, as Python's json.dumps does.) The body is the backend's JSON text as
 * received (StreamResults with raw_json), not re-serialised, so large integers and number spellings survive.
 */
import type { Result } from "../../gen/lote/v1/batch_pb.ts";

const decoder = new TextDecoder();
const q = JSON.stringify;

export function outputLine(r: Result): string {
  const head = `{"id": ${q(r.id)}, "custom_id": ${q(r.customId)}, `;
  if (r.response) {
    const res = r.response;
    const body = res.bodyJson.length > 0 ? jsonBody(decoder.decode(res.bodyJson)) : q(res.body ?? null);
    return `${head}"response": {"status_code": ${res.statusCode}, "request_id": ${q(res.requestId)}, "body": ${body}}, "error": null}\n`;
  }
  const e = r.error;
  return `${head}"response": null, "error": {"code": ${q(e?.code ?? "unknown")}, "message": ${q(e?.message ?? "")}}}\n`;
}

/**
 * The body as a JSON value on one line. A backend (or a proxy in front of it: an HTML error page, "OK") may answer
 * 2xx with text that is not JSON, and it was written as is: a line no JSON reader could parse, which broke reading
 * the whole file. Such a body is written as a JSON string. Checking costs a JSON.parse per result, ~1.5 µs for an
 * 800-byte chat answer (1.5 s per million results, a small part of downloading them).
 */
function jsonBody(text: string): string {
  try {
    JSON.parse(text);
  } catch {
    return q(text);
  }
  return singleLine(text);
}

/**
 * A backend may pretty-print its JSON. A raw CR or LF can only be whitespace between JSON tokens (inside strings they
 * must be escaped, RFC 8259 §7), and no two tokens need it to stay apart, so dropping them keeps the value intact
 * while keeping one result per line.
 */
function singleLine(json: string): string {
  return /[\r\n]/.test(json) ? json.replace(/[\r\n]+/g, "") : json;
}
