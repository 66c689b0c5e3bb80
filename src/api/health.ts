import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  type Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../gen/grpc/health/v1/health_pb.ts";

/** What the server asks to decide whether it can serve, e.g. "can I reach Postgres?". */
export interface HealthReporter {
  /** Resolves true when the server can serve. A rejection counts as false. */
  check(): Promise<boolean>;
}

export interface HealthMonitorOptions {
  reporter: HealthReporter;
  /** How often watchers' status is refreshed while at least one Watch stream is open. Default 1000 ms. */
  pollMs?: number;
  /**
   * A check that has not answered after this long counts as NOT_SERVING: a hung database connection must not hang
   * the probe (kubelet's gRPC probe gives up after 1 s by default). Default 2000 ms.
   */
  checkTimeoutMs?: number;
}

type Listener = (status: ServingStatus) => void;

/**
 * The server's serving status, shared by every Check and Watch call. The reporter is polled only while someone
 * watches, one poll at a time, so a thousand watchers cost one database round trip per interval; Checks made while
 * a question to the reporter is on its way wait for its answer (`ask`) instead of asking again.
 */
export class HealthMonitor {
  private readonly reporter: HealthReporter;
  private readonly pollMs: number;
  private readonly checkTimeoutMs: number;
  private readonly listeners = new Set<Listener>();
  private last: ServingStatus | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** The reporter's answer on its way, shared by every status() asked meanwhile. */
  private asking: Promise<boolean> | undefined;

  constructor(options: HealthMonitorOptions) {
    this.reporter = options.reporter;
    this.pollMs = options.pollMs ?? 1000;
    this.checkTimeoutMs = options.checkTimeoutMs ?? 2000;
  }

  /** Asks the reporter now. After shutdown() always NOT_SERVING, so load balancers drain the server first. */
  async status(): Promise<ServingStatus> {
    if (this.stopped) return ServingStatus.NOT_SERVING;
    let timeout: NodeJS.Timeout | undefined;
    const expired = new Promise<boolean>((resolve) => {
      timeout = setTimeout(() => resolve(false), this.checkTimeoutMs);
    });
    const asked = this.ask();
    const healthy = await Promise.race([asked, expired]);
    clearTimeout(timeout);
    const status = !this.stopped && healthy ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    this.publish(status);
    return status;
  }

  /**
   * One question to the reporter at a time, whoever asks. A check that times out here still runs in the reporter:
   * with Postgres hung, a ping holds its pool connection until query_timeout_ms (10 s), while its probe gave up after
   * 2 s. Asked anew by each Check, Kubernetes' probes (every 1-2 s, several probers per pod) held ten or more of
   * the API pool's 20 connections at once and starved real calls; shared, health holds at most one.
   */
  private ask(): Promise<boolean> {
    this.asking ??= Promise.resolve()
      .then(() => this.reporter.check())
      .catch(() => false)
      .finally(() => (this.asking = undefined));
    return this.asking;
  }

  /** Yields the current status, then every change, until `signal` aborts. */
  async *watch(signal: AbortSignal): AsyncGenerator<ServingStatus> {
    const queue: ServingStatus[] = [];
    let wake: (() => void) | undefined;
    const listener: Listener = (status) => {
      queue.push(status);
      wake?.();
    };
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    this.listeners.add(listener);
    this.schedule();
    try {
      let sent = await this.status();
      yield sent;
      for (;;) {
        const next = queue.shift();
        if (next !== undefined) {
          // The first status() may also have been published to this listener: send changes only.
          if (next !== sent) yield (sent = next);
          continue;
        }
        if (signal.aborted) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.unwatch(listener);
    }
  }

  /** Whether a poll of the reporter is scheduled: only while someone watches. */
  get polling(): boolean {
    return this.timer !== undefined;
  }

  /** Reports NOT_SERVING from now on (graceful shutdown, gRPC's health `enterNotServingOnShutdown`). */
  shutdown(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.publish(ServingStatus.NOT_SERVING);
  }

  private publish(status: ServingStatus): void {
    if (status === this.last) return;
    this.last = status;
    for (const listener of this.listeners) listener(status);
  }

  private schedule(): void {
    if (this.timer !== undefined || this.stopped || this.listeners.size === 0) return;
    // unref: an open Watch must not keep alive a process that is otherwise done.
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.status().finally(() => this.schedule());
    }, this.pollMs).unref();
  }

  private unwatch(listener: Listener): void {
    this.listeners.delete(listener);
    if (this.listeners.size > 0) return;
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/**
 * grpc.health.v1.Health (https://github.com/grpc/grpc/blob/master/doc/health-checking.md). `services` are the names
 * that have a status: "" (the whole server) and every application service; all share the monitor's status.
 */
export function healthService(monitor: HealthMonitor, services: () => ReadonlySet<string>): ServiceImpl<typeof Health> {
  return {
    async check(req) {
      if (!services().has(req.service)) {
        throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      }
      return create(HealthCheckResponseSchema, { status: await monitor.status() });
    },
    async *watch(req, ctx) {
      if (!services().has(req.service)) {
        // The spec keeps the stream open for a service that may be registered later; ours never are, so it just
        // stays open until the client leaves or the server shuts down.
        yield create(HealthCheckResponseSchema, { status: ServingStatus.SERVICE_UNKNOWN });
        if (!ctx.signal.aborted) {
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
        }
        return;
      }
      for await (const status of monitor.watch(ctx.signal)) {
        yield create(HealthCheckResponseSchema, { status });
      }
    },
  };
}
