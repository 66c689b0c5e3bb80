import { EventEmitter } from "node:events";
import type pg from "pg";
import type { Logger } from "pino";
import type { Backend } from "../backends/backend.ts";
import type { ModelConfig, WorkerConfig } from "../config/config.ts";
import { claimItems, heartbeat, markWorkerAlive, retireWorker, type ClaimedItem, type Completion, type Notifier } from "../store/index.ts";
import { callErrorKind, CallErrorLog } from "./call-errors.ts";
import { Completer } from "./completer.ts";
import { fleetShare } from "./fleet-share.ts";
import { executeCall } from "./execute-call.ts";
import { HeldItems } from "./held-items.ts";
import { InFlight } from "./in-flight.ts";
import { TenantTurns } from "./tenant-turns.ts";
import { Maintenance } from "./maintenance.ts";

export interface DispatcherOptions {
  /**
   * For the dispatcher's bounded queries: claims, completions, heartbeats, the worker registry, lease rescue and
   * finalisation. Give it a pool whose connections time out (Database.openPool, `query_timeout_ms`): a query
   * sent into a connection whose server vanished without closing it (a failover) otherwise waits for TCP to give
   * up, ~15 minutes, and the node's claims, completions or heartbeats with it. Timing out is safe for each of them:
   * a completion is retried and fenced by attempt, a claim that committed unseen leaves rows whose leases run out
   * (heartbeats renew only the items the node holds), and a missed heartbeat is made up by the next.
   */
  readonly pool: pg.Pool;
  /** For statements of unbounded size, with no timeout: expiring a whole batch, VACUUM. Default `pool`. */
  readonly bulkPool?: pg.Pool;
  readonly notifier: Notifier;
  readonly backends: ReadonlyMap<string, Backend>;
  readonly models: ReadonlyMap<string, ModelConfig>;
  readonly worker: WorkerConfig;
  /** Unique per process: leases and heartbeats are keyed by it. */
  readonly workerId: string;
  readonly logger: Logger;
  /** Jitter source; injectable so tests can pin backoff. */
  readonly random?: () => number;
  /** Told of every claim and every call's end (metrics). */
  readonly observer?: DispatchObserver;
}

/** What a call's end wrote: its completion's outcome, or "expired" when expiry had written the item already. */
export type CallOutcome = Completion["outcome"] | "expired";

/** What the dispatcher asks of Postgres, for counting the statements that failed. */
export type DatabaseOperation = "claim" | "completion" | "heartbeat" | "workers" | "maintenance";

export interface DispatchObserver {
  claimed(model: string, items: number, seconds: number): void;
  callEnded(model: string, outcome: CallOutcome, seconds: number): void;
  /** A call failed at the backend (retried or not), by kind: `http_<status>` or the transport error (`callErrorKind`). */
  callFailed(model: string, kind: string): void;
  /** A statement failed (a lost or timed-out connection, most often); it is retried. */
  databaseFailed(operation: DatabaseOperation): void;
  /** Maintenance rescued items of the model whose lease had lapsed: the node running them crashed or lost Postgres. */
  rescued(model: string, items: number): void;
}

interface ModelLoop {
  readonly config: ModelConfig;
  readonly backend: Backend;
  inFlight: number;
  /**
   * The slots of max_concurrency this node takes, shared with the worker nodes alive for the model by their
   * capacities (`fleetShare`, `refreshShares`). The claim still holds the limit itself fleet-wide; the share only
   * keeps this node from taking every slot another node's calls free.
   */
  share: number;
  /** The worker nodes alive for the model, this one included, as last read. */
  workers: number;
  /**
   * inFlight by tenant, least recently served first: whose turn the next free slot is (the claim gives it to the
   * tenant holding the fewest, and among those to the one served longest ago).
   */
  readonly tenantTurns: TenantTurns;
  /** Ends the loop's current wait; set only while it waits. */
  wake: (() => void) | undefined;
  /**
   * A wake-up came while the loop was not waiting (a claim was in flight): the next wait returns at once. Without
   * it, a batch whose notification arrived during a claim that read the queue before the batch committed waited
   * for the next poll, a second by default (a two-worker test saw one worker sit out a whole 2,000-request batch).
   */
  woken: boolean;
  /** How long the next short claim waits before looking again (see `run`). */
  recheckMs: number;
  running: Promise<void> | undefined;
}

export type DispatcherState = "idle" | "running" | "stopping" | "stopped";

/**
 * The first wait after a claim that came back short; it doubles up to the poll interval (see `run`). 25 ms: a few
 * completion flushes (5 ms each) of the nodes that hold the model's slots.
 */
const firstRecheckMs = 25;

/** Claimed items between two vacuums of lote.items; why and the numbers: vacuumItems in src/store/claim-items.ts. */
const vacuumEveryItems = 50_000;

/**
 * The worker pool of one node: per model a producer loop that claims at most its free slots (River's producer),
 * an executor per claimed item, one completer batching results, and the maintenance loop (expiry, finalisation,
 * lease rescue). Slots free when a call ends; the next claim takes all slots freed while the previous claim ran,
 * so claims batch themselves under load and stay single-row when idle.
 */
export class Dispatcher extends EventEmitter<{ flushed: [{ batchId: string; finished: boolean }[]] }> {
  private readonly loops = new Map<string, ModelLoop>();
  private readonly inFlight = new InFlight();
  /** What the heartbeat renews: from claim until the completion is written. */
  private readonly held = new HeldItems();
  private readonly completer: Completer;
  private readonly maintenance: Maintenance;
  private status: DispatcherState = "idle";
  private heartbeatTimer: NodeJS.Timeout | undefined;
  /** The first reading of lote.workers (or its failure): the loops claim only after it, so a new node starts at its share. */
  private sharesRead: Promise<void> = Promise.resolve();
  /** The reading of lote.workers under way, if any. */
  private sharesRefresh: Promise<void> | undefined;
  private sharesAgain = false;
  /**
   * Node slots (worker.concurrency) taken by claims on their way: claims of different models run at once, and each
   * must count the others' before its answer comes, or two loops that both saw 4 free slots took 4 each (8 calls
   * ran on a node of 4 in a test).
   */
  private reserved = 0;
  /**
   * The loops waiting for a node slot (the node is full, their own share is not), longest waiting first. A call's
   * end gives its slot to the first of them before its own loop: woken first, it reserves the slot first. Without
   * it the model whose call ended took every freed slot back at once, while a model that found the node full looked
   * again only a poll later: a 20-request batch of one model waited for all of a 200-request one of another.
   */
  private readonly waitingForNode = new Set<ModelLoop>();
  private claimedTotal = 0;
  private claimedSinceVacuum = 0;
  private readonly random: () => number;
  private readonly log: Logger;
  private readonly callErrors: CallErrorLog;

  constructor(private readonly o: DispatcherOptions) {
    super();
    this.random = o.random ?? Math.random;
    this.log = o.logger.child({ workerId: o.workerId });
    this.callErrors = new CallErrorLog(this.log);
    this.completer = new Completer({
      pool: o.pool, logger: this.log, batchSize: o.worker.completionBatchSize, flushMs: o.worker.completionFlushMs,
      onFailed: () => o.observer?.databaseFailed("completion"),
      onFlushed: (touched, rows) => {
        for (const row of rows) this.held.release(row);
        const finished = touched.filter((t) => t.finished).map((t) => t.batchId);
        if (finished.length > 0) this.maintenance.finishSoon(finished);
        // Retried rows are pending again: claim them now rather than at the next poll. Other flushes change
        // nothing for our claims (our own rows are counted from memory, see `ownCalls`); waking every loop on
        // every flush made each idle model (the built-in ones) run an empty claim per flush: 2,700 claims for
        // 60,000 items at zero latency, 1,200 without (bench/dispatch.ts).
        if (rows.some((r) => r.outcome === "retry")) this.wakeAll();
        this.emit("flushed", touched);
      },
    });
    this.maintenance = new Maintenance({
      pool: o.pool, bulkPool: o.bulkPool ?? o.pool, models: o.models, inFlight: this.inFlight, logger: this.log,
      intervalMs: o.worker.maintenanceIntervalMs, onFailed: () => o.observer?.databaseFailed("maintenance"),
      onRescued: (model, items) => o.observer?.rescued(model, items),
    });
    for (const [name, config] of o.models) {
      const backend = o.backends.get(name);
      if (backend) this.loops.set(name, { config, backend, inFlight: 0, share: config.maxConcurrency, workers: 1, tenantTurns: new TenantTurns(), wake: undefined, woken: false, recheckMs: firstRecheckMs, running: undefined });
    }
  }

  start(): void {
    if (this.status !== "idle") throw new Error(`Expected the dispatcher to be idle, got ${this.status}`);
    this.status = "running";
    this.o.notifier.on("notification", this.onNotification);
    this.o.notifier.on("reconnected", this.onReconnected);
    this.sharesRead = this.refreshShares();
    for (const loop of this.loops.values()) loop.running = this.run(loop);
    // Renew leases three times per lease: two heartbeats can be lost before another node rescues our items. The
    // worker's own row (lote.workers) is renewed with them, and the shares read again.
    this.heartbeatTimer = setInterval(() => {
      heartbeat(this.o.pool, this.o.workerId, this.held.list(), this.o.worker.leaseMs).catch((err) => {
        this.o.observer?.databaseFailed("heartbeat");
        this.log.warn({ err: (err as Error).message }, "heartbeat failed");
      });
      void this.refreshShares();
    }, Math.max(100, Math.floor(this.o.worker.leaseMs / 3)));
    this.heartbeatTimer.unref();
    this.maintenance.start();
    this.log.info({ models: [...this.loops.keys()], concurrency: this.o.worker.concurrency }, "dispatcher started");
  }

  private readonly onNotification = (channel: string, payload: string): void => {
    if (channel === "lote_work") {
      const loop = this.loops.get(payload);
      if (loop) this.wake(loop);
    } else if (channel === "lote_status") {
      // "<status> <batch id>", sent by every status transition (src/store/transition-batch.ts).
      const [status = "", batchId = ""] = payload.split(" ");
      this.inFlight.abortIfStopped(batchId, status);
    } else if (channel === "lote_workers" && payload !== this.o.workerId) {
      // A node started or stopped: the shares change now, not at our next heartbeat.
      void this.refreshShares();
    }
  };

  private readonly onReconnected = (): void => {
    this.wakeAll();
    void this.refreshShares();
  };

  /**
   * Renews this worker's row in lote.workers and sets each model's share from the workers alive for it. One reading
   * at a time; a request that comes during one makes one more. A failure keeps the shares as they were (logged):
   * the fleet-wide limit does not depend on them.
   */
  private refreshShares(): Promise<void> {
    if (this.status !== "running") return Promise.resolve();
    if (this.sharesRefresh) {
      this.sharesAgain = true;
      return this.sharesRefresh;
    }
    return (this.sharesRefresh = this.readShares().finally(() => (this.sharesRefresh = undefined)));
  }

  private async readShares(): Promise<void> {
    try {
      do {
        this.sharesAgain = false;
        const others = await markWorkerAlive(this.o.pool, {
          workerId: this.o.workerId, capacities: new Map([...this.loops].map(([name, l]) => [name, this.capacity(l)])),
          liveMs: this.o.worker.leaseMs,
        });
        if (this.status !== "running") return;
        for (const [name, loop] of this.loops) {
          const caps = others.get(name) ?? [];
          loop.workers = 1 + caps.length;
          const share = fleetShare(loop.config.maxConcurrency, this.capacity(loop), caps);
          if (share !== loop.share) this.log.info({ model: name, share, workers: loop.workers }, "model share changed");
          if (share > loop.share) this.wake(loop);
          loop.share = share;
        }
      } while (this.sharesAgain);
    } catch (err) {
      this.o.observer?.databaseFailed("workers");
      this.log.warn({ err: (err as Error).message }, "reading the workers alive failed");
    }
  }

  /** Calls of the loop's model this node can run at most. */
  private capacity(loop: ModelLoop): number {
    return Math.min(this.o.worker.concurrency, loop.config.maxConcurrency);
  }

  private readonly wakeAll = (): void => {
    for (const loop of this.loops.values()) this.wake(loop);
  };

  private wake(loop: ModelLoop): void {
    if (loop.wake) loop.wake();
    else loop.woken = true;
  }

  private waitForWake(loop: ModelLoop, ms: number): Promise<void> {
    if (loop.woken) {
      loop.woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(), ms);
      const done = () => {
        clearTimeout(timer);
        loop.wake = undefined;
        resolve();
      };
      loop.wake = done;
    });
  }

  private async run(loop: ModelLoop): Promise<void> {
    const { config } = loop;
    let errors = 0;
    await this.sharesRead;
    while (this.status === "running") {
      const nodeFree = this.o.worker.concurrency - this.inFlight.size - this.reserved;
      const free = Math.min(nodeFree, loop.share - loop.inFlight);
      // Backpressure: if Postgres falls behind on completions, stop taking new work until it catches up.
      if (free <= 0 || this.completer.backlog > 4 * this.o.worker.completionBatchSize) {
        if (nodeFree <= 0 && loop.share - loop.inFlight > 0) this.waitingForNode.add(loop);
        await this.waitForWake(loop, this.o.worker.pollIntervalMs);
        this.waitingForNode.delete(loop);
        continue;
      }
      let claimed: ClaimedItem[];
      // The claim sees everything committed before it starts; only a wake-up from now on calls for another.
      loop.woken = false;
      const claimStarted = performance.now();
      this.reserved += free;
      try {
        claimed = await claimItems(this.o.pool, {
          model: config.name, limit: free, workerId: this.o.workerId, leaseMs: this.o.worker.leaseMs,
          maxConcurrency: config.maxConcurrency, requestsPerMinute: config.requestsPerMinute, tokensPerMinute: config.tokensPerMinute,
          // Exact: claims of a model are serial on this node, and every item claimed before is in loop.inFlight
          // until its call ends. Rows whose call ended but whose completion is not yet written do not count.
          ownCalls: loop.inFlight,
          tenantCalls: loop.tenantTurns.inFlight,
        });
        // What it claimed is counted in inFlight below, with no await in between.
        this.reserved -= free;
        errors = 0;
      } catch (err) {
        this.reserved -= free;
        this.passNodeSlot();
        errors++;
        this.o.observer?.databaseFailed("claim");
        this.log.warn({ err: (err as Error).message, model: config.name }, "claim failed");
        await this.waitForWake(loop, Math.min(5_000, 100 * 2 ** errors));
        continue;
      }
      this.o.observer?.claimed(config.name, claimed.length, (performance.now() - claimStarted) / 1000);
      this.claimedTotal += claimed.length;
      this.claimedSinceVacuum += claimed.length;
      if (this.claimedSinceVacuum >= vacuumEveryItems) {
        this.claimedSinceVacuum = 0;
        this.maintenance.vacuumSoon();
      }
      for (const item of claimed) this.execute(loop, item);
      if (claimed.length < free) this.passNodeSlot();
      if (claimed.length > 0) loop.recheckMs = firstRecheckMs;
      // Fewer than asked: the queue is empty for now, or a fleet-wide limit holds (max_concurrency, requests or
      // tokens per minute). A notification of new work, a retry coming due or a call of ours ending wakes the loop.
      // Nothing announces that other nodes' calls ended and freed the limit, though, so look again after 25 ms,
      // doubling up to the poll interval while claims keep coming back empty: a node that found every slot taken
      // by another one slept a whole poll (1 s) while the other's calls ended, in a test where each of two workers
      // could run half the model's slots. An idle queue costs ~6 empty claims per burst of work, then one a poll.
      if (claimed.length < free) {
        await this.waitForWake(loop, Math.min(loop.recheckMs, this.o.worker.pollIntervalMs));
        loop.recheckMs = Math.min(loop.recheckMs * 2, this.o.worker.pollIntervalMs);
      }
    }
  }

  private execute(loop: ModelLoop, item: ClaimedItem): void {
    const controller = new AbortController();
    this.held.hold(item);
    this.inFlight.add(item.batchId, controller);
    loop.inFlight++;
    loop.tenantTurns.started(item.tenantId);
    const started = performance.now();
    executeCall(loop.backend, loop.config, item, controller, this.random)
      .then((completion) => {
        this.o.observer?.callEnded(loop.config.name, completion?.outcome ?? "expired", (performance.now() - started) / 1000);
        const errorKind = callErrorKind(completion);
        if (errorKind !== undefined) {
          this.o.observer?.callFailed(loop.config.name, errorKind);
          this.callErrors.record(loop.config.name, errorKind, completion!);
        }
        if (!completion) {
          // Expiry wrote this item's result already.
          this.held.release(item);
          return;
        }
        this.completer.push(completion);
        if (completion.outcome === "retry") {
          // Come back for it when its backoff ends, not only at the next poll.
          setTimeout(() => this.wake(loop), completion.retryDelayMs + 20).unref();
        } else if (completion.outcome === "cancelled") {
          this.maintenance.finishSoon([item.batchId]);
        }
      })
      .finally(() => {
        this.inFlight.remove(item.batchId, controller);
        loop.inFlight--;
        loop.tenantTurns.ended(item.tenantId);
        this.passNodeSlot();
        this.wake(loop);
      });
  }

  /** A node slot came free (a call ended, or a claim left some of its reservation): the longest waiting loop's turn. */
  private passNodeSlot(): void {
    for (const waiting of this.waitingForNode) {
      this.waitingForNode.delete(waiting);
      this.wake(waiting);
      return;
    }
  }

  /** Observable internals for tests and metrics. */
  state() {
    return {
      status: this.status,
      inFlight: this.inFlight.size,
      held: this.held.size,
      claimed: this.claimedTotal,
      completed: this.completer.flushed,
      backlog: this.completer.backlog,
      models: Object.fromEntries([...this.loops].map(([name, l]) => [name, { inFlight: l.inFlight, share: l.share, workers: l.workers }])),
    };
  }

  /**
   * Stops claiming, lets calls in flight finish for up to `graceMs`, aborts the rest (they go back to pending at
   * once), and writes every completion before returning.
   */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.status !== "running") return;
    this.status = "stopping";
    this.wakeAll();
    this.o.notifier.off("notification", this.onNotification);
    this.o.notifier.off("reconnected", this.onReconnected);
    // The heartbeat goes on until every completion is written (below): the calls in flight may run for the whole
    // grace period (up to 600 s), far past a lease (30 s by default), and an item whose lease ran out meanwhile
    // would be rescued and called again by another node while this one's call still ran, over max_concurrency,
    // and this call's answer then fenced out. It renews leases only: `refreshShares` does nothing once stopping.
    this.maintenance.stop();
    await Promise.all([...this.loops.values()].map((l) => l.running));
    // Claims have stopped: the other nodes may take our shares now (our calls in flight still count against the
    // fleet-wide limit until their completions are written). After any reading under way, whose upsert would
    // otherwise bring the row back.
    await this.sharesRefresh;
    await retireWorker(this.o.pool, this.o.workerId).catch((err) =>
      this.log.warn({ err: (err as Error).message }, "removing this worker from lote.workers failed"));
    let graceTimer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<void>((resolve) => (graceTimer = setTimeout(resolve, graceMs)));
    await Promise.race([this.inFlight.whenEmpty(), graceOver]);
    clearTimeout(graceTimer);
    this.inFlight.abortAll("shutdown");
    await this.inFlight.whenEmpty();
    await this.completer.drain();
    clearInterval(this.heartbeatTimer);
    await this.maintenance.idle();
    this.status = "stopped";
    this.log.info("dispatcher stopped");
  }
}
