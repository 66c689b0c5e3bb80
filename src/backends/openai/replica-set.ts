/**
 * Least-outstanding-requests balancing over a backend's replicas, with ejection of replicas that cannot be
 * connected to or whose calls keep failing. Least-outstanding beats round-robin for LLM serving because call
 * durations vary 100x with output length: a replica stuck on long generations stops getting new calls until it
 * catches up. Its flaw is the replica that fails fast (a 500 or a reset in a millisecond): it always has the fewest
 * calls in flight, so it drew 36,865 of 36,925 calls in 3 s beside a healthy one. Hence outlier ejection.
 */

/**
 * Failed calls in a row (5xx, reset, timeout) that eject a replica: Envoy's consecutive_5xx default. A healthy
 * replica failing 1% of its calls at random does it 5 times in a row once in 10^10 calls, about once in 4.6 days
 * at 25,000 calls/s; at 5% once in 3.2 million, then out for a second. A replica that fails them all is out after
 * 5 calls.
 */
export const OUTLIER_FAILURES = 5;

export interface ReplicaState {
  readonly outstanding: number;
  /** Milliseconds until the replica is tried again; 0 when it is not ejected. */
  readonly ejectedForMs: number;
  /** Ejections in a row (connect failures, or OUTLIER_FAILURES failed calls); each doubles the next ejection. */
  readonly consecutiveFailures: number;
  /** Calls that failed in a row since the last answer or ejection. */
  readonly failedCalls: number;
}

export interface ReplicaSetOptions {
  readonly ejectBaseMs: number;
  readonly ejectMaxMs: number;
  readonly now: () => number;
}

export class ReplicaSet {
  readonly #outstanding: number[];
  readonly #ejectedUntil: number[];
  readonly #failures: number[];
  readonly #failedCalls: number[];
  readonly #o: ReplicaSetOptions;
  /** Where the next scan starts: rotating it makes ties round-robin. */
  #next = 0;

  constructor(size: number, options: ReplicaSetOptions) {
    this.#outstanding = new Array<number>(size).fill(0);
    this.#ejectedUntil = new Array<number>(size).fill(0);
    this.#failures = new Array<number>(size).fill(0);
    this.#failedCalls = new Array<number>(size).fill(0);
    this.#o = options;
  }

  get size(): number {
    return this.#outstanding.length;
  }

  /**
   * Picks the replica with the fewest outstanding calls among those not ejected (ties go round-robin) and
   * counts the call on it; the caller MUST `release` it exactly once. When every candidate is ejected, picks
   * the one whose ejection ends soonest rather than failing: a replica may have come back early. Returns -1
   * only when `exclude` rules out every replica.
   */
  acquire(exclude?: ReadonlySet<number>): number {
    const n = this.#outstanding.length;
    const now = this.#o.now();
    let best = -1;
    let bestLoad = Infinity;
    let soonest = -1;
    let soonestEnd = Infinity;
    for (let k = 0; k < n; k++) {
      const i = (this.#next + k) % n;
      if (exclude?.has(i)) continue;
      const until = this.#ejectedUntil[i]!;
      if (until > now) {
        if (until < soonestEnd) {
          soonest = i;
          soonestEnd = until;
        }
      } else if (this.#outstanding[i]! < bestLoad) {
        best = i;
        bestLoad = this.#outstanding[i]!;
      }
    }
    const chosen = best >= 0 ? best : soonest;
    if (chosen >= 0) {
      this.#outstanding[chosen]!++;
      this.#next = (chosen + 1) % n;
    }
    return chosen;
  }

  release(i: number): void {
    this.#outstanding[i]!--;
  }

  /** The replica answered (below 500): it is healthy, whatever its past. */
  markAnswered(i: number): void {
    this.#failedCalls[i] = 0;
    if (this.#failures[i] !== 0) {
      this.#failures[i] = 0;
      this.#ejectedUntil[i] = 0;
    }
  }

  /**
   * A call on the replica failed: a 5xx, a reset or a timeout. The OUTLIER_FAILURES-th in a row ejects it like a
   * connect failure. One that comes back from an ejection is on probation: its first failure ejects it again (for
   * twice as long), its first answer clears its record.
   */
  markCallFailure(i: number): void {
    if (this.#failures[i] !== 0 || ++this.#failedCalls[i]! >= OUTLIER_FAILURES) this.markConnectFailure(i);
  }

  /**
   * A connection to the replica could not be established. Ejects it for ejectBaseMs · 2^(failures-1), capped
   * at ejectMaxMs. Failures while already ejected (other calls of the same burst) do not double it again.
   */
  markConnectFailure(i: number): void {
    const now = this.#o.now();
    if (this.#ejectedUntil[i]! > now) return;
    const failures = ++this.#failures[i]!;
    const ms = Math.min(this.#o.ejectMaxMs, this.#o.ejectBaseMs * 2 ** Math.min(failures - 1, 30));
    this.#ejectedUntil[i] = now + ms;
    this.#failedCalls[i] = 0;
  }

  state(): ReplicaState[] {
    const now = this.#o.now();
    return this.#outstanding.map((outstanding, i) => ({
      outstanding,
      ejectedForMs: Math.max(0, this.#ejectedUntil[i]! - now),
      consecutiveFailures: this.#failures[i]!,
      failedCalls: this.#failedCalls[i]!,
    }));
  }
}
