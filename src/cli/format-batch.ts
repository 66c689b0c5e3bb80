/** How batches look on a terminal: a summary for `status`, a table for `list`, proto JSON for `--json`. */
import { toJson } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { BatchSchema, BatchStatus, type Batch, type RequestCounts } from "../../gen/lote/v1/batch_pb.ts";
import { endpointOfUrl } from "./read-batch-file.ts";
import { statusName } from "./parse-options.ts";

const terminal: ReadonlySet<BatchStatus> = new Set([BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED]);

/** COMPLETED, FAILED, EXPIRED and CANCELLED: nothing will change any more (batch.proto). */
export function isTerminalStatus(status: BatchStatus): boolean {
  return terminal.has(status);
}

/** Requests with a final outcome, whatever it was. */
export function doneCount(c: RequestCounts | undefined): bigint {
  return c ? c.completed + c.failed + c.cancelled + c.expired : 0n;
}

/** The Batch as canonical proto3 JSON, one line. */
export function batchJson(batch: Batch): string {
  return JSON.stringify(toJson(BatchSchema, batch));
}

const urlOfEndpoint = new Map([...endpointOfUrl].map(([url, endpoint]) => [endpoint, url]));

function time(t: Timestamp | undefined): string {
  return t ? timestampDate(t).toISOString().replace(/\.\d{3}Z$/, "Z") : "-";
}

/** Several lines for a person: state, counts, times, metadata, errors. */
export function formatBatchSummary(b: Batch): string {
  const c = b.requestCounts;
  const rows: [string, string][] = [
    ["id", b.id],
    ["status", statusName(b.status)],
    ["endpoint", urlOfEndpoint.get(b.endpoint) ?? String(b.endpoint)],
    ["model", b.model],
    ["requests", c ? `${doneCount(c)}/${c.total} done: ${c.completed} completed, ${c.failed} failed, ${c.cancelled} cancelled, ${c.expired} expired, ${c.running} running` : "-"],
    ["created", time(b.createdAt)],
    ["expires", time(b.expiresAt)],
  ];
  const ended = b.completedAt ?? b.failedAt ?? b.expiredAt ?? b.cancelledAt;
  if (ended) rows.push(["ended", time(ended)]);
  if (b.usage && b.usage.totalTokens > 0n) rows.push(["usage", `${b.usage.inputTokens} input + ${b.usage.outputTokens} output = ${b.usage.totalTokens} tokens`]);
  if (b.priority !== 0) rows.push(["priority", String(b.priority)]);
  if (b.retriedFrom) rows.push(["retried from", b.retriedFrom]);
  for (const [k, v] of Object.entries(b.metadata).sort(([a], [z]) => a.localeCompare(z))) rows.push(["metadata", `${k}=${v}`]);
  for (const e of b.errors) rows.push(["error", `${e.code}: ${e.message}${e.line >= 0n ? ` (request ${e.line})` : ""}`]);
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  return rows.map(([k, v]) => `${`${k}:`.padEnd(width)}${v}`).join("\n");
}

/** The `list` table: id, status, model, done/total, created; columns sized to their content. */
export function formatBatchTable(batches: readonly Batch[]): string {
  const header = ["ID", "STATUS", "MODEL", "DONE/TOTAL", "CREATED"];
  return formatColumns(header, batches.map((b) => [b.id, statusName(b.status), b.model, `${doneCount(b.requestCounts)}/${b.requestCounts?.total ?? 0n}`, time(b.createdAt)]));
}

/** A table: columns sized to their content, two spaces apart, the last one not padded. */
export function formatColumns(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")).join("\n");
}
