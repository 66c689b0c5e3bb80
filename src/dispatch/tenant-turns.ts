/**
 * A model's calls in flight on this node per tenant, kept in turn order: the tenant this node served longest ago
 * first. The claim gives a free slot to the tenant holding the fewest calls and, among those holding as many, to
 * the first in this order (migration 008). Calls in flight alone cannot tell tenants apart where each claim comes
 * when none runs (a model with one slot, or a node whose share is one): ties then went to the lowest position in a
 * batch, so every batch advanced alike and a tenant with four batches took 8 of 10 calls against another's one.
 *
 * Tenants holding no call are kept too, for their turn, up to `remembered`; beyond it the least recently served go
 * first, and a tenant the claim is not told of comes before every one it is told of: it was served longer ago.
 */
export class TenantTurns {
  /** Insertion order is the turn order: a tenant served is moved to the end. */
  private readonly calls = new Map<string, number>();
  /** Tenants in `calls` holding no call. */
  private idle = 0;

  /**
   * @param remembered tenants holding no call that are kept for their turn. 256: the map is sent with every claim
   * (a few kilobytes at most), and a tenant forgotten keeps its place before all the others anyway.
   */
  constructor(private readonly remembered = 256) {}

  /** A call of `tenant` was claimed: it is served, so it goes to the back of the line. */
  started(tenant: string): void {
    const held = this.calls.get(tenant);
    if (held === 0) this.idle--;
    this.calls.delete(tenant);
    this.calls.set(tenant, (held ?? 0) + 1);
  }

  /** A call of `tenant` ended: one call fewer, its place in line kept. */
  ended(tenant: string): void {
    const held = this.calls.get(tenant);
    if (held === undefined || held === 0) return;
    this.calls.set(tenant, held - 1);
    if (held === 1 && ++this.idle > this.remembered) this.forgetOne();
  }

  /** Calls in flight per tenant, least recently served first: the claim's `tenantCalls`. */
  get inFlight(): ReadonlyMap<string, number> {
    return this.calls;
  }

  /** Forgets the idle tenant served longest ago. */
  private forgetOne(): void {
    for (const [tenant, held] of this.calls) {
      if (held === 0) {
        this.calls.delete(tenant);
        this.idle--;
        return;
      }
    }
  }
}
