import { Writable } from "node:stream";
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { BatchSchema, BatchStatus } from "../../gen/lote/v1/batch_pb.ts";
import { formatSeconds, PlainLinesView } from "../../src/cli/watch-views.ts";

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

describe("watch's rate and ETA", () => {
  const batch = (counts: { completed?: bigint; failed?: bigint; cancelled?: bigint; total: bigint }) => create(BatchSchema, {
    id: "batch_x", status: BatchStatus.IN_PROGRESS,
    requestCounts: { total: counts.total, completed: counts.completed ?? 0n, failed: counts.failed ?? 0n, cancelled: counts.cancelled ?? 0n, expired: 0n },
  });

  it("measures the requests the backend answered, not those a cancel closed at once", () => {
    let now = 0;
    const out: string[] = [];
    const sink = new Writable({ write(chunk, _encoding, done) { out.push(String(chunk)); done(); } });
    const view = new PlainLinesView(sink, 1_000, () => now);
    view.update(batch({ total: 10_000n, completed: 100n }));
    now = 2_000;
    // 80 answered in 2 s; the cancel closed 4,000 pending ones in the same moment.
    view.update(batch({ total: 10_000n, completed: 170n, failed: 10n, cancelled: 4_000n }));
    expect(out.at(-1)).toBe("batch_x in_progress: 4180/10000 done, 170 completed, 10 failed, 40.0/s, ETA 2m26s\n");
  });
});
