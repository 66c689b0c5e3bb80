import { describe, expect, it } from "vitest";
import { fleetShare } from "../../src/dispatch/fleet-share.ts";

describe("fleetShare", () => {
  it("gives each of equal nodes the limit over their number, rounded up", () => {
    expect(fleetShare(64, 64, [])).toBe(64);
    expect(fleetShare(8, 8, [8])).toBe(4);
    expect(fleetShare(5, 5, [5])).toBe(3);
    expect(fleetShare(64, 64, [64, 64])).toBe(22);
  });

  it("gives what a small node cannot use to the others", () => {
    expect(fleetShare(8, 2, [8])).toBe(2);
    expect(fleetShare(8, 8, [2])).toBe(6);
    expect(fleetShare(8, 8, [1, 1])).toBe(6);
    expect(fleetShare(100, 50, [10, 30, 50])).toBe(30);
  });

  it("never gives a node more than it can run, nor less than one slot", () => {
    expect(fleetShare(8, 2, [2])).toBe(2);
    expect(fleetShare(3, 3, [3, 3, 3, 3])).toBe(1);
  });

  it("adds up to at least what the nodes can run of the limit, and never more than each can run", () => {
    for (const caps of [[8, 8, 8], [1, 5, 9, 20], [3, 3, 100], [7], [2, 2, 2, 2, 2, 2, 2]]) {
      for (const limit of [1, 5, 16, 64]) {
        const shares = caps.map((own, i) => fleetShare(limit, Math.min(own, limit), caps.filter((_, j) => j !== i).map((c) => Math.min(c, limit))));
        const sum = shares.reduce((a, b) => a + b, 0);
        expect(sum).toBeGreaterThanOrEqual(Math.min(limit, caps.reduce((a, c) => a + Math.min(c, limit), 0)));
        shares.forEach((s, i) => expect(s).toBeLessThanOrEqual(Math.max(1, Math.min(caps[i]!, limit))));
      }
    }
  });
});
