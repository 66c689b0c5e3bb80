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

/** What a revoke did: the ids it revoked, or, when an `id` prefix matched several keys, those keys and none revoked. */
export interface RevokeOutcome {
  readonly revoked: string[];
  /** Set when `id` matched more than one valid key: a prefix too short to say which one was meant. */
  readonly ambiguous?: string[];
}

/**
 * Revokes a tenant's keys that are still valid: the one whose id (`listApiKeys`) starts with `id`, those with
 * `label`, or all of them when neither is given. An `id` prefix that matches several keys revokes none of them (a
 * 4-digit prefix meant for one key revoked every key sharing it). Every node forgets the keys it has cached at commit
 * (the `lote_keys` notification; see Authenticator), so a revoked key stops working at once.
 */
export async function revokeApiKeys(pool: pg.Pool, r: { tenantId: string; id?: string; label?: string }): Promise<RevokeOutcome> {
  const { rows } = await pool.query(
    `WITH matched AS (
       SELECT key_sha256 FROM lote.api_keys
        WHERE tenant_id = $1 AND revoked_at IS NULL
          AND ($2::text IS NULL OR encode(key_sha256, 'hex') LIKE $2 || '%') AND ($3::text IS NULL OR label = $3)
          FOR UPDATE
     ), revoked AS (
       UPDATE lote.api_keys k SET revoked_at = now() FROM matched m
        WHERE k.key_sha256 = m.key_sha256 AND ($2::text IS NULL OR (SELECT count(*) FROM matched) = 1)
       RETURNING left(encode(k.key_sha256, 'hex'), 12) AS id
     )
     SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM revoked) AS revoked,
            (SELECT coalesce(array_agg(left(encode(key_sha256, 'hex'), 12) ORDER BY 1), '{}') FROM matched) AS matched,
            (SELECT pg_notify('lote_keys', '') FROM revoked LIMIT 1) AS notified`,
    [r.tenantId, r.id?.toLowerCase() ?? null, r.label ?? null]);
  const { revoked, matched } = rows[0] as { revoked: string[]; matched: string[] };
  return revoked.length === 0 && matched.length > 1 ? { revoked, ambiguous: matched } : { revoked };
}
