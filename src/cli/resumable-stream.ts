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
  /**
   * How long to go on reopening after failures with no message in between, once the server is known to be
   * reachable. Default 5 minutes: a server restart is over in seconds, but a PostgreSQL failover or restart takes
   * 20-60 s, during which the server answers UNAVAILABLE; giving up after six tries (~10 s, as before) ended a
   * `results --follow` during a 20 s database outage that the server itself rode out. Each retry is reported
   * (`onRetry`), so a user who would rather stop can press Ctrl-C.
   */
  readonly retryForMs?: number;
  /**
   * Whether the server is already known to be reachable (the caller made a call before). When false (the default),
   * a failure before the first message is not retried, so a wrong address is reported at once instead of after
   * the whole backoff.
   */
  readonly reachable?: boolean;
  /** Called before each reopen, e.g. to tell the user. */
  readonly onRetry?: (err: ConnectError, attempt: number, delayMs: number) => void;
}

// 250 ms doubling to a 4 s cap, with equal jitter (between half and all of it): a restarting server is typically
// back within a few seconds, and jitter keeps many clients from reconnecting in lockstep.
const baseDelayMs = 250;
const maxDelayMs = 4_000;

export function backoffMs(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** Yields every message of `open()`, reopening it after a transport failure. Progress resets the clock. */
export async function* resumable<T>(open: () => AsyncIterable<T>, options: ResumeOptions = {}): AsyncGenerator<T> {
  const retryForMs = options.retryForMs ?? 300_000;
  let failures = 0;
  let failingSince = 0;
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
      if (!reachable || !isResumable(err)) throw err;
      if (failures++ === 0) failingSince = Date.now();
      else if (Date.now() - failingSince > retryForMs) throw err;
      const delay = backoffMs(failures);
      options.onRetry?.(err as ConnectError, failures, delay);
      await sleep(delay);
    }
  }
}

/** One unary call, retried as `resumable` reopens a stream: after transport failures, once the server is reachable. */
export async function retryCall<T>(call: () => Promise<T>, options: ResumeOptions = {}): Promise<T> {
  for await (const value of resumable(async function* () {
    yield await call();
  }, options)) return value;
  throw new Error("Expected the call to answer or fail, got neither");
}
