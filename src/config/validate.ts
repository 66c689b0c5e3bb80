/** Validation helpers for config values: every failure names the key, what was expected and what was found. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

function show(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
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
