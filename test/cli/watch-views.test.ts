import { describe, expect, it } from "vitest";
import { formatSeconds } from "../../src/cli/watch-views.ts";

describe("watch's durations (ETA and time watched)", () => {
  it("never shows a 60th second or minute: what rounds up carries into the next unit", () => {
    expect(formatSeconds(119.6)).toBe("2m00s");
    expect(formatSeconds(59.6)).toBe("1m00s");
    expect(formatSeconds(9.96)).toBe("10s");
    expect(formatSeconds(3599.7)).toBe("1h00m");
  });

  it("shows tenths under 10 s, whole seconds to a minute, then minutes and seconds, then hours and minutes", () => {
    expect(formatSeconds(0.04)).toBe("0.0s");
    expect(formatSeconds(4.26)).toBe("4.3s");
    expect(formatSeconds(42.4)).toBe("42s");
    expect(formatSeconds(61)).toBe("1m01s");
    expect(formatSeconds(7322)).toBe("2h02m");
  });
});
