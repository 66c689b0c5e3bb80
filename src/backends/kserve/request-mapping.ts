/**
 * OpenAI request body → ModelInferRequest, plus the plan for turning the answer back into the endpoint's shape.
 * A body with an `inputs` array is a v2 JSON request and passes through on any endpoint; otherwise the text
 * goes in as one BYTES tensor (Triton's vLLM and TensorRT-LLM models take `text_input`, shape [1] per prompt).
 */
import type { EndpointPath } from "../backend.ts";
import type { InferParameters, InferTensor, ModelInferRequest } from "./inference-service.ts";
import { expected, InvalidRequestError } from "./invalid-request-error.ts";
import { encodeContents, encodeRaw, flattenData, rawOnlyDatatypes, toInferParameter, toInferParameters } from "./tensor-codec.ts";

export type AnswerPlan =
  | { readonly kind: "tensors" }
  | { readonly kind: "chat"; readonly prompt: string }
  | { readonly kind: "completion"; readonly prompts: string[] }
  | { readonly kind: "embedding"; readonly inputs: string[]; readonly base64: boolean }
  | { readonly kind: "classify"; readonly inputs: string[] };

export interface RequestMappingOptions {
  readonly modelName: string;
  readonly modelVersion?: string;
  readonly inputName: string;
}

type Body = Record<string, unknown>;

/** Throws InvalidRequestError for a body the protocol cannot carry. `id` is sent as the request id. */
export function toInferRequest(
  endpoint: EndpointPath,
  bodyText: string,
  options: RequestMappingOptions,
  id: string,
): { request: ModelInferRequest; plan: AnswerPlan } {
  const body = parseBody(bodyText);
  const base = { model_name: options.modelName, model_version: options.modelVersion ?? "", id };
  if (Array.isArray(body.inputs)) return { request: { ...base, ...tensorRequest(body) }, plan: { kind: "tensors" } };
  const text = (texts: string[], parameters: InferParameters = {}): ModelInferRequest => ({
    ...base,
    parameters,
    inputs: [{ name: options.inputName, datatype: "BYTES", shape: [texts.length], contents: encodeContents("BYTES", texts, "input") }],
  });
  switch (endpoint) {
    case "/v1/chat/completions": {
      const prompt = chatPrompt(body.messages);
      return { request: text([prompt], samplingParameters(body)), plan: { kind: "chat", prompt } };
    }
    case "/v1/completions": {
      const prompts = texts(body.prompt, "`prompt`");
      return { request: text(prompts, samplingParameters(body)), plan: { kind: "completion", prompts } };
    }
    case "/v1/embeddings": {
      const inputs = texts(body.input, "`input`");
      const format = body.encoding_format ?? "float";
      if (format !== "float" && format !== "base64") throw expected('`encoding_format` to be "float" or "base64"', format);
      return { request: text(inputs), plan: { kind: "embedding", inputs, base64: format === "base64" } };
    }
    case "/classify": {
      const inputs = texts(body.input, "`input`");
      return { request: text(inputs), plan: { kind: "classify", inputs } };
    }
    default:
      throw new InvalidRequestError(`${endpoint} is not supported by the KServe backend unless the body is a v2 request with \`inputs\``);
  }
}

function parseBody(bodyText: string): Body {
  let body: unknown;
  try {
    body = JSON.parse(bodyText);
  } catch {
    throw new InvalidRequestError("Expected the body to be JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw expected("the body to be a JSON object", body);
  return body as Body;
}

/**
 * v2 JSON (`{"inputs":[{name, shape, datatype, data, parameters?}], "outputs"?, "parameters"?, "id"?}`). FP16 and
 * BF16 have no typed contents field, and a request may not mix typed and raw inputs (grpc_predict_v2.proto,
 * raw_input_contents), so one FP16 or BF16 input sends every input as raw_input_contents.
 */
function tensorRequest(body: Body): Omit<ModelInferRequest, "model_name"> {
  const raw = (body.inputs as unknown[]).some((input) => rawOnlyDatatypes.has((input as Body | null)?.datatype as string));
  const rawContents: Buffer[] = [];
  const inputs = (body.inputs as unknown[]).map((input, i): InferTensor => {
    const where = `\`inputs[${i}]\``;
    if (typeof input !== "object" || input === null) throw expected(`${where} to be an object`, input);
    const { name, shape, datatype, data, parameters } = input as Body;
    if (typeof name !== "string" || name === "") throw expected(`${where}.name to be a non-empty string`, name);
    if (typeof datatype !== "string") throw expected(`${where}.datatype to be a string such as "FP32"`, datatype);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw expected(`${where}.shape to be an array of sizes`, shape);
    const flat = flattenData(data, shape as number[], `${where}.data`);
    const tensor: InferTensor = {
      name,
      datatype,
      shape: shape as number[],
      parameters: parameters === undefined ? {} : toInferParameters(objectAt(parameters, `${where}.parameters`), `${where}.parameters`),
    };
    if (raw) rawContents.push(encodeRaw(datatype, flat, `${where}.data`));
    else tensor.contents = encodeContents(datatype, flat, `${where}.data`);
    return tensor;
  });
  const outputs = body.outputs === undefined ? [] : arrayAt(body.outputs, "`outputs`").map((output, i) => {
    const { name, parameters } = objectAt(output, `\`outputs[${i}]\``);
    if (typeof name !== "string") throw expected(`\`outputs[${i}]\`.name to be a string`, name);
    return { name, parameters: parameters === undefined ? {} : toInferParameters(objectAt(parameters, "`parameters`"), `\`outputs[${i}]\`.parameters`) };
  });
  const parameters = body.parameters === undefined ? {} : toInferParameters(objectAt(body.parameters, "`parameters`"), "`parameters`");
  return {
    ...(typeof body.id === "string" && body.id !== "" ? { id: body.id } : {}),
    inputs,
    outputs,
    parameters,
    ...(raw ? { raw_input_contents: rawContents } : {}),
  };
}

/**
 * The messages' text, one message per line. No chat template is applied: the v2 protocol carries a prompt, and
 * a model that needs a template applies it server-side (or the caller renders it and uses /v1/completions).
 */
function chatPrompt(messages: unknown): string {
  if (!Array.isArray(messages) || messages.length === 0) throw expected("`messages` to be a non-empty array", messages);
  return messages.map((message, i) => {
    const content = (message as Body | null)?.content;
    if (typeof content === "string") return content;
    if (content === null || content === undefined) return "";
    if (!Array.isArray(content)) throw expected(`\`messages[${i}].content\` to be a string or an array of parts`, content);
    return content.map((part: Body) => (part?.type === "text" && typeof part.text === "string" ? part.text : "")).join("");
  }).join("\n");
}

function texts(value: unknown, where: string): string[] {
  if (typeof value === "string") return [value];
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === "string")) return value as string[];
  if (Array.isArray(value) && value.some((v) => typeof v === "number" || Array.isArray(v))) {
    throw new InvalidRequestError(`Token-id ${where} is not supported by the KServe backend: it sends text`);
  }
  throw expected(`${where} to be a string or a non-empty array of strings`, value);
}

/** The sampling fields vLLM-style v2 models read from request parameters; fractional ones travel as text. */
function samplingParameters(body: Body): InferParameters {
  const wanted: Record<string, unknown> = {
    max_tokens: body.max_tokens ?? body.max_completion_tokens,
    temperature: body.temperature,
    top_p: body.top_p,
    seed: body.seed,
  };
  const parameters: InferParameters = {};
  for (const [key, value] of Object.entries(wanted)) {
    if (value !== undefined && value !== null) parameters[key] = toInferParameter(value, `\`${key}\``);
  }
  return parameters;
}

function objectAt(value: unknown, where: string): Body {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw expected(`${where} to be an object`, value);
  return value as Body;
}

function arrayAt(value: unknown, where: string): unknown[] {
  if (!Array.isArray(value)) throw expected(`${where} to be an array`, value);
  return value;
}
