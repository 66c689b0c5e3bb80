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

export interface ApiKeyRecord {
  /** The first 12 hex digits of the key's SHA-256: names a key in `lote keys revoke --id` without showing it. */
  readonly id: string;
  readonly tenantId: string;
  readonly label: string;
  readonly createdAt: Date;
  readonly revokedAt: Date | null;
}

/** Every key (of a tenant, when given), oldest first. */
export async function listApiKeys(pool: pg.Pool, tenantId?: string): Promise<ApiKeyRecord[]> {
  const { rows } = await pool.query(
    `SELECT left(encode(key_sha256, 'hex'), 12) AS id, tenant_id, label, created_at, revoked_at FROM lote.api_keys
      WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at, key_sha256`, [tenantId ?? null]);
  return rows.map((r) => ({ id: r.id, tenantId: r.tenant_id, label: r.label, createdAt: r.created_at, revokedAt: r.revoked_at }));
}

/**
 * Revokes a tenant's keys that are still valid: the one whose id (`listApiKeys`) starts with `id`, those with
 * `label`, or all of them when neither is given. Returns the ids revoked. Every node forgets the keys it has cached
 * at commit (the `lote_keys` notification; see Authenticator), so a revoked key stops working at once.
 */
export async function revokeApiKeys(pool: pg.Pool, r: { tenantId: string; id?: string; label?: string }): Promise<string[]> {
  const { rows } = await pool.query(
    `WITH revoked AS (
       UPDATE lote.api_keys SET revoked_at = now()
        WHERE tenant_id = $1 AND revoked_at IS NULL
          AND ($2::text IS NULL OR encode(key_sha256, 'hex') LIKE $2 || '%') AND ($3::text IS NULL OR label = $3)
       RETURNING left(encode(key_sha256, 'hex'), 12) AS id
     )
     SELECT id, pg_notify('lote_keys', '') FROM revoked`,
    [r.tenantId, r.id?.toLowerCase() ?? null, r.label ?? null]);
  return rows.map((row) => row.id as string);
}
