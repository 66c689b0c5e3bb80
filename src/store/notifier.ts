import { EventEmitter } from "node:events";
import pg from "pg";
import type { Logger } from "pino";
import { keepAlive } from "./open-database.ts";

export const channels = ["lote_work", "lote_batch", "lote_status", "lote_workers", "lote_keys"] as const;
export type Channel = (typeof channels)[number];

/**
 * One dedicated LISTEN connection per node, re-established (with backoff up to 5 s) when it drops, or when it
 * stops answering: every `pingMs` it runs `SELECT 1`, which must answer within `pingMs`. A LISTEN connection only
 * reads, so one whose server vanished without closing it (a failover) would otherwise wait for notifications that
 * never come, with nothing to tell. Emits
 * `notification` (channel, payload) and `reconnected`: notifications sent while it was down are lost, so on
 * `reconnected` every consumer re-reads from Postgres. Polling stays the source of truth; this only wakes early.
 */
export class Notifier extends EventEmitter<{ notification: [Channel, string]; reconnected: []; }> {
  private client: pg.Client | undefined;
  /** The connection being opened (connect and LISTEN), which `close()` must end too. */
  private connecting: pg.Client | undefined;
  private closed = false;
  private retryMs = 100;
  private timer: NodeJS.Timeout | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  /** The ping's interval, and the deadline of every step of a connection (connect, LISTEN, ping). */
  private readonly pingMs: number;

  constructor(private readonly options: { connectionString: string; logger: Logger; pingMs?: number }) {
    super();
    this.pingMs = options.pingMs ?? 10_000;
    this.setMaxListeners(0);
  }

  async start(): Promise<void> {
    await this.connect();
  }

  private async connect(): Promise<void> {
    // Deadlines for the connect (one to a host that vanished waits out SYN retries, ~2 minutes) and for every query
    // (LISTEN, the ping).
    const client = new pg.Client({
      connectionString: this.options.connectionString, application_name: "lote-listener",
      connectionTimeoutMillis: this.pingMs, query_timeout: this.pingMs, ...keepAlive,
    });
    client.on("notification", (msg) => this.emit("notification", msg.channel as Channel, msg.payload ?? ""));
    client.on("error", (err) => this.lost(client, err));
    client.on("end", () => this.lost(client, new Error("connection ended")));
    this.connecting = client;
    try {
      await client.connect();
      for (const channel of channels) await client.query(`LISTEN ${channel}`);
    } catch (err) {
      client.end().catch(() => {});
      // close() ended it: not a failure to report or retry.
      if (this.closed) return;
      throw err;
    } finally {
      if (this.connecting === client) this.connecting = undefined;
    }
    // Closed while the connection was opened: a reconnect that went on after close() kept a LISTEN connection, and
    // its socket, open for good.
    if (this.closed) {
      await client.end().catch(() => {});
      return;
    }
    this.client = client;
    this.retryMs = 100;
    this.schedulePing(client);
  }

  private schedulePing(client: pg.Client): void {
    const ms = this.pingMs;
    this.pingTimer = setTimeout(() => {
      if (this.client !== client) return;
      client.query("SELECT 1").then(
        () => this.schedulePing(client),
        (err: Error) => this.lost(client, new Error(`no answer to a ping within ${ms} ms (${err.message})`)),
      );
    }, ms);
    this.pingTimer.unref();
  }

  private lost(client: pg.Client, err: Error): void {
    if (this.closed || this.client !== client) return;
    this.client = undefined;
    this.options.logger.warn({ err: err.message }, "notification connection lost; reconnecting");
    client.end().catch(() => {});
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed) return;
    this.timer = setTimeout(async () => {
      try {
        await this.connect();
        if (this.closed) return;
        this.options.logger.info("notification connection re-established");
        this.emit("reconnected");
      } catch (err) {
        if (this.closed) return;
        this.retryMs = Math.min(this.retryMs * 2, 5_000);
        this.options.logger.warn({ err: (err as Error).message, retryMs: this.retryMs }, "notification reconnect failed");
        this.scheduleReconnect();
      }
    }, this.retryMs);
    this.timer.unref();
  }

  /** For tests: drops the connection as a network fault would. */
  kill(): void {
    this.client?.emit("error", new Error("killed"));
  }

  get connected(): boolean {
    return this.client !== undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.pingTimer);
    const clients = [this.client, this.connecting];
    this.client = undefined;
    this.connecting = undefined;
    await Promise.all(clients.map((c) => c?.end().catch(() => {})));
  }
}
