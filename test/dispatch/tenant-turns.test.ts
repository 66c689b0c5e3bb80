import { describe, expect, it } from "vitest";
import { TenantTurns } from "../../src/dispatch/tenant-turns.ts";

describe("TenantTurns", () => {
  it("lists tenants least recently served first, keeping a tenant whose calls all ended in its place", () => {
    const turns = new TenantTurns();
    turns.started("a");
    turns.started("b");
    turns.started("a");
    turns.ended("b");
    expect([...turns.inFlight]).toEqual([["b", 0], ["a", 2]]);
    turns.ended("a");
    turns.ended("a");
    turns.ended("a");
    expect([...turns.inFlight]).toEqual([["b", 0], ["a", 0]]);
  });

  it("forgets the idle tenants served longest ago beyond the number it remembers, never one holding calls", () => {
    const turns = new TenantTurns(2);
    turns.started("busy");
    for (const t of ["x", "y", "z"]) {
      turns.started(t);
      turns.ended(t);
    }
    expect([...turns.inFlight]).toEqual([["busy", 1], ["y", 0], ["z", 0]]);
  });
});
