/**
 * How often the same warning is written at most: once per key per 10 s, with how many like it were left out since.
 * A failure that repeats with every call (Postgres down under 1,000 API calls a second, a backend down under 1,000
 * calls a second) otherwise buries every other line, and costs the node more than the calls.
 */
export const sameWarningEveryMs = 10_000;
/** Keys remembered at most; past it the memory starts again (one more line for each). */
const rememberedKeys = 1_000;

/** What `admit` says of a line to be written: how many like it were left out, and since when. */
export interface Admitted {
  readonly suppressed: number;
  /** Milliseconds since the last line of this key; undefined for its first. */
  readonly sinceMs: number | undefined;
}

/** One line per key per `sameWarningEveryMs`; the caller decides what a key is (a failure's cause, a model). */
export class LogThrottle {
  private readonly seen = new Map<string, { at: number; suppressed: number }>();

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** Undefined when this line is to be left out; else what was left out since the key's last line. */
  admit(key: string): Admitted | undefined {
    const now = this.now();
    const entry = this.seen.get(key);
    if (entry && now - entry.at < sameWarningEveryMs) {
      entry.suppressed++;
      return undefined;
    }
    if (!entry && this.seen.size >= rememberedKeys) this.seen.clear();
    this.seen.set(key, { at: now, suppressed: 0 });
    return { suppressed: entry?.suppressed ?? 0, sinceMs: entry ? Math.round(now - entry.at) : undefined };
  }
}
