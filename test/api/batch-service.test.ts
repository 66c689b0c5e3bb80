import { readFileSync, writeFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase, testPool } from "../support/database.ts";
import { batchServiceClient, call, chatRequest, collect, fieldViolations } from "../support/grpc-client.ts";
import { startLoteProcess, useLoteServer, type LoteProcess } from "../support/lote-process.ts";
import { freePort } from "../support/ports.ts";
import { until } from "../support/until.ts";

const sentiment = (customId: string, text: string) => ({ customId, bodyJson: Buffer.from(JSON.stringify({ model: "lote-sentiment", input: text })) });
const texts = ["Eu amo estudar IA!", "Estou muito cansado hoje", "Esse filme foi terrível", "I love this", "I hate this"];
// The built-in model answers 400 to an empty input: a request that fails, so its batch can be retried.
const failing = (customId: string) => ({ customId, bodyJson: Buffer.from('{"model":"lote-sentiment","input":""}') });
/** The error a call ends with; fails the test when it succeeds. */
const refusal = (p: Promise<unknown>): Promise<grpc.ServiceError> => p.then(() => { throw new Error("accepted"); }, (e) => e);


describe("BatchService over gRPC (grpc-js client, server as a child process)", () => {
  let db: TestDatabase;
  let lote: LoteProcess;
  let client: any;
  let pool: pg.Pool;

  beforeAll(async () => {
    db = await createTestDatabase();
    lote = await startLoteProcess({ databaseUrl: db.url });
    client = batchServiceClient(`127.0.0.1:${lote.port}`);
    pool = testPool(db.url);
  });
  const finished = (id: string) => until(`batch ${id} to finish`, async () => {
    const b = await call(client, "getBatch", { id });
    return ["BATCH_STATUS_COMPLETED", "BATCH_STATUS_CANCELLED", "BATCH_STATUS_EXPIRED"].includes(b.status) ? b : undefined;
  });
  afterAll(async () => {
    client?.close();
    await lote?.stop();
    await pool?.end();
    await db?.drop();
  });

  it("creates a batch, gets it, and runs it to COMPLETED with one result per custom_id", async () => {
    const created = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: texts.map((t, i) => sentiment(`s${i}`, t)), metadata: { team: "ml" },
    });
    expect(created.id).toMatch(/^batch_[0-9a-z]{26}$/);
    expect(created.model).toBe("lote-sentiment");
    expect(created.requestCounts.total).toBe("5");
    const done = await until("completion", async () => {
      const b = await call(client, "getBatch", { id: created.id });
      return b.status === "BATCH_STATUS_COMPLETED" ? b : undefined;
    });
    expect(done.requestCounts.completed).toBe("5");
    expect(done.completedAt).toBeTruthy();
    expect(done.finalizingAt).toBeTruthy();
    const results = await collect(client.streamResults({ batchId: created.id }));
    expect(results.map((r: any) => r.result.customId).sort()).toEqual(["s0", "s1", "s2", "s3", "s4"]);
    const first = results.find((r: any) => r.result.customId === "s0")!.result;
    expect(first.response.statusCode).toBe(200);
    expect(first.response.body.fields.data.listValue.values[0].structValue.fields.label.stringValue).toBe("positive");
  });

  it("streams results while the batch runs and resumes from a cursor with no gap and no duplicate", async () => {
    const n = 300;
    const created = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: Array.from({ length: n }, (_, i) => sentiment(`r${i}`, texts[i % texts.length]!)),
    });
    // Read the first 40 results of a following stream, then drop the stream.
    const firstPart: any[] = await new Promise((resolve, reject) => {
      const got: any[] = [];
      const stream = client.streamResults({ batchId: created.id, follow: true, rawJson: true });
      stream.on("data", (m: any) => {
        got.push(m.result);
        if (got.length === 40) {
          stream.cancel();
          resolve(got);
        }
      });
      stream.on("error", (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED ? undefined : reject(err)));
    });
    const rest = await collect(client.streamResults({ batchId: created.id, follow: true, rawJson: true, after: firstPart.at(-1).cursor }));
    const ids = [...firstPart.map((r) => r.customId), ...rest.map((m: any) => m.result.customId)];
    expect(ids).toHaveLength(n);
    expect(new Set(ids).size).toBe(n);
    expect(JSON.parse(Buffer.from(rest[0].result.response.bodyJson).toString()).object).toBe("list");
  });

  it("refuses to resume a batch's results from a cursor of another batch, and still takes cursors of the earlier form", async () => {
    const a = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: texts.map((t, i) => sentiment(`a${i}`, t)) });
    const b = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: texts.map((t, i) => sentiment(`b${i}`, t)) });
    await finished(a.id);
    await finished(b.id);
    const fromA = (await collect(client.streamResults({ batchId: a.id })))[0].result.cursor;
    const err = await refusal(collect(client.streamResults({ batchId: b.id, after: fromA })));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "after", reason: "CURSOR_OF_OTHER_BATCH" }));
    // "r1:<seq>", the form cursors had before they named their batch: resumes after that seq, as it did.
    const all = await collect(client.streamResults({ batchId: b.id }));
    const rest = await collect(client.streamResults({ batchId: b.id, after: Buffer.from("r1:1").toString("base64url") }));
    expect(rest.map((m: any) => m.result.customId)).toEqual(all.slice(1).map((m: any) => m.result.customId));
  });

  it("refuses a result cursor or a page token whose position is beyond a bigint with INVALID_ARGUMENT naming the field", async () => {
    const created = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("big", "bom")] });
    const cursor = Buffer.from("r1:9999999999999999999").toString("base64url");
    const err = await refusal(collect(client.streamResults({ batchId: created.id, after: cursor })));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "after", reason: "INVALID_CURSOR" }));
    // A page token of the first page's filters (none), forged to a seq no bigint holds.
    const token = Buffer.from(JSON.stringify({ v: 1, s: "99999999999999999999", f: JSON.stringify([0, "", ""]) })).toString("base64url");
    const listErr = await refusal(call(client, "listBatches", { pageToken: token }));
    expect(listErr.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(fieldViolations(listErr)).toContainEqual(expect.objectContaining({ field: "page_token", reason: "INVALID_PAGE_TOKEN" }));
  });

  it("refuses a StreamResults filter it does not know instead of streaming every result", async () => {
    const created = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("ok", "bom"), failing("bad")] });
    await finished(created.id);
    const failed = await collect(client.streamResults({ batchId: created.id, filter: "RESULT_FILTER_FAILED" }));
    expect(failed.map((m: any) => m.result.customId)).toEqual(["bad"]);
    // 7: a value of a newer proto (say a filter for expired results only), unknown to this server.
    const err = await refusal(collect(client.streamResults({ batchId: created.id, filter: 7 })));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "filter", reason: "UNKNOWN_FILTER" }));
  });

  it("watches a batch from IN_PROGRESS to COMPLETED and ends the stream", async () => {
    const created = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: texts.map((t, i) => sentiment(`w${i}`, t)) });
    const updates = await collect(client.watchBatch({ id: created.id }));
    expect(updates.length).toBeGreaterThanOrEqual(1);
    expect(updates.at(-1).batch.status).toBe("BATCH_STATUS_COMPLETED");
    expect(updates.at(-1).batch.requestCounts.completed).toBe("5");
  });

  it("lists newest first with opaque page tokens and filters by status and metadata", async () => {
    for (let i = 0; i < 3; i++) {
      await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("x", "ok")], metadata: { run: "paging" } });
    }
    const seen: string[] = [];
    let token = "";
    do {
      const page = await call(client, "listBatches", { pageSize: 2, pageToken: token, metadataKey: "run", metadataValue: "paging" });
      expect(page.batches.length).toBeLessThanOrEqual(2);
      seen.push(...page.batches.map((b: any) => b.id));
      token = page.nextPageToken;
    } while (token);
    expect(seen).toHaveLength(3);
    expect(new Set(seen).size).toBe(3);
    const created = await Promise.all(seen.map((id) => call(client, "getBatch", { id })));
    const times = created.map((b: any) => Number(b.createdAt.seconds) * 1e9 + b.createdAt.nanos);
    expect([...times].sort((a, b) => b - a)).toEqual(times);
    await expect(call(client, "listBatches", { pageToken: "garbage" })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it("refuses ListBatches filters it cannot apply instead of listing everything", async () => {
    for (const [req, field, reason] of [
      [{ status: 99 }, "status", "UNKNOWN_STATUS"],
      [{ metadataValue: "paging" }, "metadata_value", "METADATA_VALUE_WITHOUT_KEY"],
      [{ metadataKey: "r\0n" }, "metadata_key", "NUL_CHARACTER"],
      [{ metadataKey: "run", metadataValue: "p\0" }, "metadata_value", "NUL_CHARACTER"],
    ] as const) {
      const err = await refusal(call(client, "listBatches", req));
      expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field, reason }));
    }
  });

  it("cancels a running batch and refuses to cancel it again", async () => {
    const created = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY", requests: Array.from({ length: 20_000 }, (_, i) => sentiment(`c${i}`, "texto")),
    });
    const cancelled = await call(client, "cancelBatch", { id: created.id });
    expect(["BATCH_STATUS_CANCELLING", "BATCH_STATUS_CANCELLED"]).toContain(cancelled.status);
    const final = await until("cancelled", async () => {
      const b = await call(client, "getBatch", { id: created.id });
      return b.status === "BATCH_STATUS_CANCELLED" ? b : undefined;
    });
    const c = final.requestCounts;
    expect(Number(c.completed) + Number(c.failed) + Number(c.cancelled)).toBe(20_000);
    expect(Number(c.cancelled)).toBeGreaterThan(0);
    await expect(call(client, "cancelBatch", { id: created.id })).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
  });

  it("returns the same batch for a repeated request_id instead of a second copy", async () => {
    const req = { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("a", "bom")], requestId: "idem-42" };
    const [a, b] = await Promise.all([call(client, "createBatch", req), call(client, "createBatch", req)]);
    expect(b.id).toBe(a.id);
    const { rows } = await pool.query("SELECT count(*)::int AS n FROM lote.batches WHERE request_id = 'idem-42'");
    expect(rows[0].n).toBe(1);
  });

  it("refuses a repeated request_id whose requests or options differ with ALREADY_EXISTS naming request_id, in small and COPY-sized batches", async () => {
    const reused = (err: grpc.ServiceError) => {
      expect(err.code).toBe(grpc.status.ALREADY_EXISTS);
      expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "request_id", reason: "REQUEST_ID_REUSED" }));
    };
    const small = { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("a", "bom")], requestId: "nightly-small" };
    const first = await call(client, "createBatch", small);
    expect((await call(client, "createBatch", small)).id).toBe(first.id);
    reused(await refusal(call(client, "createBatch", { ...small, requests: [sentiment("a", "mau")] })));
    reused(await refusal(call(client, "createBatch", { ...small, metadata: { run: "2" } })));
    // A Struct body is a protobuf map: a sender (Go's proto.Marshal) may put its keys in another order on a retry.
    const struct = (fields: [string, string][]) => ({
      endpoint: "ENDPOINT_CLASSIFY", requestId: "nightly-struct",
      requests: [{ customId: "s", body: { fields: Object.fromEntries(fields.map(([k, v]) => [k, { stringValue: v }])) } }],
    });
    const structBatch = await call(client, "createBatch", struct([["model", "lote-sentiment"], ["input", "bom"]]));
    expect((await call(client, "createBatch", struct([["input", "bom"], ["model", "lote-sentiment"]]))).id).toBe(structBatch.id);
    // Two different calls at the same moment: one makes the batch, the other is refused.
    const race = { endpoint: "ENDPOINT_CLASSIFY", requestId: "nightly-race" };
    const raced = await Promise.allSettled([
      call(client, "createBatch", { ...race, requests: [sentiment("a", "bom")] }),
      call(client, "createBatch", { ...race, requests: [sentiment("a", "bom"), sentiment("b", "mau")] }),
    ]);
    expect(raced.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    reused((raced.find((r) => r.status === "rejected") as PromiseRejectedResult).reason);
    // Over 1,000 requests the batch goes in by COPY, and its digest is stored at the end of it.
    const big = { endpoint: "ENDPOINT_CLASSIFY", requestId: "nightly-big", requests: Array.from({ length: 1_500 }, (_, i) => sentiment(`n${i}`, "bom")) };
    const made = await call(client, "createBatch", big);
    expect((await call(client, "createBatch", big)).id).toBe(made.id);
    const changed = big.requests.slice();
    changed[1_400] = sentiment("n1400", "mau");
    reused(await refusal(call(client, "createBatch", { ...big, requests: changed })));
    const { rows } = await pool.query("SELECT request_id, count(*)::int AS n FROM lote.batches WHERE request_id LIKE 'nightly-%' GROUP BY 1 ORDER BY 1");
    expect(rows).toEqual([{ request_id: "nightly-big", n: 1 }, { request_id: "nightly-race", n: 1 }, { request_id: "nightly-small", n: 1 }, { request_id: "nightly-struct", n: 1 }]);
    // The later tests count stored rows, which running batches change.
    const raceBatch = (raced.find((r) => r.status === "fulfilled") as PromiseFulfilledResult<any>).value;
    for (const id of [first.id, structBatch.id, raceBatch.id, made.id]) await finished(id);
  });

  it("answers NOT_FOUND for an unknown batch on every call that takes an id", async () => {
    for (const [method, req] of [["getBatch", { id: "batch_nope" }], ["cancelBatch", { id: "batch_nope" }], ["retryBatch", { id: "batch_nope" }]] as const) {
      await expect(call(client, method, req)).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    }
    await expect(collect(client.streamResults({ batchId: "batch_nope" }))).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(collect(client.watchBatch({ id: "batch_nope" }))).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it("answers INVALID_ARGUMENT naming the field for an empty batch id, or one with a NUL, on every call that takes an id", async () => {
    for (const id of ["", "batch_\0"]) {
      for (const [method, req, field] of [["getBatch", { id }, "id"], ["cancelBatch", { id }, "id"], ["retryBatch", { id }, "id"]] as const) {
        const err = await refusal(call(client, method, req));
        expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
        expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field }));
      }
      for (const [stream, field] of [[client.streamResults({ batchId: id }), "batch_id"], [client.watchBatch({ id }), "id"]] as const) {
        const err = await refusal(collect(stream));
        expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
        expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field }));
      }
    }
  });

  describe("bad input gets INVALID_ARGUMENT naming the field, and stores nothing", () => {
    const good = () => sentiment("ok", "bom");
    const cases: [string, Record<string, unknown>, string, string][] = [
      ["an empty batch", { endpoint: "ENDPOINT_CLASSIFY", requests: [] }, "requests", "EMPTY_BATCH"],
      ["a duplicate custom_id", { endpoint: "ENDPOINT_CLASSIFY", requests: [good(), good()] }, "requests[1].custom_id", "DUPLICATE_CUSTOM_ID"],
      ["a missing body", { endpoint: "ENDPOINT_CLASSIFY", requests: [good(), { customId: "b" }] }, "requests[1].body", "MISSING_BODY"],
      ["a body that is not JSON", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "b", bodyJson: Buffer.from("{nope") }] }, "requests[0].body_json", "INVALID_JSON"],
      ["a body that is an array", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "b", bodyJson: Buffer.from("[1]") }] }, "requests[0].body_json", "BODY_NOT_OBJECT"],
      ["a model that differs from the batch", { endpoint: "ENDPOINT_CLASSIFY", requests: [good(), { customId: "b", bodyJson: Buffer.from('{"model":"lote-embed","input":"x"}') }] }, "requests[1].body_json.model", "MODEL_MISMATCH"],
      ["an unknown endpoint", { requests: [good()] }, "endpoint", "ENDPOINT_UNSPECIFIED"],
      ["a request that asks for a streamed answer", { endpoint: "ENDPOINT_CLASSIFY", requests: [good(), { customId: "b", bodyJson: Buffer.from('{"model":"lote-sentiment","input":"x","stream":true}') }] }, "requests[1].body_json.stream", "STREAMING_NOT_SUPPORTED"],
      ["a model no backend serves", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: [chatRequest("a", "gpt-nope", "hi")] }, "requests[0].body_json.model", "UNKNOWN_MODEL"],
      ["too many metadata pairs", { endpoint: "ENDPOINT_CLASSIFY", requests: [good()], metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"])) }, "metadata", "TOO_MANY_METADATA_PAIRS"],
      ["a metadata value over 512 characters", { endpoint: "ENDPOINT_CLASSIFY", requests: [good()], metadata: { k: "v".repeat(513) } }, 'metadata["k"]', "METADATA_VALUE_TOO_LONG"],
      ["a window under a minute", { endpoint: "ENDPOINT_CLASSIFY", requests: [good()], completionWindow: { seconds: 59 } }, "completion_window", "WINDOW_OUT_OF_RANGE"],
      ["a window over 7 days", { endpoint: "ENDPOINT_CLASSIFY", requests: [good()], completionWindow: { seconds: 7 * 86400 + 1 } }, "completion_window", "WINDOW_OUT_OF_RANGE"],
      ["a NUL character in a custom_id", { endpoint: "ENDPOINT_CLASSIFY", requests: [good(), { ...good(), customId: "a\0b" }] }, "requests[1].custom_id", "NUL_CHARACTER"],
      ["a NUL character in a metadata key", { endpoint: "ENDPOINT_CLASSIFY", requests: [good()], metadata: { "k\0": "v" } }, 'metadata["k\\u0000"]', "NUL_CHARACTER"],
      ["a NUL character in a metadata value", { endpoint: "ENDPOINT_CLASSIFY", requests: [good()], metadata: { k: "v\0" } }, 'metadata["k"]', "NUL_CHARACTER"],
      ["a NUL character in request_id", { endpoint: "ENDPOINT_CLASSIFY", requests: [good()], requestId: "idem\0" }, "request_id", "NUL_CHARACTER"],
      ["an oversized custom_id", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ ...good(), customId: "x".repeat(65) }] }, "requests[0].custom_id", "CUSTOM_ID_TOO_LONG"],
      ["an oversized body", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "b", bodyJson: Buffer.from(JSON.stringify({ model: "lote-sentiment", input: "x".repeat(1024 * 1024) })) }] }, "requests[0].body_json", "BODY_TOO_LARGE"],
      ["a body_json that begins with a UTF-8 byte-order mark", { endpoint: "ENDPOINT_CLASSIFY", requests: [good(), { customId: "bom", bodyJson: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"model":"lote-sentiment","input":"x"}')]) }] }, "requests[1].body_json", "INVALID_JSON"],
      // 700,000 characters of two UTF-8 bytes each: under 1 MiB counted in characters, 1.4 MB in bytes.
      ["an oversized Struct body of multi-byte text", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "b", body: { fields: { model: { stringValue: "lote-sentiment" }, input: { stringValue: "é".repeat(700_000) } } } }] }, "requests[0].body", "BODY_TOO_LARGE"],
    ];
    for (const [what, req, field, reason] of cases) {
      it(`refuses ${what}`, async () => {
        const before = (await pool.query("SELECT (SELECT count(*) FROM lote.batches) + (SELECT count(*) FROM lote.items) AS n")).rows[0].n;
        const err: grpc.ServiceError = await call(client, "createBatch", req).then(() => { throw new Error("accepted"); }, (e) => e);
        expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
        const violations = fieldViolations(err);
        expect(violations).toContainEqual(expect.objectContaining({ field, reason }));
        expect(err.details).toContain(field);
        const after = (await pool.query("SELECT (SELECT count(*) FROM lote.batches) + (SELECT count(*) FROM lote.items) AS n")).rows[0].n;
        expect(after).toBe(before);
      });
    }

    it("counts custom_id and metadata limits in characters, not UTF-16 units: 64 emoji are a custom_id, 65 are refused as 65", async () => {
      const emoji = (n: number) => "😀".repeat(n);
      const ok = await call(client, "createBatch", {
        endpoint: "ENDPOINT_CLASSIFY", requests: [{ ...sentiment("x", "bom"), customId: emoji(64) }], metadata: { [emoji(64)]: emoji(512) },
      });
      expect(ok.metadata[emoji(64)]).toBe(emoji(512));
      // Run to its end here: its item's row goes when its result is written, which would move the next test's count.
      await finished(ok.id);
      const err: grpc.ServiceError = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ ...sentiment("x", "bom"), customId: emoji(65) }] })
        .then(() => { throw new Error("accepted"); }, (e) => e);
      expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "requests[0].custom_id", reason: "CUSTOM_ID_TOO_LONG", description: "expected at most 64 characters, got 65" }));
    });

    it("refuses a large batch whose mistake is found late, while its rows are being copied, and stores nothing", async () => {
      const before = (await pool.query("SELECT (SELECT count(*) FROM lote.batches) + (SELECT count(*) FROM lote.items) AS n")).rows[0].n;
      const requests = Array.from({ length: 6_000 }, (_, i) => sentiment(`late${i}`, "bom"));
      requests[5_999] = sentiment("late10", "bom");
      const err: grpc.ServiceError = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests }).then(() => { throw new Error("accepted"); }, (e) => e);
      expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "requests[5999].custom_id", reason: "DUPLICATE_CUSTOM_ID" }));
      const after = (await pool.query("SELECT (SELECT count(*) FROM lote.batches) + (SELECT count(*) FROM lote.items) AS n")).rows[0].n;
      expect(after).toBe(before);
    });

    it("refuses a message larger than the limit with RESOURCE_EXHAUSTED", async () => {
      const big = Array.from({ length: 300 }, (_, i) => ({ customId: `b${i}`, bodyJson: Buffer.alloc(1024 * 1024, 32) }));
      await expect(call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: big })).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED });
    });
  });

  it("estimates tokens without queueing anything, and refuses bad input as CreateBatch does", async () => {
    const before = (await pool.query("SELECT count(*)::int AS n FROM lote.batches")).rows[0].n;
    const estimate = await call(client, "estimateBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: texts.map((t, i) => sentiment(`e${i}`, t)) });
    expect(estimate.model).toBe("lote-sentiment");
    expect(estimate.requests).toHaveLength(5);
    expect(Number(estimate.totalInputTokens)).toBe(estimate.requests.reduce((n: number, r: any) => n + Number(r.inputTokens), 0));
    expect(Number(estimate.totalInputTokens)).toBeGreaterThan(0);
    const err = await call(client, "estimateBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("d", "x"), sentiment("d", "y")] }).catch((e) => e);
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "requests[1].custom_id", reason: "DUPLICATE_CUSTOM_ID" }));
    expect((await pool.query("SELECT count(*)::int AS n FROM lote.batches")).rows[0].n).toBe(before);
  });

  it("refuses a max_tokens too large for a number in EstimateBatch, naming the field, and caps a huge finite one in the estimate", async () => {
    const body = (maxTokens: string) => Buffer.from(`{"model":"lote-sentiment","input":"bom","max_tokens":${maxTokens}}`);
    const err = await refusal(call(client, "estimateBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [sentiment("ok", "bom"), { customId: "inf", bodyJson: body("1e400") }] }));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "requests[1].body_json.max_tokens", reason: "TOKENS_OUT_OF_RANGE" }));
    const estimate = await call(client, "estimateBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "huge", bodyJson: body("1e300") }] });
    expect(estimate.requests[0].outputTokens).toBe(String(2 ** 31 - 1));
  });

  it("re-runs only the failed requests of a finished batch as a new batch linked to it", async () => {
    const created = await call(client, "createBatch", {
      endpoint: "ENDPOINT_CLASSIFY",
      // The built-in model answers 400 to an empty input: that request fails, the other succeeds.
      requests: [sentiment("good", "bom"), { customId: "bad", bodyJson: Buffer.from('{"model":"lote-sentiment","input":""}') }],
    });
    await until("completion", async () => {
      const b = await call(client, "getBatch", { id: created.id });
      return b.status === "BATCH_STATUS_COMPLETED" ? b : undefined;
    });
    // Hold the model's claim lock (lote.claim_items takes it first): nothing of the model starts meanwhile, so the
    // new batch is certainly unfinished when it is retried. Without it the one-request batch could finish first.
    const holder = await pool.connect();
    try {
      await holder.query("BEGIN");
      await holder.query("SELECT pg_advisory_xact_lock(hashtext('lote.claim_items'), hashtext($1))", ["lote-sentiment"]);
      const retry = await call(client, "retryBatch", { id: created.id });
      expect(retry.retriedFrom).toBe(created.id);
      expect(retry.requestCounts.total).toBe("1");
      await expect(call(client, "retryBatch", { id: retry.id })).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    } finally {
      await holder.query("COMMIT");
      holder.release();
    }
  });

  it("retries a RunBatch batch at the default priority, not above every user batch", async () => {
    const ran = await call(client, "runBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [failing("r")] });
    expect(ran.batch.priority).toBe(1000);
    await finished(ran.batch.id);
    const retry = await call(client, "retryBatch", { id: ran.batch.id });
    expect(retry.priority).toBe(0);
  });

  it("refuses a RetryBatch request_id that belongs to another batch with ALREADY_EXISTS, and repeats its own retry", async () => {
    const first = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [failing("f")], requestId: "retry-shared" });
    const other = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [failing("o")] });
    await finished(first.id);
    await finished(other.id);
    const used = await refusal(call(client, "retryBatch", { id: other.id, requestId: "retry-shared" }));
    expect(used.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(used.details).toContain(first.id);
    expect(fieldViolations(used)).toContainEqual(expect.objectContaining({ field: "request_id", reason: "REQUEST_ID_IN_USE" }));
    const retry = await call(client, "retryBatch", { id: other.id, requestId: "retry-of-other" });
    expect((await call(client, "retryBatch", { id: other.id, requestId: "retry-of-other" })).id).toBe(retry.id);
    // The same request_id naming the retry of another batch, in RetryBatch and in CreateBatch.
    for (const attempt of [
      () => call(client, "retryBatch", { id: first.id, requestId: "retry-of-other" }),
      () => call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [failing("f")], requestId: "retry-of-other" }),
    ]) {
      const err = await refusal(attempt());
      expect(err.code).toBe(grpc.status.ALREADY_EXISTS);
      expect(err.details).toContain(retry.id);
      expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "request_id", reason: "REQUEST_ID_IN_USE" }));
    }
  });

  it("refuses a RetryBatch request_id repeated with another completion_window with ALREADY_EXISTS, and repeats the same call", async () => {
    const original = await call(client, "createBatch", { endpoint: "ENDPOINT_CLASSIFY", requests: [failing("w")] });
    await finished(original.id);
    const retry = await call(client, "retryBatch", { id: original.id, requestId: "retry-window", completionWindow: { seconds: 7200 } });
    expect(retry.completionWindowSeconds).toBe("7200");
    expect((await call(client, "retryBatch", { id: original.id, requestId: "retry-window", completionWindow: { seconds: 7200 } })).id).toBe(retry.id);
    // Another window, and none (the original's 24 h): each another call than the first.
    for (const completionWindow of [{ seconds: 3600 }, undefined]) {
      const err = await refusal(call(client, "retryBatch", { id: original.id, requestId: "retry-window", completionWindow }));
      expect(err.code).toBe(grpc.status.ALREADY_EXISTS);
      expect(err.details).toContain(retry.id);
      expect(fieldViolations(err)).toContainEqual(expect.objectContaining({ field: "request_id", reason: "REQUEST_ID_REUSED" }));
    }
  });

  it("serves Connect JSON over plain HTTP/1.1 on the same port", async () => {
    const res = await fetch(`${lote.url}/lote.v1.BatchService/CreateBatch`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ endpoint: "ENDPOINT_CLASSIFY", requests: [{ customId: "j1", body: { model: "lote-sentiment", input: "Eu amo estudar IA!" } }] }),
    });
    expect(res.status).toBe(200);
    const batch = (await res.json()) as { id: string };
    expect(batch.id).toMatch(/^batch_/);
    const got = await fetch(`${lote.url}/lote.v1.BatchService/GetBatch`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: batch.id }),
    });
    expect(((await got.json()) as { id: string }).id).toBe(batch.id);
    const missing = await fetch(`${lote.url}/lote.v1.BatchService/GetBatch`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "batch_missing" }),
    });
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { code: string }).code).toBe("not_found");
  });

  it("never logs request bodies", () => {
    expect(lote.logs()).not.toContain("Eu amo estudar");
    expect(lote.logs()).toContain('"batch created"');
  });
});

describe("RetryBatch after the batch's model left the configuration (two servers in turn on one database)", () => {
  let db: TestDatabase;
  let lote: LoteProcess | undefined;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await lote?.stop();
    await db?.drop();
  });

  it("refuses with FAILED_PRECONDITION naming the model, as CreateBatch would, instead of queueing work nothing runs", async () => {
    // Nothing listens on the backend's port: its one attempt fails with connection_refused.
    const dead = `http://127.0.0.1:${await freePort()}`;
    lote = await startLoteProcess({ databaseUrl: db.url, config: { models: [{ name: "retired", backend: { kind: "openai", urls: [dead] }, max_attempts: 1 }] } });
    let client = batchServiceClient(`127.0.0.1:${lote.port}`);
    const created = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: [chatRequest("r0", "retired", "hi")] });
    const ended = await until("the batch to end", async () => {
      const b = await call(client, "getBatch", { id: created.id });
      return b.status === "BATCH_STATUS_COMPLETED" ? b : undefined;
    });
    expect(ended.requestCounts.failed).toBe("1");
    client.close();
    await lote.stop();
    // The same database, a configuration without the model.
    lote = await startLoteProcess({ databaseUrl: db.url });
    client = batchServiceClient(`127.0.0.1:${lote.port}`);
    const err = await refusal(call(client, "retryBatch", { id: created.id }));
    client.close();
    expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err.details).toContain('"retired"');
    const pool = testPool(db.url);
    const { rows } = await pool.query("SELECT count(*)::int AS n FROM lote.batches").finally(() => pool.end());
    expect(rows[0].n).toBe(1);
  });
});

describe("RetryBatch of a big failed batch (an API node alone)", () => {
  const server = useLoteServer({ role: "api" });

  /** The API node's resident set now and at its peak since the last reset, in MB (/proc/PID/status). */
  const memory = (pid: number) => {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (field: string) => Number(status.match(new RegExp(`${field}:\\s+(\\d+) kB`))![1]);
    return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024 };
  };

  it("copies the failed requests inside Postgres, so the API node's memory does not grow with the batch's bodies", async () => {
    const pool = testPool(server.db.url);
    try {
      // A finished batch of 2,000 failed requests of 64 KB each: 128 MB of bodies, written as a worker would leave them.
      const original = "batch_retry_memory";
      const requests = 2_000;
      await pool.query(
        `INSERT INTO lote.batches (id, tenant_id, endpoint, model, status, completion_window_seconds, total, failed, result_seq,
           expires_at, completed_at)
         VALUES ($1, 'default', '/classify', 'lote-sentiment', 'completed', 86400, $2, $2, $2, now() + interval '1 day', now())`,
        [original, requests]);
      await pool.query(
        `INSERT INTO lote.items (batch_id, idx, custom_id, model, priority, status, attempt, est_tokens, body, tenant_id, last_error)
         SELECT $1, g, 'r' || g, 'lote-sentiment', 0, 'failed', 3, 16000,
                '{"model":"lote-sentiment","input":"' || repeat(chr(97 + g % 26), 65536) || '"}', 'default',
                '{"code":"server_error","message":"503"}'
           FROM generate_series(0, $2 - 1) AS g`,
        [original, requests]);
      const pid = server.lote.child.pid!;
      const before = memory(pid);
      // Writing 5 to clear_refs resets VmHWM to the current resident set (proc(5)): the peak from here is the retry's.
      writeFileSync(`/proc/${pid}/clear_refs`, "5");
      const client = batchServiceClient(`127.0.0.1:${server.lote.port}`);
      const retry = await call(client, "retryBatch", { id: original }).finally(() => client.close());
      const after = memory(pid);
      expect(retry).toMatchObject({ retriedFrom: original, status: "BATCH_STATUS_IN_PROGRESS", requestCounts: expect.objectContaining({ total: "2000" }) });
      // Read into the node and copied back, the bodies alone are 128 MB there; copied inside Postgres, next to nothing.
      expect(after.peak - before.rss).toBeLessThan(40);
      // The copy is the original's requests, in order, renumbered from 0.
      const { rows } = await pool.query(
        `SELECT n.idx, n.custom_id, n.est_tokens, n.status, n.attempt, n.priority, n.body = o.body AS same_body
           FROM lote.items n JOIN lote.items o ON o.batch_id = $2 AND o.idx = n.idx
          WHERE n.batch_id = $1 AND n.idx IN (0, 1, 1999) ORDER BY n.idx`, [retry.id, original]);
      expect(rows).toEqual([0, 1, 1999].map((idx) => ({
        idx, custom_id: `r${idx}`, est_tokens: 16000, status: "pending", attempt: 0, priority: 0, same_body: true,
      })));
    } finally {
      await pool.end();
    }
  });
});

describe("EstimateBatch of a priced model (an API node alone)", () => {
  // Nothing is called: an API node only validates, estimates and queues.
  const server = useLoteServer({
    role: "api",
    config: { models: [{ name: "priced", backend: { kind: "openai", urls: ["http://127.0.0.1:9"] }, price: { input_per_million_tokens: 1, output_per_million_tokens: 2 } }] },
  });

  it("counts the output of every choice a request asks for (n, best_of), and stores the same estimate CreateBatch's tokens_per_minute uses", async () => {
    const client = batchServiceClient(`127.0.0.1:${server.lote.port}`);
    const pool = testPool(server.db.url);
    try {
      // "hello there" is 11 characters: 3 tokens of input.
      const chat = [chatRequest("one", "priced", "hello there", { max_tokens: 100 }), chatRequest("five", "priced", "hello there", { max_tokens: 100, n: 5 })];
      const estimate = await call(client, "estimateBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: chat });
      expect(estimate.requests.map((r: any) => [r.customId, r.inputTokens, r.outputTokens])).toEqual([["one", "3", "100"], ["five", "3", "500"]]);
      expect(estimate.totalOutputTokens).toBe("600");
      expect(estimate.estimatedCostUsd).toBeCloseTo((6 * 1 + 600 * 2) / 1e6, 12);
      const created = await call(client, "createBatch", { endpoint: "ENDPOINT_CHAT_COMPLETIONS", requests: chat });
      const { rows } = await pool.query("SELECT custom_id, est_tokens FROM lote.items WHERE batch_id = $1 ORDER BY idx", [created.id]);
      expect(rows).toEqual([{ custom_id: "one", est_tokens: 103 }, { custom_id: "five", est_tokens: 503 }]);
      const prompt = (extra: Record<string, unknown>) => Buffer.from(JSON.stringify({ model: "priced", prompt: "hello there", max_tokens: 10, ...extra }));
      const completions = await call(client, "estimateBatch", {
        endpoint: "ENDPOINT_COMPLETIONS",
        requests: [{ customId: "n2", bodyJson: prompt({ n: 2 }) }, { customId: "best4", bodyJson: prompt({ n: 2, best_of: 4 }) }],
      });
      expect(completions.requests.map((r: any) => r.outputTokens)).toEqual(["20", "40"]);
    } finally {
      client.close();
      await pool.end();
    }
  });

  it("counts each token id of a token-array prompt or input as one input token", async () => {
    const client = batchServiceClient(`127.0.0.1:${server.lote.port}`);
    try {
      const ids = Array.from({ length: 5000 }, (_, i) => i);
      const embeddings = await call(client, "estimateBatch", {
        endpoint: "ENDPOINT_EMBEDDINGS",
        requests: [
          { customId: "flat", bodyJson: Buffer.from(JSON.stringify({ model: "priced", input: ids })) },
          { customId: "nested", bodyJson: Buffer.from(JSON.stringify({ model: "priced", input: [ids, ids.slice(0, 100)] })) },
        ],
      });
      expect(embeddings.requests.map((r: any) => r.inputTokens)).toEqual(["5000", "5100"]);
      const completions = await call(client, "estimateBatch", {
        endpoint: "ENDPOINT_COMPLETIONS", requests: [{ customId: "p", bodyJson: Buffer.from(JSON.stringify({ model: "priced", prompt: ids.slice(0, 300), max_tokens: 1 })) }],
      });
      expect(completions.requests[0].inputTokens).toBe("300");
    } finally {
      client.close();
    }
  });
});
