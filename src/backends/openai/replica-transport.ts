import { randomUUID } from "node:crypto";
import type { ConnectionOptions } from "node:tls";
import { TransportError, type InferenceReply } from "../backend.ts";
import type { BackendTlsOptions, ReplicaTarget } from "./openai-backend-options.ts";
import { parseRetryAfter } from "./retry-after.ts";

/** One replica's connections, over one wire protocol. */
export interface ReplicaTransport {
  /**
   * Sends one request. Resolves with any HTTP answer; rejects only with a TransportError. When `signal` fires,
   * the real request is torn down (RST_STREAM for HTTP/2, socket abort for HTTP/1.1) and the kind is "aborted".
   */
  request(method: "GET" | "POST", path: string, body: string | undefined, signal: AbortSignal): Promise<InferenceReply>;
  /** Destroys every connection; calls in flight reject "aborted". */
  close(): Promise<void>;
}

export interface TransportContext {
  /** Backend name, for error messages. */
  readonly name: string;
  readonly target: ReplicaTarget;
  /** Sent with every request: content-type, user-agent and, when configured, authorization. */
  readonly headers: Readonly<Record<string, string>>;
  /** Most sockets (HTTP/1.1) or sessions (HTTP/2) to the replica, each opened when the open ones are full. */
  readonly connections: number;
  /** HTTP/2: streams per session while another session may open. */
  readonly streamsPerSession: number;
  /** Monotonic clock in ms (the backend's `now`). */
  readonly now: () => number;
  readonly connectTimeoutMs: number;
  /** Longest answer body read; a longer one fails the call as "response_too_large". */
  readonly maxResponseBytes: number;
  readonly tls: BackendTlsOptions | undefined;
  /** Called when a new connection to the replica cannot be established (the backend ejects the replica). */
  readonly onConnectFailure: (err: unknown) => void;
}

/** The answer ran past `maxResponseBytes`: the transport stops reading and cuts the call off. */
export function tooLarge(ctx: TransportContext, method: string, path: string): TransportError {
  return new TransportError("response_too_large",
    `${describeCall(ctx, method, path)}: the answer is longer than ${ctx.maxResponseBytes} bytes (max_response_bytes); cut off`);
}

/** "openai:m POST h2c://host:port/v1/chat/completions": names a call in errors, without any header. */
export function describeCall(ctx: TransportContext, method: string, path: string): string {
  const t = ctx.target;
  return `${ctx.name} ${method} ${t.display.slice(0, t.display.length - t.basePath.length)}${path}`;
}

/** Builds the reply from an answer's parts; `x-request-id` is generated when the backend sent none. */
export function makeReply(status: number, body: string, requestId: unknown, retryAfter: unknown): InferenceReply {
  const id = typeof requestId === "string" && requestId !== "" ? requestId : Array.isArray(requestId) ? String(requestId[0]) : randomUUID();
  const retryAfterMs = retryAfter === undefined ? undefined : parseRetryAfter(retryAfter as string | string[]);
  return retryAfterMs === undefined ? { status, body, requestId: id } : { status, body, requestId: id, retryAfterMs };
}

/** tls.connect options for a replica. */
export function tlsConnectOptions(ctx: TransportContext): Pick<ConnectionOptions, "ca" | "rejectUnauthorized" | "servername"> {
  const t = ctx.tls;
  const servername = t?.servername ?? (isIp(ctx.target.hostname) ? undefined : ctx.target.hostname);
  return {
    ...(t?.ca !== undefined ? { ca: t.ca as ConnectionOptions["ca"] } : {}),
    ...(t?.rejectUnauthorized !== undefined ? { rejectUnauthorized: t.rejectUnauthorized } : {}),
    ...(servername !== undefined ? { servername } : {}),
  };
}

function isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(":");
}
