/**
 * ModelInferResponse → the JSON body the endpoint promises: v2 JSON for tensor pass-through, else OpenAI's
 * chat.completion / text_completion / embedding list, or vLLM's `/classify` list. An answer that lacks what the
 * plan needs (no output, too few rows) is a malformed answer: TransportError "protocol".
 */
import { TransportError } from "../backend.ts";
import type { ModelInferResponse } from "./inference-service.ts";
import type { AnswerPlan } from "./request-mapping.ts";
import { decodeTensor, fromInferParameters, type DecodedTensor } from "./tensor-codec.ts";

export interface AnswerContext {
  readonly requestId: string;
  /** The configured output name, and whether the operator set it (embeddings/classify then use it, else the first output). */
  readonly outputName: string;
  readonly outputNameGiven: boolean;
  readonly modelName: string;
  /** Unix seconds for `created`. */
  readonly now: number;
}

export function toAnswerBody(plan: AnswerPlan, response: ModelInferResponse, context: AnswerContext): string {
  const raw = response.raw_output_contents;
  if (raw.length > 0 && raw.length !== response.outputs.length) {
    throw new TransportError("protocol", `answer has ${response.outputs.length} outputs but ${raw.length} raw_output_contents`);
  }
  const outputs = response.outputs.map((tensor, i) => decodeTensor(tensor, raw[i]));
  const parameters = fromInferParameters(response.parameters);
  const model = response.model_name || context.modelName;
  const common = { created: context.now, model };
  switch (plan.kind) {
    case "tensors":
      return JSON.stringify({
        model_name: model,
        model_version: response.model_version,
        id: response.id || context.requestId,
        ...(Object.keys(parameters).length > 0 ? { parameters } : {}),
        outputs,
      });
    case "chat": {
      const content = textsOf(named(outputs, context.outputName), 1)[0]!;
      const usage = tokenUsage(outputs, parameters, [plan.prompt], [content]);
      const message = { role: "assistant", content };
      return JSON.stringify({ id: `chatcmpl-${context.requestId}`, object: "chat.completion", ...common, choices: [{ index: 0, message, logprobs: null, finish_reason: "stop" }], usage });
    }
    case "completion": {
      const texts = textsOf(named(outputs, context.outputName), plan.prompts.length);
      const choices = texts.map((text, index) => ({ index, text, logprobs: null, finish_reason: "stop" }));
      return JSON.stringify({ id: `cmpl-${context.requestId}`, object: "text_completion", ...common, choices, usage: tokenUsage(outputs, parameters, plan.prompts, texts) });
    }
    case "embedding": {
      const tensor = context.outputNameGiven ? named(outputs, context.outputName) : first(outputs);
      const data = rowsOf(tensor, plan.inputs.length).map((row, index) => ({
        object: "embedding",
        index,
        embedding: plan.base64 ? Buffer.from(new Float32Array(row).buffer).toString("base64") : row,
      }));
      const promptTokens = estimateTokens(plan.inputs);
      return JSON.stringify({ object: "list", data, model, usage: { prompt_tokens: promptTokens, total_tokens: promptTokens } });
    }
    case "classify": {
      const preferred = context.outputNameGiven ? outputs.find((t) => t.name === context.outputName) : undefined;
      const numeric = (t: DecodedTensor) => t.datatype.startsWith("FP") || t.datatype.startsWith("BF");
      const probsTensor = preferred && numeric(preferred) ? preferred : outputs.find(numeric);
      const labelsTensor = preferred?.datatype === "BYTES" ? preferred : outputs.find((t) => t.datatype === "BYTES");
      if (!probsTensor && !labelsTensor) throw new TransportError("protocol", "classify answer has neither a probability nor a label output");
      const probs = probsTensor ? rowsOf(probsTensor, plan.inputs.length) : undefined;
      const labels = labelsTensor ? textsOf(labelsTensor, plan.inputs.length) : undefined;
      const data = plan.inputs.map((_, index) => {
        const row = probs?.[index] ?? [];
        // Without a label output, name the argmax class like Hugging Face's default id2label ("LABEL_0", …).
        const label = labels?.[index] ?? `LABEL_${row.indexOf(Math.max(...row))}`;
        return { index, label, probs: row, num_classes: row.length };
      });
      const promptTokens = estimateTokens(plan.inputs);
      const usage = { prompt_tokens: promptTokens, total_tokens: promptTokens, completion_tokens: 0 };
      return JSON.stringify({ id: `classify-${context.requestId}`, object: "list", ...common, data, usage });
    }
  }
}

function named(outputs: DecodedTensor[], name: string): DecodedTensor {
  const tensor = outputs.find((t) => t.name === name);
  if (!tensor) throw new TransportError("protocol", `answer has no output ${name} (got ${outputs.map((t) => t.name).join(", ") || "none"})`);
  return tensor;
}

function first(outputs: DecodedTensor[]): DecodedTensor {
  if (!outputs[0]) throw new TransportError("protocol", "answer has no outputs");
  return outputs[0];
}

function textsOf(tensor: DecodedTensor, count: number): string[] {
  if (tensor.datatype !== "BYTES") throw new TransportError("protocol", `output ${tensor.name} is ${tensor.datatype}, expected BYTES text`);
  if (tensor.data.length < count) throw new TransportError("protocol", `output ${tensor.name} has ${tensor.data.length} texts for ${count} inputs`);
  return tensor.data.slice(0, count) as string[];
}

/** A numeric output of `count` rows, reshaped [count, dim] whatever shape the server reported. */
function rowsOf(tensor: DecodedTensor, count: number): number[][] {
  if (tensor.data.some((v) => typeof v !== "number")) throw new TransportError("protocol", `output ${tensor.name} is ${tensor.datatype}, expected numbers`);
  const dim = tensor.data.length / count;
  if (!Number.isInteger(dim) || dim === 0) throw new TransportError("protocol", `output ${tensor.name} has ${tensor.data.length} values for ${count} inputs`);
  const values = tensor.data as number[];
  return Array.from({ length: count }, (_, row) => values.slice(row * dim, (row + 1) * dim));
}

/** Counts the server reported (response parameters, or Triton vLLM's optional num_*_tokens outputs), else estimates. */
function tokenUsage(outputs: DecodedTensor[], parameters: Record<string, unknown>, prompts: string[], completions: string[]) {
  const reported = (parameter: string, output: string): number | undefined => {
    const value = parameters[parameter] ?? outputs.find((t) => t.name === output)?.data.reduce((sum: number, v) => sum + Number(v), 0);
    return typeof value === "number" && Number.isFinite(value) ? value : undefined;
  };
  const prompt_tokens = reported("prompt_tokens", "num_input_tokens") ?? estimateTokens(prompts);
  const completion_tokens = reported("completion_tokens", "num_output_tokens") ?? estimateTokens(completions);
  return { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
}

/** ~4 characters a token: OpenAI's rule of thumb for English text, used only when the server reports no counts. */
export function estimateTokens(texts: string[]): number {
  return texts.reduce((sum, text) => sum + Math.ceil(text.length / 4), 0);
}
