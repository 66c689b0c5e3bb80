import { createHash, randomBytes } from "node:crypto";
import type pg from "pg";

export function hashKey(key: string): Buffer {
  return createHash("sha256").update(key).digest();
}

/** Creates a key for a tenant (creating the tenant if new). The key is returned once and only its hash is stored. */
export async function createApiKey(pool: pg.Pool, tenantId: string, label = ""): Promise<string> {
  const key = `lote_${randomBytes(32).toString("base64url")}`;
  await pool.query("INSERT INTO lote.tenants (id) VALUES ($1) ON CONFLICT DO NOTHING", [tenantId]);
  await pool.query("INSERT INTO lote.api_keys (key_sha256, tenant_id, label) VALUES ($1, $2, $3)", [hashKey(key), tenantId, label]);
  return key;
}

/** The tenant a key belongs to, or undefined for an unknown or revoked key. */
export async function findTenantByKey(pool: pg.Pool, key: string): Promise<string | undefined> {
  // Named: with keys configured, every RPC runs it.
  const { rows } = await pool.query({
    name: "lote.find_tenant_by_key", text: "SELECT tenant_id FROM lote.api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL", values: [hashKey(key)],
  });
  return rows[0]?.tenant_id;
}

export async function revokeApiKey(pool: pg.Pool, key: string): Promise<boolean> {
  const r = await pool.query("UPDATE lote.api_keys SET revoked_at = now() WHERE key_sha256 = $1 AND revoked_at IS NULL", [hashKey(key)]);
  return r.rowCount === 1;
}
