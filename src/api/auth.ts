import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import type pg from "pg";
import { findTenantByKey } from "../store/index.ts";

/** The tenant every batch belongs to when authentication is off. */
export const defaultTenant = "default";

// Keys are looked up once per this many ms per node: one hash lookup per call would add a round trip to every RPC.
// A revocation empties every node's cache at once (`forget`, on the `lote_keys` notification); should that
// notification be missed (the LISTEN connection down at the time), the key still stops working within 30 s.
const cacheMs = 30_000;

/**
 * Resolves the calling tenant from "authorization: Bearer <key>". With auth off every call is the default tenant.
 */
export class Authenticator {
  private readonly cache = new Map<string, { tenant: string | undefined; until: number }>();

  constructor(private readonly options: { required: boolean; pool: pg.Pool; now?: () => number }) {}

  async tenantOf(ctx: HandlerContext): Promise<string> {
    if (!this.options.required) return defaultTenant;
    const header = ctx.requestHeader.get("authorization") ?? "";
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    if (!match) throw new ConnectError('missing credentials: expected header "authorization: Bearer <api key>"', Code.Unauthenticated);
    const key = match[1]!;
    const now = (this.options.now ?? Date.now)();
    let entry = this.cache.get(key);
    if (!entry || entry.until < now) {
      entry = { tenant: await findTenantByKey(this.options.pool, key), until: now + cacheMs };
      if (this.cache.size > 10_000) this.cache.clear();
      this.cache.set(key, entry);
    }
    if (!entry.tenant) throw new ConnectError("invalid or revoked API key", Code.Unauthenticated);
    return entry.tenant;
  }

  /** Drops every cached key: a key was revoked somewhere in the fleet. */
  forget(): void {
    this.cache.clear();
  }
}
