/**
 * Tensor data between v2 JSON (flat or nested row-major `data` arrays) and the gRPC wire forms: the typed
 * `InferTensorContents` fields and the little-endian `raw_*_contents` bytes that Triton answers with.
 */
import { TransportError } from "../backend.ts";
import type { InferParameter, InferParameters, InferTensor, InferTensorContents } from "./inference-service.ts";
import { expected, InvalidRequestError } from "./invalid-request-error.ts";

export type TensorValue = number | boolean | string;

/** A tensor as v2 JSON shows it; BYTES elements are decoded as UTF-8 text. */
export interface DecodedTensor {
  name: string;
  datatype: string;
  shape: number[];
  data: TensorValue[];
  parameters?: Record<string, TensorValue>;
}

type ContentsField = keyof InferTensorContents;

/** Which typed field carries each datatype (grpc_predict_v2.proto, message InferTensorContents). */
const contentsFieldOf: Record<string, ContentsField> = {
  BOOL: "bool_contents",
  INT8: "int_contents",
  INT16: "int_contents",
  INT32: "int_contents",
  INT64: "int64_contents",
  UINT8: "uint_contents",
  UINT16: "uint_contents",
  UINT32: "uint_contents",
  UINT64: "uint64_contents",
  FP32: "fp32_contents",
  FP64: "fp64_contents",
  BYTES: "bytes_contents",
};

/**
 * What each integer datatype holds. The wire fields are wider (int32, uint32, int64, uint64), so a value out of
 * range would reach the server wrapped (UINT8 256 as 0 or more, INT32 2^31 as -2^31); 64-bit values travel as JS
 * numbers, exact only up to 2^53 - 1.
 */
const integerRange: Record<string, readonly [min: number, max: number]> = {
  INT8: [-(2 ** 7), 2 ** 7 - 1],
  INT16: [-(2 ** 15), 2 ** 15 - 1],
  INT32: [-(2 ** 31), 2 ** 31 - 1],
  INT64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  UINT8: [0, 2 ** 8 - 1],
  UINT16: [0, 2 ** 16 - 1],
  UINT32: [0, 2 ** 32 - 1],
  UINT64: [0, Number.MAX_SAFE_INTEGER],
};

/** Flattens nested row-major `data` and checks it holds exactly product(shape) elements. */
export function flattenData(data: unknown, shape: number[], where: string): unknown[] {
  const flat = Array.isArray(data) ? (data.flat(Infinity) as unknown[]) : [data];
  const count = shape.reduce((product, dim) => product * dim, 1);
  if (flat.length !== count) throw expected(`${where} to hold ${count} elements for shape [${shape}]`, flat.length);
  return flat;
}

/**
 * Typed contents for one input tensor (`values` flattened row-major); an element the datatype cannot hold is an
 * InvalidRequestError naming it. FP16/BF16 have no typed field (proto comment on raw_input_contents): a request
 * with one goes whole as raw bytes (`encodeRaw`).
 */
export function encodeContents(datatype: string, values: unknown[], where: string): InferTensorContents {
  const field = contentsFieldOf[datatype];
  if (!field) throw unsupported(datatype, where);
  checkValues(datatype, values, where);
  if (field === "bytes_contents") return { bytes_contents: (values as string[]).map((value) => Buffer.from(value, "utf8")) };
  return { [field]: values };
}

/** Datatypes that only travel as raw bytes: the proto has no 16-bit float field. */
export const rawOnlyDatatypes: ReadonlySet<string> = new Set(["FP16", "BF16"]);

/**
 * One input tensor as raw_input_contents bytes: flattened row-major little-endian elements, a BYTES element as a
 * 4-byte little-endian length and its UTF-8 bytes (the same encoding decodeRaw reads). FP16 and BF16 are rounded
 * to the nearest value, ties to even, as IEEE 754 casts do.
 */
export function encodeRaw(datatype: string, values: unknown[], where: string): Buffer {
  if (datatype !== "BYTES" && !elementSize[datatype]) throw unsupported(datatype, where);
  checkValues(datatype, values, where);
  if (datatype === "BYTES") {
    return Buffer.concat((values as string[]).flatMap((value) => {
      const bytes = Buffer.from(value, "utf8");
      const length = Buffer.allocUnsafe(4);
      length.writeUInt32LE(bytes.length);
      return [length, bytes];
    }));
  }
  const size = elementSize[datatype]!;
  const bytes = Buffer.alloc(values.length * size);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const write: (at: number, value: number | boolean) => void = {
    BOOL: (at: number, v: number | boolean) => view.setUint8(at, v ? 1 : 0),
    INT8: (at: number, v: number | boolean) => view.setInt8(at, v as number),
    UINT8: (at: number, v: number | boolean) => view.setUint8(at, v as number),
    INT16: (at: number, v: number | boolean) => view.setInt16(at, v as number, true),
    UINT16: (at: number, v: number | boolean) => view.setUint16(at, v as number, true),
    INT32: (at: number, v: number | boolean) => view.setInt32(at, v as number, true),
    UINT32: (at: number, v: number | boolean) => view.setUint32(at, v as number, true),
    INT64: (at: number, v: number | boolean) => view.setBigInt64(at, BigInt(v as number), true),
    UINT64: (at: number, v: number | boolean) => view.setBigUint64(at, BigInt(v as number), true),
    FP16: (at: number, v: number | boolean) => view.setUint16(at, toMinifloat(v as number, 5, 10), true),
    BF16: (at: number, v: number | boolean) => view.setUint16(at, toMinifloat(v as number, 8, 7), true),
    FP32: (at: number, v: number | boolean) => view.setFloat32(at, v as number, true),
    FP64: (at: number, v: number | boolean) => view.setFloat64(at, v as number, true),
  }[datatype]!;
  values.forEach((value, i) => write(i * size, value as number | boolean));
  return bytes;
}

function unsupported(datatype: string, where: string): InvalidRequestError {
  const known = [...Object.keys(contentsFieldOf), ...rawOnlyDatatypes].join(", ");
  return new InvalidRequestError(`${datatype} inputs are not supported: ${where} must be one of ${known}`);
}

/** Throws an InvalidRequestError naming the first element `datatype` cannot hold. */
function checkValues(datatype: string, values: unknown[], where: string): void {
  const range = integerRange[datatype];
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (datatype === "BYTES") {
      if (typeof value !== "string") throw expected(`${where} element ${i} to be a string for BYTES`, value);
    } else if (datatype === "BOOL") {
      if (typeof value !== "boolean") throw expected(`${where} element ${i} to be a boolean for BOOL`, value);
    } else if (range) {
      if (typeof value !== "number" || !Number.isInteger(value) || value < range[0] || value > range[1]) {
        throw expected(`${where} element ${i} to be an integer from ${range[0]} to ${range[1]} for ${datatype}`, value);
      }
    } else if (typeof value !== "number") {
      throw expected(`${where} element ${i} to be a number for ${datatype}`, value);
    }
  }
}

/**
 * The bits of a binary float with `exponentBits` and `fractionBits` (FP16: 5 and 10, BF16: 8 and 7) nearest to
 * `value`, ties to even; beyond the largest finite value it is infinity. Computed from the double directly, not
 * through float32, which would round twice.
 */
export function toMinifloat(value: number, exponentBits: number, fractionBits: number): number {
  const signBit = 2 ** (exponentBits + fractionBits);
  const infinity = (2 ** exponentBits - 1) * 2 ** fractionBits;
  if (Number.isNaN(value)) return infinity + 2 ** (fractionBits - 1);
  const sign = value < 0 || Object.is(value, -0) ? signBit : 0;
  const magnitude = Math.abs(value);
  if (magnitude === Infinity) return sign + infinity;
  const bias = 2 ** (exponentBits - 1) - 1;
  const minNormalExponent = 1 - bias;
  if (magnitude < 2 ** minNormalExponent) {
    // Subnormal: a multiple of the smallest step; rounding up to 2^fractionBits gives the smallest normal's bits.
    return sign + roundHalfEven(magnitude / 2 ** (minNormalExponent - fractionBits));
  }
  let exponent = Math.floor(Math.log2(magnitude));
  if (2 ** exponent > magnitude) exponent -= 1;
  else if (2 ** (exponent + 1) <= magnitude) exponent += 1;
  let fraction = roundHalfEven((magnitude / 2 ** exponent - 1) * 2 ** fractionBits);
  if (fraction === 2 ** fractionBits) {
    exponent += 1;
    fraction = 0;
  }
  if (exponent > bias) return sign + infinity;
  return sign + (exponent + bias) * 2 ** fractionBits + fraction;
}

function roundHalfEven(x: number): number {
  const rounded = Math.round(x);
  return rounded - x === 0.5 && rounded % 2 !== 0 ? rounded - 1 : rounded;
}

/** One output tensor, from its raw bytes when the server used `raw_output_contents`, else its typed field. */
export function decodeTensor(tensor: InferTensor, raw: Buffer | undefined): DecodedTensor {
  const field = contentsFieldOf[tensor.datatype];
  let data: TensorValue[];
  if (raw) data = decodeRaw(tensor.datatype, raw, tensor.name);
  else if (!field) throw new TransportError("protocol", `output ${tensor.name} is ${tensor.datatype} without raw contents`);
  else if (field === "bytes_contents") data = (tensor.contents?.bytes_contents ?? []).map((b) => b.toString("utf8"));
  else data = tensor.contents?.[field] ?? [];
  if (tensor.datatype === "FP32") data = (data as number[]).map(shortestFloat32);
  const decoded: DecodedTensor = { name: tensor.name, datatype: tensor.datatype, shape: tensor.shape, data };
  if (tensor.parameters && Object.keys(tensor.parameters).length > 0) decoded.parameters = fromInferParameters(tensor.parameters);
  return decoded;
}

const elementSize: Record<string, number> = {
  BOOL: 1, INT8: 1, UINT8: 1, INT16: 2, UINT16: 2, FP16: 2, BF16: 2, INT32: 4, UINT32: 4, FP32: 4, INT64: 8, UINT64: 8, FP64: 8,
};

/**
 * Raw tensor bytes are flattened row-major little-endian elements with no padding; a BYTES element is a 4-byte
 * little-endian length followed by that many bytes (Triton's and KServe's binary tensor encoding).
 */
export function decodeRaw(datatype: string, raw: Buffer, name: string): TensorValue[] {
  const values: TensorValue[] = [];
  if (datatype === "BYTES") {
    for (let offset = 0; offset < raw.length; ) {
      if (offset + 4 > raw.length) throw new TransportError("protocol", `raw BYTES output ${name} ends inside a length prefix`);
      const length = raw.readUInt32LE(offset);
      if (offset + 4 + length > raw.length) throw new TransportError("protocol", `raw BYTES output ${name} element overruns its buffer`);
      values.push(raw.toString("utf8", offset + 4, offset + 4 + length));
      offset += 4 + length;
    }
    return values;
  }
  const size = elementSize[datatype];
  if (!size) throw new TransportError("protocol", `output ${name} has unknown datatype ${datatype}`);
  if (raw.length % size !== 0) throw new TransportError("protocol", `raw ${datatype} output ${name} is ${raw.length} bytes, not a multiple of ${size}`);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const read: (at: number) => TensorValue = {
    BOOL: (at: number) => view.getUint8(at) !== 0,
    INT8: (at: number) => view.getInt8(at),
    UINT8: (at: number) => view.getUint8(at),
    INT16: (at: number) => view.getInt16(at, true),
    UINT16: (at: number) => view.getUint16(at, true),
    INT32: (at: number) => view.getInt32(at, true),
    UINT32: (at: number) => view.getUint32(at, true),
    INT64: (at: number) => Number(view.getBigInt64(at, true)),
    UINT64: (at: number) => Number(view.getBigUint64(at, true)),
    FP16: (at: number) => halfToNumber(view.getUint16(at, true)),
    BF16: (at: number) => bfloat16ToNumber(view.getUint16(at, true)),
    FP32: (at: number) => view.getFloat32(at, true),
    FP64: (at: number) => view.getFloat64(at, true),
  }[datatype]!;
  for (let at = 0; at < raw.length; at += size) values.push(read(at));
  return values;
}

/** IEEE 754 binary16: 1 sign bit, 5 exponent bits (bias 15), 10 fraction bits. */
function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** bfloat16 is the upper half of a float32. */
function bfloat16ToNumber(bits: number): number {
  const scratch = new DataView(new ArrayBuffer(4));
  scratch.setUint32(0, bits << 16);
  return scratch.getFloat32(0);
}

/**
 * The shortest decimal that reads back as the same float32. A decoded float32 printed as a double needs ~17
 * digits (0.1f is 0.10000000149011612); at most 9 suffice, which halves the size of embedding answers.
 */
export function shortestFloat32(value: number): number {
  if (!Number.isFinite(value)) return value;
  for (let digits = 6; digits < 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === value) return candidate;
  }
  return Number(value.toPrecision(9));
}

/** The proto has bool, int64 and string parameters only; fractional numbers go as their decimal text. */
export function toInferParameter(value: unknown, where: string): InferParameter {
  if (typeof value === "boolean") return { bool_param: value };
  if (typeof value === "string") return { string_param: value };
  if (typeof value === "number" && Number.isSafeInteger(value)) return { int64_param: value };
  if (typeof value === "number" && Number.isFinite(value)) return { string_param: String(value) };
  throw expected(`${where} to be a boolean, number or string`, value);
}

export function toInferParameters(values: Record<string, unknown>, where: string): InferParameters {
  return Object.fromEntries(Object.entries(values).map(([key, value]) => [key, toInferParameter(value, `${where}.${key}`)]));
}

export function fromInferParameters(parameters: InferParameters): Record<string, TensorValue> {
  const values: Record<string, TensorValue> = {};
  for (const [key, parameter] of Object.entries(parameters)) {
    const choice = parameter.parameter_choice;
    if (choice) values[key] = parameter[choice]!;
  }
  return values;
}
