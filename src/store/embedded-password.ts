/**
 * The password of the embedded PostgreSQL's `lote` role. The server listens on 127.0.0.1, where every local user
 * (and every container sharing the host's network) can reach it, and `lote` is a superuser: with the password
 * "lote", written in this source, any of them could read every tenant's batches, add an API key, or run programs as
 * the server's user (COPY ... TO PROGRAM). So each data directory gets a random password of its own, kept in a file
 * inside it that only its owner can read, like the data itself (mode 0600 in a 0700 directory).
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import type { Logger } from "pino";
import { EmbeddedPostgresError } from "./embedded-server.ts";

/** The password data directories initialised before each got a random one. */
const legacyPassword = "lote";

/** Where a data directory keeps its password. */
export function passwordFile(dataDir: string): string {
  return join(dataDir, "lote-password");
}

/** 32 random bytes, base64url: nothing a URL or a SQL literal would need to escape. */
export function newPassword(): string {
  return randomBytes(32).toString("base64url");
}

/** Writes the password whole or not at all (a reader never sees half a file), readable by its owner only. */
export function savePassword(dataDir: string, password: string): void {
  const file = passwordFile(dataDir);
  writeFileSync(`${file}.tmp`, `${password}\n`, { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

function readPassword(dataDir: string): string | undefined {
  const file = passwordFile(dataDir);
  return existsSync(file) ? readFileSync(file, "utf8").trim() : undefined;
}

/**
 * The password to connect to the running embedded server on `dataDir` with. A data directory initialised by an
 * earlier lote (password "lote", no file) gets a random password here, once: under an advisory lock, so that two
 * lote commands starting at once do not each set their own and leave the file naming the other's.
 */
export async function embeddedPassword(dataDir: string, port: number, logger: Logger): Promise<string> {
  const saved = readPassword(dataDir);
  if (saved !== undefined) return saved;
  const client = new pg.Client({ host: "127.0.0.1", port, user: "lote", password: legacyPassword, database: "postgres" });
  try {
    await client.connect();
  } catch (err) {
    // Another command replaced the password between our read and our connect.
    const now = readPassword(dataDir);
    if (now !== undefined) return now;
    throw new EmbeddedPostgresError(`the embedded PostgreSQL in ${dataDir} refused lote's login and ${passwordFile(dataDir)} is missing: ${(err as Error).message}`);
  }
  try {
    // Any number will do that no other lote statement locks: this one spells "lotepass" in ASCII.
    await client.query("SELECT pg_advisory_lock(7813591857537053555)");
    const raced = readPassword(dataDir);
    if (raced !== undefined) return raced;
    const password = newPassword();
    // ALTER ROLE takes no bind parameters; the password is base64url, and escapeLiteral quotes it anyway.
    await client.query(`ALTER ROLE lote PASSWORD ${client.escapeLiteral(password)}`);
    savePassword(dataDir, password);
    logger.warn({ dataDir, file: passwordFile(dataDir) }, "the embedded PostgreSQL had the well-known password \"lote\"; it now has a random one, kept in its data directory");
    return password;
  } finally {
    await client.end().catch(() => {});
  }
}
