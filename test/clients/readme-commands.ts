/**
 * The command lines the README shows for calling lote without a generated client, kept as data so that
 * test/clients/buf-curl.test.ts runs each one against a live server (with `readmeAddress` swapped for its port).
 * Paste `command` and `shows` into the README as they are.
 *
 * Lines that read $BATCH expect the reader to have run `export BATCH=<id printed by CreateBatch>`.
 * With authentication on, add `-H "authorization: Bearer $LOTE_API_KEY"` to every line (buf curl, grpcurl, curl);
 * buf curl sends it to reflection too only with `--reflect-header '*'`.
 */

export interface ReadmeCommand {
  /** Which call or query: the RPC name, or e.g. "list-services". */
  readonly name: string;
  /** The shell line exactly as the README shows it. */
  readonly command: string;
  /** What it prints, one sentence for the README. */
  readonly shows: string;
}

/** The address every README line points at: gRPC's customary port, lote's default (LOTE_PORT). */
export const readmeAddress = "127.0.0.1:50051";

/** A README line pointed at the server a test started instead of `readmeAddress`. */
export function atPort(command: string, port: number): string {
  return command.replaceAll(readmeAddress, `127.0.0.1:${port}`);
}

export const sentences = ["Eu amo estudar IA!", "Estou muito cansado hoje", "Esse filme foi terrível"] as const;

// Request bodies as plain JSON objects (`body`, a google.protobuf.Struct): what JSON tools send. Field names may be
// the proto names (custom_id) or lowerCamelCase (customId); protobuf JSON accepts both and prints lowerCamelCase.
const requests = sentences.map((input, i) => ({ custom_id: `s${i}`, body: { model: "lote-sentiment", input } }));
const classify = JSON.stringify({ endpoint: "ENDPOINT_CLASSIFY", requests });
const byId = '"{\\"id\\":\\"$BATCH\\"}"';
const followResults = '"{\\"batch_id\\":\\"$BATCH\\",\\"follow\\":true}"';
const listPage = JSON.stringify({ page_size: 5 });

// buf curl reads the schema from the server's reflection service (grpc.reflection.v1, then v1alpha); no proto files.
// --http2-prior-knowledge: lote serves cleartext HTTP/2 (h2c), which an http:// URL would otherwise not try.
const bufCurl = "npx buf curl --protocol grpc --http2-prior-knowledge";
const base = `http://${readmeAddress}`;
const rpc = (method: string) => `${base}/lote.v1.BatchService/${method}`;

/** `buf curl` (npm @bufbuild/buf, a devDependency): tested by test/clients/buf-curl.test.ts. */
export const bufCurlCommands: readonly ReadmeCommand[] = [
  { name: "list-services", command: `${bufCurl} --list-services ${base}`, shows: "the services the server offers, from reflection: lote.v1.BatchService, grpc.health.v1.Health and the reflection services" },
  { name: "list-methods", command: `${bufCurl} --list-methods ${base}`, shows: "every method of every service, one per line, e.g. lote.v1.BatchService/CreateBatch" },
  { name: "Health/Check", command: `${bufCurl} ${base}/grpc.health.v1.Health/Check`, shows: 'the server\'s health: {"status": "SERVING"}' },
  { name: "CreateBatch", command: `${bufCurl} -d '${classify}' ${rpc("CreateBatch")}`, shows: "the new batch: its id (export it as BATCH), status and request_counts" },
  { name: "GetBatch", command: `${bufCurl} -d ${byId} ${rpc("GetBatch")}`, shows: "the batch now: status, request_counts, timestamps, usage" },
  { name: "WatchBatch", command: `${bufCurl} -d ${byId} ${rpc("WatchBatch")}`, shows: "the batch at once, then again on every change of status or counts, until it is terminal" },
  { name: "StreamResults", command: `${bufCurl} -d ${followResults} ${rpc("StreamResults")}`, shows: "each result as it completes, with the model's JSON response (here the label and confidence), until the batch ends" },
  { name: "ListBatches", command: `${bufCurl} -d '${listPage}' ${rpc("ListBatches")}`, shows: "the 5 newest batches, and a next_page_token when there are more" },
  { name: "EstimateBatch", command: `${bufCurl} -d '${classify}' ${rpc("EstimateBatch")}`, shows: "estimated input/output tokens per request and in total, and the cost when the model has prices" },
  { name: "RunBatch", command: `${bufCurl} -d '${classify}' ${rpc("RunBatch")}`, shows: "a small batch run while you wait: the batch and every result inline, in input order" },
  { name: "CancelBatch", command: `${bufCurl} -d ${byId} ${rpc("CancelBatch")}`, shows: "the batch CANCELLING or CANCELLED; results finished before the cancel stay available" },
  { name: "RetryBatch", command: `${bufCurl} -d ${byId} ${rpc("RetryBatch")}`, shows: "a new batch re-running the failed, expired and cancelled requests, with retried_from set to $BATCH" },
];

/**
 * The same calls with grpcurl (github.com/fullstorydev/grpcurl), which also reads the schema from reflection.
 * NOT tested: grpcurl is not packaged for Debian bookworm nor on npm, and this machine reaches only those two.
 * They mirror the buf curl lines above (same JSON), so the buf curl tests cover the server side of each.
 */
export const grpcurlCommands: readonly ReadmeCommand[] = [
  { name: "list", command: `grpcurl -plaintext ${readmeAddress} list`, shows: "the services the server offers, from reflection" },
  { name: "describe", command: `grpcurl -plaintext ${readmeAddress} describe lote.v1.BatchService`, shows: "the service's methods with their request and response types" },
  { name: "describe-message", command: `grpcurl -plaintext ${readmeAddress} describe lote.v1.CreateBatchRequest`, shows: "the fields of a request message, with their comments" },
  { name: "Health/Check", command: `grpcurl -plaintext ${readmeAddress} grpc.health.v1.Health/Check`, shows: 'the server\'s health: {"status": "SERVING"}' },
  { name: "CreateBatch", command: `grpcurl -plaintext -d '${classify}' ${readmeAddress} lote.v1.BatchService/CreateBatch`, shows: "the new batch, with its id" },
  { name: "GetBatch", command: `grpcurl -plaintext -d ${byId} ${readmeAddress} lote.v1.BatchService/GetBatch`, shows: "the batch now" },
  { name: "WatchBatch", command: `grpcurl -plaintext -d ${byId} ${readmeAddress} lote.v1.BatchService/WatchBatch`, shows: "the batch on every change until it is terminal" },
  { name: "StreamResults", command: `grpcurl -plaintext -d ${followResults} ${readmeAddress} lote.v1.BatchService/StreamResults`, shows: "one result per request" },
  { name: "ListBatches", command: `grpcurl -plaintext -d '${listPage}' ${readmeAddress} lote.v1.BatchService/ListBatches`, shows: "the 5 newest batches" },
  { name: "EstimateBatch", command: `grpcurl -plaintext -d '${classify}' ${readmeAddress} lote.v1.BatchService/EstimateBatch`, shows: "estimated tokens and cost" },
  { name: "RunBatch", command: `grpcurl -plaintext -d '${classify}' ${readmeAddress} lote.v1.BatchService/RunBatch`, shows: "the batch and every result inline" },
  { name: "CancelBatch", command: `grpcurl -plaintext -d ${byId} ${readmeAddress} lote.v1.BatchService/CancelBatch`, shows: "the batch CANCELLING or CANCELLED" },
  { name: "RetryBatch", command: `grpcurl -plaintext -d ${byId} ${readmeAddress} lote.v1.BatchService/RetryBatch`, shows: "the new batch re-running what failed" },
];

/**
 * Plain curl, Connect protocol with JSON over HTTP/1.1 on the same port (unary calls only: streams need a
 * Connect or gRPC client). Tested by test/clients/buf-curl.test.ts.
 */
export const curlCommands: readonly ReadmeCommand[] = [
  { name: "RunBatch", command: `curl -sS -H 'content-type: application/json' -d '${classify}' ${rpc("RunBatch")}`, shows: "the batch and every result inline, as JSON, with no gRPC tooling at all" },
];
