-- The worker nodes alive now, the models each one dispatches and how many calls of each it can run, so a node can
-- take its share of a model's max_concurrency instead of all of it (src/dispatch/fleet-share.ts). Before this, the node whose calls ended first took every freed slot at
-- once (it is woken by its own calls), while the others only looked again after 25 ms to 1 s: with two workers,
-- 5,000 requests and max_concurrency 64, one worker claimed all 5,000 and the other none, twice. A second worker
-- then added nothing but a standby. Written by every dispatcher at start and with each lease heartbeat (a third
-- of lease_ms), deleted when it stops. A worker counts until alive_until, which it sets lease_ms ahead with its
-- own lease_ms (nodes may differ), so a crashed node stops counting when its leases run out.
CREATE TABLE lote.workers (
  id text PRIMARY KEY,
  models text[] NOT NULL,
  -- capacities[i]: calls of models[i] the node can run, min(worker.concurrency, max_concurrency).
  capacities integer[] NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  alive_until timestamptz NOT NULL
);
