/**
 * Server streams that survive a dropped connection (a server restart, a load balancer's idle cut): the stream is
 * reopened by `open`, which resumes from whatever position the consumer recorded (StreamResults' cursor) or simply
 * starts over (WatchBatch sends the current batch first). Only transport failures are retried; an answer from the
 * server such as NOT_FOUND is final.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * UNAVAILABLE: refused connection, or the server draining (it ends streams with UNAVAILABLE on shutdown).
 * ABORTED: connect-node's code for ECONNRESET and destroyed HTTP/2 streams.
 * INTERNAL and CANCELLED only when HTTP/2 itself closed the stream ("http/2 stream closed with error code ..."):
 * a server killed outright leaves its streams closed with CANCEL. The CLI never cancels a stream it still reads.
 * The server's own "internal error" is not retried.
 */
export function isResumable(err: unknown): boolean {
  if (!(err instanceof ConnectError)) return false;
  if (err.code === Code.Unavailable || err.code === Code.Aborted) return true;
  return (err.code === Code.Internal || err.code === Code.Canceled) && /^http\/2 stream closed/.test(err.rawMessage);
}

export interface ResumeOptions {
  /** Consecutive failures with no message in between before giving up. Default 6 (about 10 s of backoff). */
  readonly maxAttempts?: number;
  /**
   * Whether the server is already known to be reachable (the caller made a call before). When false (the default),
   * a failure before the first message is not retried, so a wrong address is reported at once instead of after
   * the whole backoff.
   */
  readonly reachable?: boolean;
  /** Called before each reopen, e.g. to tell the user. */
  readonly onRetry?: (err: ConnectError, attempt: number, delayMs: number) => void;
}

// 250 ms doubling to a 4 s cap, with full jitter: a restarting server is typically back within a few seconds, and
// jitter keeps many clients from reconnecting in lockstep.
const baseDelayMs = 250;
const maxDelayMs = 4_000;

export function backoffMs(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** Yields every message of `open()`, reopening it after a transport failure. Progress resets the attempt count. */
export async function* resumable<T>(open: () => AsyncIterable<T>, options: ResumeOptions = {}): AsyncGenerator<T> {
  const maxAttempts = options.maxAttempts ?? 6;
  let failures = 0;
  let reachable = options.reachable ?? false;
  for (;;) {
    try {
      for await (const message of open()) {
        failures = 0;
        reachable = true;
        yield message;
      }
      return;
    } catch (err) {
      if (!reachable || !isResumable(err) || ++failures > maxAttempts) throw err;
      const delay = backoffMs(failures);
      options.onRetry?.(err as ConnectError, failures, delay);
      await sleep(delay);
    }
  }
}
