import { execFile, execFileSync, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../../src/simulator/index.ts";
import { batchServiceClient, call, chatRequest } from "../support/grpc-client.ts";
import { startLoteProcess, writeConfig, type LoteProcess } from "../support/lote-process.ts";
import { freePort } from "../support/ports.ts";
import { until } from "../support/until.ts";

const root = new URL("../../", import.meta.url).pathname;
const run = promisify(execFile);

/** The pid postmaster.pid names, while that process is alive. */
function livePostgresPid(dataDir: string): number | undefined {
  const file = join(dataDir, "postmaster.pid");
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    // None yet, or gone between a look and the read: initdb's own postgres writes one and removes it as it ends.
    return undefined;
  }
  const pid = Number(text.split("\n")[0]);
  if (!pid) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

/** Stops a postgres no lote process owns any more (fast shutdown), and waits until it is gone. */
async function stopPostgres(dataDir: string): Promise<void> {
  const pid = livePostgresPid(dataDir);
  if (pid === undefined) return;
  process.kill(pid, "SIGINT");
  await until("postgres gone", () => livePostgresPid(dataDir) === undefined, 30_000);
}

describe("the embedded PostgreSQL's life cycle", () => {
  const dir = mkdtempSync(join(tmpdir(), "lote-embedded-life-"));
  // As root, PostgreSQL runs as the postgres user, which must be able to enter the directory.
  chmodSync(dir, 0o755);
  const dataDirs: string[] = [];
  const processes: LoteProcess[] = [];
  let sim: Simulator | undefined;

  async function embeddedEnv() {
    const dataDir = join(dir, `pg${dataDirs.length}`);
    dataDirs.push(dataDir);
    return { LOTE_DATA_DIR: dataDir, LOTE_EMBEDDED_PG_PORT: String(await freePort()) };
  }

  afterEach(async () => {
    await Promise.all(processes.splice(0).map((p) => p.stop()));
    await sim?.close();
    sim = undefined;
    for (const d of dataDirs) await stopPostgres(d);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("drains and stores every finished result when Ctrl-C reaches the whole process group", async () => {
    // 20 calls of 100 ms at a time: 300 requests take ~1.5 s, so the Ctrl-C lands with calls in flight.
    sim = await startSimulator({ port: 0, latency: { kind: "fixed", ms: 100 } });
    const env = await embeddedEnv();
    const config = { models: [{ name: "sim-model", backend: { kind: "openai", urls: [sim.h2cUrl] }, max_concurrency: 20 }] };
    const port = await freePort();
    // Its own process group, as a shell gives a foreground job: the terminal's Ctrl-C goes to every process in it.
    const child = spawn(process.execPath, ["--import", "tsx", join(root, "src/cli/main.ts"), "serve", "--config", writeConfig(config)], {
      cwd: root, detached: true, stdio: ["ignore", "pipe", "pipe"],
      env: { ...withoutDatabaseUrl(process.env), ...env, LOTE_PORT: String(port), LOTE_LOG_LEVEL: "info" },
    });
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    let stdout = "";
    child.stdout.on("data", (d) => (stdout += d));
    const exited = new Promise<number | string>((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? -1)));
    try {
      await until("lote listening", () => stdout.includes('"listening"') || (child.exitCode !== null && Promise.reject(new Error(stderr))), 60_000);
      const client = batchServiceClient(`127.0.0.1:${port}`);
      const requests = Array.from({ length: 300 }, (_, i) => chatRequest(`r${i}`, "sim-model", `hello ${i}`));
      const batch = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests });
      await until("some results", async () => Number((await call(client, "getBatch", { id: batch.id })).requestCounts.completed) >= 40);
      client.close();
      process.kill(-child.pid!, "SIGINT");
      expect(await exited).toBe(0);
      expect(stderr).not.toMatch(/ECONNREFUSED|flush failed/);

      // Every call the backend answered is a stored result: read them back through a node that runs no workers.
      const answered = sim.stats().byStatus[200] ?? 0;
      expect(answered).toBeGreaterThanOrEqual(40);
      const reader = await startLoteProcess({ databaseUrl: "", role: "api", env });
      processes.push(reader);
      const db = embeddedClient(env.LOTE_DATA_DIR, env.LOTE_EMBEDDED_PG_PORT);
      await db.connect();
      try {
        const { rows } = await db.query("SELECT count(*)::int AS n FROM lote.results WHERE batch_id = $1", [batch.id]);
        expect(rows[0].n).toBe(answered);
      } finally {
        await db.end();
      }
    } finally {
      if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, "SIGKILL");
    }
  });

  it("lets `lote keys create` and `lote workers` use the embedded PostgreSQL a running `lote serve` started, and leaves it running", async () => {
    const env = await embeddedEnv();
    const serve = await startLoteProcess({ databaseUrl: "", env });
    processes.push(serve);
    const cli = (...args: string[]) =>
      run(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], { cwd: root, env: { ...withoutDatabaseUrl(process.env), ...env } });
    const key = await cli("keys", "create", "--tenant", "t1");
    expect(key.stdout.trim()).toMatch(/^\S{20,}$/);
    const workers = JSON.parse((await cli("workers", "--json")).stdout);
    expect(workers.map((w: { id: string }) => w.id).join()).toContain(`_${serve.child.pid}_`);
    // The serve still has its database.
    const client = batchServiceClient(`127.0.0.1:${serve.port}`);
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"Eu amo estudar IA!"}') }],
    });
    expect(batch.id).toBeTruthy();
    client.close();
    expect(await serve.stop()).toBe(0);
  });

  it("starts and serves after a `kill -9` left the embedded PostgreSQL running", async () => {
    const env = await embeddedEnv();
    const first = await startLoteProcess({ databaseUrl: "", env });
    first.child.kill("SIGKILL");
    await first.exited;
    expect(livePostgresPid(env.LOTE_DATA_DIR)).toBeDefined();

    const second = await startLoteProcess({ databaseUrl: "", env });
    processes.push(second);
    const client = batchServiceClient(`127.0.0.1:${second.port}`);
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"Eu amo estudar IA!"}') }],
    });
    await until("the batch completed", async () => (await call(client, "getBatch", { id: batch.id })).status === "BATCH_STATUS_COMPLETED");
    client.close();
    expect(await second.stop()).toBe(0);
  });

  it("keeps other local users out of the embedded PostgreSQL: a random password per data directory, also for one made with the old \"lote\"", async () => {
    const env = await embeddedEnv();
    const refusal = (password: string) => connectError(new pg.Client({ host: "127.0.0.1", port: Number(env.LOTE_EMBEDDED_PG_PORT), user: "lote", password, database: "postgres" }));
    const first = await startLoteProcess({ databaseUrl: "", env });
    processes.push(first);
    expect(await refusal("lote")).toBe("28P01");
    const file = join(env.LOTE_DATA_DIR, "lote-password");
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(first.logs()).not.toContain(readFileSync(file, "utf8").trim());

    // A data directory initialised before, with the password "lote" and no file: the next start replaces it.
    const old = embeddedClient(env.LOTE_DATA_DIR, env.LOTE_EMBEDDED_PG_PORT);
    await old.connect();
    await old.query("ALTER ROLE lote PASSWORD 'lote'");
    await old.end();
    rmSync(file);
    expect(await first.stop()).toBe(0);
    await stopPostgres(env.LOTE_DATA_DIR);
    const second = await startLoteProcess({ databaseUrl: "", env });
    processes.push(second);
    expect(await refusal("lote")).toBe("28P01");
    const client = batchServiceClient(`127.0.0.1:${second.port}`);
    const batch = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"Eu amo estudar IA!"}') }],
    });
    await until("the batch completed", async () => (await call(client, "getBatch", { id: batch.id })).status === "BATCH_STATUS_COMPLETED");
    client.close();
    expect(second.logs()).toContain("the embedded PostgreSQL had the well-known password");
    expect(second.logs()).not.toContain(readFileSync(file, "utf8").trim());
    expect(await second.stop()).toBe(0);
  });

  it("starts after a crash left a postmaster.pid whose pid is now another program's, or another data directory's postgres", async () => {
    const env = await embeddedEnv();
    const first = await startLoteProcess({ databaseUrl: "", env });
    const lockFile = readFileSync(join(env.LOTE_DATA_DIR, "postmaster.pid"), "utf8");
    expect(await first.stop()).toBe(0);
    // After a power cut or a container's restart postmaster.pid is still there, and its pid may since have gone to
    // another process of the user postgres runs as (lote's own, or `postgres` when lote runs as root). Before, postgres
    // refused to start beside any such process ("lock file already exists") until someone deleted the file, and lote
    // took one that looked like a postgres for the server of the data directory and connected to a dead port.
    const squatters = [["sleep", "600"], ["bash", "-c", "exec -a postgres sleep 600"]];
    for (const [command, ...args] of squatters) {
      const squatter = spawn(command!, args, { ...postgresUserIds(), cwd: "/", stdio: "ignore" });
      try {
        await until("the squatter running", () => readFileSync(`/proc/${squatter.pid}/cmdline`, "utf8").startsWith(command === "bash" ? "postgres" : "sleep"));
        writeFileSync(join(env.LOTE_DATA_DIR, "postmaster.pid"), lockFile.replace(/^\d+/, String(squatter.pid)));
        const second = await startLoteProcess({ databaseUrl: "", env });
        const client = batchServiceClient(`127.0.0.1:${second.port}`);
        const batch = await call(client, "createBatch", {
          endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "a", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"Eu amo estudar IA!"}') }],
        });
        await until("the batch completed", async () => (await call(client, "getBatch", { id: batch.id })).status === "BATCH_STATUS_COMPLETED");
        client.close();
        expect(await second.stop()).toBe(0);
        expect(squatter.exitCode).toBeNull();
      } finally {
        squatter.kill();
      }
    }
  });

  it("lets three servers started at once on a new data directory all start on it", async () => {
    const env = await embeddedEnv();
    // A fleet started together on one machine, or `npm start` and `lote keys create` on a fresh checkout: before, both
    // ran initdb on the directory, and the second failed with "directory exists but is not empty".
    const started = await Promise.allSettled([0, 1, 2].map(() => startLoteProcess({ databaseUrl: "", env })));
    for (const s of started) if (s.status === "fulfilled") processes.push(s.value);
    expect(started.filter((s) => s.status === "rejected").map((s) => String((s as PromiseRejectedResult).reason).slice(0, 600))).toEqual([]);
    // Stopped in reverse, so the one that started postgres goes last: the others use it until then.
    const running = processes.splice(0);
    const owner = running.findIndex((p) => p.logs().includes("embedded PostgreSQL started"));
    expect(owner).toBeGreaterThanOrEqual(0);
    for (const p of running.filter((_, i) => i !== owner)) expect(await p.stop()).toBe(0);
    expect(await running[owner]!.stop()).toBe(0);
  });

  it("stops cleanly, and stops the embedded PostgreSQL it started, on a SIGTERM that arrives while it is still starting", async () => {
    const env = await embeddedEnv();
    const child = spawn(process.execPath, ["--import", "tsx", join(root, "src/cli/main.ts"), "serve"], {
      cwd: root, stdio: ["ignore", "pipe", "pipe"],
      env: { ...withoutDatabaseUrl(process.env), ...env, LOTE_PORT: String(await freePort()), LOTE_LOG_LEVEL: "info" },
    });
    let stderr = "";
    const exited = new Promise<number | string>((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? -1)));
    // Sent as soon as postgres is up: migrations, the dispatcher's start and binding the ports are still to come.
    child.stderr.on("data", (d) => {
      const before = stderr;
      stderr += d;
      if (!before.includes("embedded PostgreSQL started") && stderr.includes("embedded PostgreSQL started")) child.kill("SIGTERM");
    });
    try {
      expect(await exited).toBe(0);
      // Before, Node's default ended the process at once and postgres ran on, owned by no one.
      expect(livePostgresPid(env.LOTE_DATA_DIR)).toBeUndefined();
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  });

  it("stops the embedded PostgreSQL it started when `lote keys list` gets a Ctrl-C while starting it, and exits 130", async () => {
    const env = await embeddedEnv();
    const child = spawn(process.execPath, ["--import", "tsx", join(root, "src/cli/main.ts"), "keys", "list"], {
      cwd: root, stdio: ["ignore", "ignore", "ignore"], env: { ...withoutDatabaseUrl(process.env), ...env },
    });
    const exited = new Promise<number | string>((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? -1)));
    try {
      // As soon as postgres has written its lock file: waiting for it to be ready, the password and the migrations are
      // still to come. Before, Node's default ended the command at once and postgres ran on, owned by no one.
      await until("postgres started", () => livePostgresPid(env.LOTE_DATA_DIR) !== undefined, 60_000, 5);
      child.kill("SIGINT");
      expect(await exited).toBe(130);
      expect(livePostgresPid(env.LOTE_DATA_DIR)).toBeUndefined();
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await stopPostgres(env.LOTE_DATA_DIR);
    }
  });

  it("says which data directory and what postgres last logged when the embedded PostgreSQL cannot start", async () => {
    const env = await embeddedEnv();
    // The port is taken by another listener: postgres cannot bind it and exits.
    const blocker = await startSimulator({ port: Number(env.LOTE_EMBEDDED_PG_PORT) });
    try {
      const failed = await run(process.execPath, ["--import", "tsx", "src/cli/main.ts", "workers"], { cwd: root, env: { ...withoutDatabaseUrl(process.env), ...env } })
        .then(() => undefined, (err: { code: number; stderr: string }) => err);
      expect(failed?.code).toBe(1);
      expect(failed?.stderr).toContain(env.LOTE_DATA_DIR);
      expect(failed?.stderr).toMatch(/Address already in use/);
      expect(failed?.stderr).not.toMatch(/^undefined$/m);
    } finally {
      await blocker.close();
    }
  });
});

/** A client of the embedded PostgreSQL on `dataDir`, with the password lote keeps there. */
function embeddedClient(dataDir: string, port: string): pg.Client {
  const password = readFileSync(join(dataDir, "lote-password"), "utf8").trim();
  return new pg.Client({ host: "127.0.0.1", port: Number(port), user: "lote", password, database: "postgres" });
}

/** The SQLSTATE a connection attempt failed with, or "connected". */
async function connectError(client: pg.Client): Promise<string> {
  try {
    await client.connect();
  } catch (err) {
    return String((err as { code?: string }).code);
  }
  await client.end();
  return "connected";
}

/** As root, postgres runs as the `postgres` user (see embedded-server.ts); otherwise as this process's user. */
function postgresUserIds(): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  const id = (flag: string) => Number(execFileSync("id", [flag, "postgres"], { encoding: "utf8" }).trim());
  return { uid: id("-u"), gid: id("-g") };
}

function withoutDatabaseUrl(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { DATABASE_URL: _, ...rest } = env;
  return rest;
}
