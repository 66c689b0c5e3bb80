/**
 * Least-outstanding-requests balancing over a backend's replicas, with ejection of replicas that cannot be
 * connected to. Least-outstanding beats round-robin for LLM serving because call durations vary 100x with
 * output length: a replica stuck on long generations stops getting new calls until it catches up.
 */

export interface ReplicaState {
  readonly outstanding: number;
  /** Milliseconds until the replica is tried again; 0 when it is not ejected. */
  readonly ejectedForMs: number;
  /** Connect failures in a row; each doubles the next ejection. */
  readonly consecutiveFailures: number;
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
  readonly #o: ReplicaSetOptions;
  /** Where the next scan starts: rotating it makes ties round-robin. */
  #next = 0;

  constructor(size: number, options: ReplicaSetOptions) {
    this.#outstanding = new Array<number>(size).fill(0);
    this.#ejectedUntil = new Array<number>(size).fill(0);
    this.#failures = new Array<number>(size).fill(0);
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

  /** The replica answered: it is healthy, whatever its past. */
  markAnswered(i: number): void {
    if (this.#failures[i] !== 0) {
      this.#failures[i] = 0;
      this.#ejectedUntil[i] = 0;
    }
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
  }

  state(): ReplicaState[] {
    const now = this.#o.now();
    return this.#outstanding.map((outstanding, i) => ({
      outstanding,
      ejectedForMs: Math.max(0, this.#ejectedUntil[i]! - now),
      consecutiveFailures: this.#failures[i]!,
    }));
  }
}
