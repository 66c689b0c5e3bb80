-- lote's schema. Everything lives in the `lote` schema so it can share a database with other applications.

CREATE TABLE lote.tenants (
  id text PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- API keys are 32 random bytes, so a plain SHA-256 is enough to store them (no password-style slow hash: there is
-- no dictionary to attack, and the hash is checked on every call).
CREATE TABLE lote.api_keys (
  key_sha256 bytea PRIMARY KEY,
  tenant_id text NOT NULL REFERENCES lote.tenants (id),
  label text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz
);

CREATE TABLE lote.batches (
  id text PRIMARY KEY,
  -- Newest-first listing and opaque page tokens order by seq (ids are random).
  seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  tenant_id text NOT NULL,
  request_id text,
  endpoint text NOT NULL,
  model text NOT NULL,
  status text NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress', 'finalizing', 'completed',
                                          'expired', 'cancelling', 'cancelled')),
  priority integer NOT NULL DEFAULT 0,
  completion_window_seconds bigint NOT NULL,
  metadata jsonb NOT NULL DEFAULT '{}',
  errors jsonb NOT NULL DEFAULT '[]',
  total bigint NOT NULL,
  -- Counts are written by the completer once per flush (not once per item), under the batch row lock that also
  -- orders result_seq; see src/store/complete-items.ts.
  completed bigint NOT NULL DEFAULT 0,
  failed bigint NOT NULL DEFAULT 0,
  cancelled bigint NOT NULL DEFAULT 0,
  expired bigint NOT NULL DEFAULT 0,
  result_seq bigint NOT NULL DEFAULT 0,
  input_tokens bigint NOT NULL DEFAULT 0,
  output_tokens bigint NOT NULL DEFAULT 0,
  total_tokens bigint NOT NULL DEFAULT 0,
  retried_from text REFERENCES lote.batches (id),
  created_at timestamptz NOT NULL DEFAULT now(),
  in_progress_at timestamptz,
  finalizing_at timestamptz,
  completed_at timestamptz,
  failed_at timestamptz,
  expired_at timestamptz,
  cancelling_at timestamptz,
  cancelled_at timestamptz,
  expires_at timestamptz NOT NULL,
  -- Bumped on every change a WatchBatch client should see.
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- AIP-155 idempotency: one batch per (tenant, request_id).
CREATE UNIQUE INDEX batches_request_id ON lote.batches (tenant_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX batches_tenant_seq ON lote.batches (tenant_id, seq DESC);
CREATE INDEX batches_metadata ON lote.batches USING gin (metadata jsonb_path_ops);
-- The maintenance loop looks at unfinished batches only (expiry, finalisation, cancellation).
CREATE INDEX batches_open ON lote.batches (expires_at) WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

-- No foreign key to lote.batches: the per-row check cost ~165 ms of a 390 ms COPY of 50,000 items (40% of ingest,
-- `npm run bench:ingest`), for a guarantee createBatch already gives: it writes the batch row and its items in one
-- transaction, and nothing deletes batches.
CREATE TABLE lote.items (
  batch_id text NOT NULL,
  idx integer NOT NULL,
  custom_id text NOT NULL,
  model text NOT NULL,
  priority integer NOT NULL,
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'expired')),
  attempt integer NOT NULL DEFAULT 0,
  run_at timestamptz NOT NULL DEFAULT now(),
  lease_expires_at timestamptz,
  worker_id text,
  -- Estimated tokens (prompt estimate + max output), charged against tokens_per_minute at claim time.
  est_tokens integer NOT NULL DEFAULT 0,
  -- The request body exactly as received (text, not jsonb: jsonb would reorder keys and cost a parse at ingest).
  body text NOT NULL,
  last_error jsonb,
  PRIMARY KEY (batch_id, idx)
);
-- custom_id uniqueness inside a batch is checked by the API before the COPY; a unique index here would cost ~20%
-- of ingest throughput for a guarantee the one writer already gives.

-- The claim query's index: pending items of a model, higher priority first, then by position in their batch so
-- batches interleave (item 0 of every batch, then item 1, ...): a 10-request batch submitted behind a 500,000-request
-- one starts at once instead of waiting for it.
CREATE INDEX items_claimable ON lote.items (model, priority DESC, idx, batch_id) WHERE status = 'pending';
-- Running items: fleet-wide concurrency per model, heartbeats, the rescuer, per-batch running counts.
CREATE INDEX items_running ON lote.items (model, lease_expires_at) WHERE status = 'running';
CREATE INDEX items_running_worker ON lote.items (worker_id) WHERE status = 'running';
CREATE INDEX items_running_batch ON lote.items (batch_id) WHERE status = 'running';

CREATE TABLE lote.results (
  batch_id text NOT NULL REFERENCES lote.batches (id) ON DELETE CASCADE,
  -- Per-batch completion order. Assigned under the batch row lock, so a higher seq always commits later: a
  -- reader resuming "after seq N" can never miss a row that commits late (no gaps, no duplicates).
  seq bigint NOT NULL,
  idx integer NOT NULL,
  custom_id text NOT NULL,
  attempts integer NOT NULL,
  status_code integer NOT NULL DEFAULT 0,
  backend_request_id text NOT NULL DEFAULT '',
  body text,
  error_code text,
  error_message text,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (batch_id, seq),
  UNIQUE (batch_id, idx)
);

-- Requests and tokens started per model per second, for fleet-wide requests/tokens-per-minute limits.
CREATE TABLE lote.model_usage (
  model text NOT NULL,
  second timestamptz NOT NULL,
  requests bigint NOT NULL DEFAULT 0,
  tokens bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (model, second)
);
