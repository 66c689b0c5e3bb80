import { describe, expect, it } from "vitest";
import { parseRetryAfter } from "../../src/backends/openai/retry-after.ts";

describe("parseRetryAfter", () => {
  const now = Date.UTC(2026, 11, 6, 12, 0, 0);

  it("reads delay-seconds, digits only, as milliseconds", () => {
    expect(parseRetryAfter("120", now)).toBe(120_000);
    expect(parseRetryAfter(" 7 ", now)).toBe(7_000);
    expect(parseRetryAfter("0", now)).toBe(0);
    expect(parseRetryAfter(["3", "9"], now)).toBe(3_000);
  });

  it("reads the three HTTP-date forms of RFC 9110, in the future or past", () => {
    expect(parseRetryAfter("Sun, 06 Dec 2026 12:00:30 GMT", now)).toBe(30_000);
    expect(parseRetryAfter("Sunday, 06-Dec-26 12:01:00 GMT", now)).toBe(60_000);
    expect(parseRetryAfter("Sun Dec  6 12:00:05 2026", now)).toBe(5_000);
    expect(parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", now)).toBe(0);
  });

  it("ignores a signed number, which Date.parse read as a past date (retry at once)", () => {
    for (const v of ["-5", "+5", "-1"]) expect(parseRetryAfter(v, now)).toBeUndefined();
  });

  it("ignores anything else that is neither delay-seconds nor an HTTP-date", () => {
    for (const v of ["", "soon", "30s", "1e9", "0x10", "1.5", "Infinity", "NaN", "120, 130", "2026-12-06T12:00:30Z",
      "Sun, 06 Dec 2026 12:00:30", "Sun, 31 Feb 2026 12:00:30 GMT", "Sun, 06 Dec 2026 25:00:00 GMT", "12/06/2026"]) {
      expect(parseRetryAfter(v, now), v).toBeUndefined();
    }
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
  });
});
