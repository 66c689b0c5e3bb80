import { create } from "@bufbuild/protobuf";
import { EstimateBatchResponseSchema, type EstimateBatchRequest, type EstimateBatchResponse } from "../../gen/lote/v1/batch_service_pb.ts";
import { validateRequests } from "../batch/validate-requests.ts";
import type { Config } from "../config/config.ts";
import { invalidArgument } from "./errors.ts";
import { endpointPath } from "./to-proto.ts";

/** EstimateBatch: CreateBatch's validation, then token and cost estimates; nothing is queued or stored. */
export function estimateBatch(config: Config, req: EstimateBatchRequest): EstimateBatchResponse {
  const checked = validateRequests(endpointPath(req.endpoint), req.requests.map((r) => ({ customId: r.customId, body: r.body, bodyJson: r.bodyJson })),
    { maxRequests: config.maxBatchRequests, maxBodyBytes: config.maxBodyBytes, models: config.models });
  if (!checked.ok) throw invalidArgument(checked.violations);
  const model = config.models.get(checked.model)!;
  let totalIn = 0;
  let totalOut = 0;
  const requests = checked.requests.map((r) => {
    totalIn += r.inputTokens;
    totalOut += r.outputTokens;
    return { customId: r.customId, inputTokens: BigInt(r.inputTokens), outputTokens: BigInt(r.outputTokens) };
  });
  const priced = model.inputPricePerMillion !== undefined || model.outputPricePerMillion !== undefined;
  const cost = ((model.inputPricePerMillion ?? 0) * totalIn + (model.outputPricePerMillion ?? 0) * totalOut) / 1e6;
  return create(EstimateBatchResponseSchema, {
    model: checked.model,
    requests,
    totalInputTokens: BigInt(totalIn),
    totalOutputTokens: BigInt(totalOut),
    estimatedCostUsd: cost,
    priced,
  });
}
