/** Validation helpers for config values: every failure names the key, what was expected and what was found. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

function show(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** What a value is, without showing it: for values that may hold a secret (a backend URL, a whole backend). */
export function kindOf(value: unknown): string {
  if (value === undefined || value === null) return "nothing";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") return "a string";
  return `a ${typeof value}`;
}

/**
 * A mapping (an empty one when absent) whose keys are all in `keys`: a typo such as `concurency` is refused, not
 * silently ignored while the default applies.
 */
export function mapping(where: string, value: unknown, keys: readonly string[]): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) throw new ConfigError(`${where}: expected a mapping with keys ${keys.join(", ")}, got ${kindOf(value)}`);
  for (const key of Object.keys(value)) {
    if (!keys.includes(key)) throw new ConfigError(`${where}: unknown key \`${key}\`; expected one of ${keys.join(", ")}`);
  }
  return value as Record<string, unknown>;
}

export function field(prefix: string) {
  const fail = (key: string, expected: string, got: unknown): never => {
    throw new ConfigError(`${prefix}: \`${key}\`: expected ${expected}, got ${show(got)}`);
  };
  return {
    string(key: string, value: unknown, fallback: string): string {
      if (value === undefined || value === null) return fallback;
      if (typeof value !== "string" || value === "") return fail(key, "a non-empty string", value);
      return value;
    },
    optionalString(key: string, value: unknown): string | undefined {
      if (value === undefined || value === null) return undefined;
      if (typeof value !== "string" || value === "") return fail(key, "a non-empty string", value);
      return value;
    },
    int(key: string, value: unknown, fallback: number, min: number, max: number): number {
      if (value === undefined || value === null || value === "") return fallback;
      const n = typeof value === "string" ? Number(value) : value;
      if (typeof n !== "number" || !Number.isInteger(n) || n < min || n > max) {
        return fail(key, `an integer from ${min} to ${max}`, value);
      }
      return n;
    },
    number(key: string, value: unknown, fallback: number, min: number, max: number): number {
      if (value === undefined || value === null || value === "") return fallback;
      const n = typeof value === "string" ? Number(value) : value;
      if (typeof n !== "number" || !Number.isFinite(n) || n < min || n > max) return fail(key, `a number from ${min} to ${max}`, value);
      return n;
    },
    bool(key: string, value: unknown, fallback: boolean): boolean {
      if (value === undefined || value === null || value === "") return fallback;
      if (typeof value === "boolean") return value;
      if (value === "true" || value === "1") return true;
      if (value === "false" || value === "0") return false;
      return fail(key, "true or false", value);
    },
    oneOf<T extends string>(key: string, value: unknown, fallback: T, allowed: readonly T[]): T {
      if (value === undefined || value === null || value === "") return fallback;
      if (typeof value !== "string" || !allowed.includes(value as T)) return fail(key, `one of ${allowed.join(", ")}`, value);
      return value as T;
    },
  };
}
