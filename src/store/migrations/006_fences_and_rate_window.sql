-- Two fences on completions and a full minute for the rate limits.
--
-- lote.complete_items, as in 003 but for two fences. A retry written after its batch's cancel ends the request
-- cancelled: before, it went back to pending in a CANCELLING batch, which then ended CANCELLED one result short while
-- the next claim ran the request again. And a lease rescue is written only while the lease is still lapsed.
CREATE OR REPLACE FUNCTION lote.complete_items(p_batch_ids text[], p_rows json) RETURNS TABLE (batch_id text, finished boolean)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
  r record;
  v_tid tid[];
  v_custom_id text[];
BEGIN
  -- As in 002: the batch row lock orders result_seq; locked in id order so two completers never deadlock.
  PERFORM 1 FROM lote.batches b WHERE b.id = ANY(p_batch_ids) ORDER BY b.id FOR UPDATE;

  -- No join here whose order depends on statistics. Joined to lote.items by primary key, as in 002, the planner
  -- started from lote.items when its statistics said it was empty (as they do after a VACUUM between batches, now
  -- that succeeded items are deleted) and read all of it for every flush, with the cached plan, until the next
  -- ANALYZE. Instead, two statements:
  --
  -- 1. The fence. Each input row looks its item up by primary key (LATERAL: the plan starts from the input) and
  --    locks it if it is still running with the attempt that made the call. v_tid[n] is the locked row version of
  --    input row n, NULL when fenced out.
  SELECT array_agg(t.tid ORDER BY u.n), array_agg(t.custom_id ORDER BY u.n) INTO v_tid, v_custom_id
    FROM ROWS FROM (json_to_recordset(p_rows) AS (batch_id text, idx integer, attempt integer, rescue boolean))
         WITH ORDINALITY AS u(batch_id, idx, attempt, rescue, n)
    LEFT JOIN LATERAL (
      -- New in 006: a rescue (`rescue`: the lease rescuer's completion of an item whose lease it saw lapse) holds
      -- only while the lease is still lapsed. The rescuer reads first and writes after; a heartbeat of the worker,
      -- late but alive, may renew the lease in between, and the rescue would then put a request that is still at
      -- the backend back to pending: called twice, over max_concurrency. FOR UPDATE re-checks this on the row's
      -- newest version, so a renewal that commits while this statement runs counts too.
      SELECT it.ctid AS tid, it.custom_id FROM lote.items it
       WHERE it.batch_id = u.batch_id AND it.idx = u.idx AND it.attempt = u.attempt AND it.status = 'running' COLLATE "C"
         AND (u.rescue IS NOT TRUE OR it.lease_expires_at < now())
         FOR UPDATE
    ) t ON true;

  -- 2. Everything else, by ctid and primary key. A new statement, so a new snapshot: a row version locked in step 1
  --    after a heartbeat renewed its lease (a new version, committed after step 1's snapshot) is visible here, and
  --    being locked it stays the current one.
  FOR r IN
  WITH input AS (
    -- One row per item, should the input repeat one (the first wins).
    SELECT DISTINCT ON (v_tid[u.n]) u.*, v_tid[u.n] AS tid, v_custom_id[u.n] AS custom_id,
           -- New in 006: a retry of a cancelled batch's request. The batch rows are locked above, so the status read
           -- here holds until commit. Only retries look it up (CASE evaluates its branch for them alone).
           CASE WHEN u.outcome = 'retry'
                THEN (SELECT b.status FROM lote.batches b WHERE b.id = u.batch_id) IN ('cancelling', 'cancelled')
                ELSE false END AS cancelled_retry
      FROM ROWS FROM (json_to_recordset(p_rows)
             AS (batch_id text, idx integer, attempt integer, outcome text, status_code integer, request_id text,
                 body text, error_code text, error_message text, retry_delay_ms integer, input_tokens bigint,
                 output_tokens bigint, total_tokens bigint))
           WITH ORDINALITY AS u(batch_id, idx, attempt, outcome, status_code, request_id, body, error_code, error_message,
                                retry_delay_ms, input_tokens, output_tokens, total_tokens, n)
     WHERE v_tid[u.n] IS NOT NULL
     ORDER BY v_tid[u.n], u.n
  ), targets AS (
    -- A request whose call failed retryably while its batch was being cancelled ends cancelled, with a result: put
    -- back to pending, nothing would close it (cancel closed the pending items already), the batch would end
    -- CANCELLED one result short, and the next claim would call the backend for it after the cancel.
    SELECT i.batch_id, i.idx, i.attempt,
           CASE WHEN i.cancelled_retry THEN 'cancelled' ELSE i.outcome END AS outcome,
           CASE WHEN i.cancelled_retry THEN 0 ELSE i.status_code END AS status_code,
           i.request_id, i.body,
           CASE WHEN i.cancelled_retry THEN 'batch_cancelled' ELSE i.error_code END AS error_code,
           CASE WHEN i.cancelled_retry
                THEN 'The batch was cancelled before this request could be retried (last error: ' || i.error_code || ': ' || i.error_message || ').'
                ELSE i.error_message END AS error_message,
           i.retry_delay_ms, i.input_tokens, i.output_tokens, i.total_tokens, i.n, i.tid, i.custom_id
      FROM input i
  ), succeeded AS (
    -- A succeeded item is deleted: its result row keeps everything anyone reads of it again (custom_id, attempts,
    -- the answer), and nothing reads a succeeded item's request (RetryBatch re-runs the unsucceeded ones). A DELETE
    -- writes no new tuple version (the request body copied again, a primary-key entry, WAL for both), which an
    -- UPDATE to 'succeeded' did: graphile-worker's completeJobs does the same.
    DELETE FROM lote.items it WHERE it.ctid = ANY (ARRAY(SELECT t.tid FROM targets t WHERE t.outcome = 'succeeded'))
    RETURNING 1
  ), others AS (
    -- Failures, cancels and retries (rare next to successes): the per-row values by ctid from `targets`.
    UPDATE lote.items it
       SET (status, run_at, lease_expires_at, worker_id, last_error) = (
             SELECT CASE t.outcome WHEN 'retry' THEN 'pending' ELSE t.outcome END,
                    CASE t.outcome WHEN 'retry' THEN now() + t.retry_delay_ms * interval '1 millisecond' ELSE it.run_at END,
                    NULL::timestamptz, NULL::text,
                    CASE WHEN t.error_code IS NULL THEN it.last_error
                         ELSE jsonb_build_object('code', t.error_code, 'message', t.error_message, 'status_code', t.status_code) END
               FROM targets t WHERE t.tid = it.ctid)
     WHERE it.ctid = ANY (ARRAY(SELECT t.tid FROM targets t WHERE t.outcome <> 'succeeded'))
    RETURNING 1
  ), finals AS (
    SELECT t.*, row_number() OVER (PARTITION BY t.batch_id ORDER BY t.idx) AS rn
      FROM targets t WHERE t.outcome <> 'retry'
  ), inserted AS (
    INSERT INTO lote.results (batch_id, seq, idx, custom_id, attempts, status_code, backend_request_id, body, error_code, error_message)
    SELECT f.batch_id, (SELECT b.result_seq FROM lote.batches b WHERE b.id = f.batch_id) + f.rn, f.idx, f.custom_id,
           f.attempt, f.status_code, coalesce(f.request_id, ''), f.body, f.error_code, f.error_message
      FROM finals f
    RETURNING 1
  ), sums AS (
    SELECT f.batch_id,
           count(*) AS n,
           count(*) FILTER (WHERE f.outcome = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE f.outcome = 'failed') AS failed,
           count(*) FILTER (WHERE f.outcome = 'cancelled') AS cancelled,
           coalesce(sum(f.input_tokens), 0) AS input_tokens,
           coalesce(sum(f.output_tokens), 0) AS output_tokens,
           coalesce(sum(f.total_tokens), 0) AS total_tokens
      FROM finals f GROUP BY f.batch_id
  )
  UPDATE lote.batches b
     SET (completed, failed, cancelled, result_seq, input_tokens, output_tokens, total_tokens, updated_at) = (
           SELECT b.completed + s.succeeded, b.failed + s.failed, b.cancelled + s.cancelled, b.result_seq + s.n,
                  b.input_tokens + s.input_tokens, b.output_tokens + s.output_tokens, b.total_tokens + s.total_tokens, now()
             FROM sums s WHERE s.batch_id = b.id)
   WHERE b.id = ANY (ARRAY(SELECT s.batch_id FROM sums s)) AND (SELECT count(*) FROM inserted) >= 0
  RETURNING b.id, (b.completed + b.failed + b.cancelled + b.expired) = b.total AS done
  LOOP
    PERFORM pg_notify('lote_batch', r.id);
    batch_id := r.id;
    finished := r.done;
    RETURN NEXT;
  END LOOP;
END;
$$;

-- lote.claim_items, as in 004 but for the rate limits' window: requests_per_minute and tokens_per_minute now count
-- every claim of the last 60 seconds (and at most one second more), where they forgot a claim after as little as 59.
CREATE OR REPLACE FUNCTION lote.claim_items(
  p_model text,
  p_limit integer,
  p_worker text,
  p_lease_ms integer,
  p_max_concurrency integer,
  p_requests_per_minute bigint,
  p_tokens_per_minute bigint,
  p_own_calls integer DEFAULT NULL,
  p_tenants text[] DEFAULT NULL,
  p_tenant_calls integer[] DEFAULT NULL
) RETURNS TABLE (batch_id text, idx integer, custom_id text, attempt integer, body text, endpoint text, est_tokens integer, tenant_id text)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
  v_allowed bigint;
  v_requests bigint := 0;
  v_tokens bigint := 0;
  v_token_budget bigint;
  v_priority integer;
  v_tenants text[];
  v_running integer[];
  v_level integer;
  v_held bigint;
  v_left integer;
  v_level_tids tid[];
  v_level_tokens integer[];
  v_tids tid[] := '{}';
  v_est integer[] := '{}';
  v_take tid[] := '{}';
  v_sum bigint := 0;
BEGIN
  -- Why each of these: migration 003.
  PERFORM set_config('synchronous_commit', 'off', true);
  PERFORM pg_advisory_xact_lock(hashtext('lote.claim_items'), hashtext(p_model));
  IF p_own_calls IS NULL THEN
    SELECT p_max_concurrency - count(*) INTO v_allowed
      FROM lote.items i WHERE i.model = p_model AND i.status = 'running';
  ELSE
    v_allowed := p_max_concurrency - p_own_calls
      - (SELECT count(*) FROM lote.items i WHERE i.model = p_model AND i.status = 'running' AND i.worker_id < p_worker)
      - (SELECT count(*) FROM lote.items i WHERE i.model = p_model AND i.status = 'running' AND i.worker_id > p_worker);
  END IF;
  v_allowed := least(v_allowed, p_limit);
  IF p_requests_per_minute > 0 OR p_tokens_per_minute > 0 THEN
    -- New in 006: 61 seconds. A row holds the claims of one second, [second, second + 1 s); counted while its start
    -- was under 60 s ago, the claims made late in that second were forgotten 59 s after they were made, and the
    -- calls of a minute could reach the limit plus a second's worth (2,957 in 60 s at requests_per_minute 2,000,
    -- two workers). Now each claim counts for 60 to 61 s.
    SELECT coalesce(sum(u.requests), 0), coalesce(sum(u.tokens), 0) INTO v_requests, v_tokens
      FROM lote.model_usage u WHERE u.model = p_model AND u.second > now() - interval '61 seconds';
    IF p_requests_per_minute > 0 THEN
      v_allowed := least(v_allowed, p_requests_per_minute - v_requests);
    END IF;
  END IF;
  IF v_allowed <= 0 THEN
    RETURN;
  END IF;
  v_token_budget := CASE WHEN p_tokens_per_minute > 0 THEN p_tokens_per_minute - v_tokens ELSE NULL END;

  -- The pick, one priority level at a time from the highest, until the claim is full or no level is left. Every
  -- read is an index scan driven from the left (LATERAL), so no join order depends on statistics (see 003), and the
  -- rows are locked as they are read (SKIP LOCKED: a row being cancelled is passed over).
  v_left := v_allowed;
  v_priority := (SELECT it.priority FROM lote.items it WHERE it.model = p_model AND it.status = 'pending'
                  ORDER BY it.priority DESC LIMIT 1);
  WHILE v_left > 0 AND v_priority IS NOT NULL LOOP
    -- The tenants with pending items at this level: a skip scan, one index probe per tenant.
    WITH RECURSIVE t(tenant) AS (
      SELECT (SELECT it.tenant_id FROM lote.items it
               WHERE it.model = p_model AND it.status = 'pending' AND it.priority = v_priority
               ORDER BY it.tenant_id LIMIT 1)
      UNION ALL
      SELECT (SELECT it.tenant_id FROM lote.items it
               WHERE it.model = p_model AND it.status = 'pending' AND it.priority = v_priority AND it.tenant_id > t.tenant
               ORDER BY it.tenant_id LIMIT 1)
        FROM t WHERE t.tenant IS NOT NULL
    )
    SELECT array_agg(t.tenant) INTO v_tenants FROM t WHERE t.tenant IS NOT NULL;

    IF v_tenants IS NOT NULL THEN
      -- Water-filling. Tenants by calls in flight, fewest first; the level is the smallest number of slots per tenant
      -- that the free slots can fill up to (a tenant already above it gets none). Each tenant's quota is what lifts
      -- it to the level. Round 1 reads each tenant's next `quota` items; round 2 lets the tenants that had that many
      -- take what the others could not use. Items rank by the slots their tenant would then hold, so ties and the
      -- final cut to the claim's size go to the tenant holding fewer. Reads stay near the claim's size.
      SELECT array_agg(x.tenant ORDER BY x.running, x.tenant), array_agg(x.running ORDER BY x.running, x.tenant)
        INTO v_tenants, v_running
        FROM (SELECT u.tenant, coalesce(p_tenant_calls[array_position(p_tenants, u.tenant)], 0) AS running
                FROM unnest(v_tenants) AS u(tenant)) x;
      v_held := 0;
      FOR k IN 1 .. cardinality(v_tenants) LOOP
        v_held := v_held + v_running[k];
        v_level := ceil((v_left + v_held)::numeric / k)::integer;
        EXIT WHEN k = cardinality(v_tenants) OR v_level <= v_running[k + 1];
      END LOOP;
      WITH quotas AS (
        SELECT t.tenant, t.running, greatest(v_level - t.running, 0) AS quota
          FROM unnest(v_tenants, v_running) AS t(tenant, running)
      ), first_round AS (
        SELECT x.tid, x.tenant_id, x.idx, x.batch_id, x.est_tokens,
               u.running + row_number() OVER (PARTITION BY x.tenant_id ORDER BY x.idx, x.batch_id) AS rank
          FROM quotas u CROSS JOIN LATERAL (
            SELECT it.ctid AS tid, it.tenant_id, it.idx, it.batch_id, it.est_tokens FROM lote.items it
             WHERE it.model = p_model AND it.status = 'pending' AND it.priority = v_priority AND it.tenant_id = u.tenant
               AND it.run_at <= now()
             ORDER BY it.idx, it.batch_id
             LIMIT u.quota
               FOR UPDATE SKIP LOCKED
          ) x
      ), got AS (
        SELECT count(*)::integer AS n FROM first_round
      ), unfilled AS (
        -- Tenants that may have more: round 1 gave each all it asked for (a tenant above the level asked for none).
        SELECT u.tenant, u.running, u.quota FROM quotas u
         WHERE (SELECT count(*) FROM first_round f WHERE f.tenant_id = u.tenant) = u.quota
      ), second_round AS (
        SELECT x.tid, x.tenant_id, x.idx, x.batch_id, x.est_tokens,
               u.running + u.quota + row_number() OVER (PARTITION BY x.tenant_id ORDER BY x.idx, x.batch_id) AS rank
          FROM unfilled u CROSS JOIN LATERAL (
            SELECT it.ctid AS tid, it.tenant_id, it.idx, it.batch_id, it.est_tokens FROM lote.items it
             WHERE it.model = p_model AND it.status = 'pending' AND it.priority = v_priority AND it.tenant_id = u.tenant
               AND it.run_at <= now()
             ORDER BY it.idx, it.batch_id
             OFFSET u.quota
             LIMIT greatest(v_left - (SELECT n FROM got), 0)
               FOR UPDATE SKIP LOCKED
          ) x
      )
      SELECT array_agg(c.tid ORDER BY c.rank, c.idx, c.batch_id), array_agg(c.est_tokens ORDER BY c.rank, c.idx, c.batch_id)
        INTO v_level_tids, v_level_tokens
        FROM (SELECT * FROM first_round UNION ALL SELECT * FROM second_round ORDER BY rank, idx, batch_id LIMIT v_left) c;
      IF v_level_tids IS NOT NULL THEN
        v_tids := v_tids || v_level_tids;
        v_est := v_est || v_level_tokens;
        v_left := v_left - cardinality(v_level_tids);
      END IF;
    END IF;
    IF v_left > 0 THEN
      v_priority := (SELECT it.priority FROM lote.items it WHERE it.model = p_model AND it.status = 'pending' AND it.priority < v_priority
                      ORDER BY it.priority DESC LIMIT 1);
    END IF;
  END LOOP;

  -- tokens_per_minute: stop at the budget, but let one request through when the window is empty so a single
  -- request larger than the whole budget cannot block the model forever.
  IF v_token_budget IS NULL THEN
    v_take := v_tids;
  ELSE
    FOR i IN 1 .. coalesce(cardinality(v_tids), 0) LOOP
      v_sum := v_sum + v_est[i];
      EXIT WHEN v_sum > v_token_budget AND NOT (i = 1 AND v_tokens = 0);
      v_take := v_take || v_tids[i];
    END LOOP;
  END IF;
  IF cardinality(v_take) = 0 THEN
    RETURN;
  END IF;

  -- The rows are locked by the pick, so their ctid cannot change before this update (003).
  RETURN QUERY
  WITH claimed AS (
    UPDATE lote.items it
       SET status = 'running', attempt = it.attempt + 1, worker_id = p_worker,
           lease_expires_at = now() + p_lease_ms * interval '1 millisecond'
     WHERE it.ctid = ANY (v_take)
    RETURNING it.batch_id, it.idx, it.custom_id, it.attempt, it.body, it.est_tokens, it.tenant_id
  ), usage AS (
    INSERT INTO lote.model_usage AS u (model, second, requests, tokens)
    SELECT p_model, date_trunc('second', now()), count(*), coalesce(sum(c.est_tokens), 0)
      FROM claimed c
    HAVING count(*) > 0 AND (p_requests_per_minute > 0 OR p_tokens_per_minute > 0)
    ON CONFLICT (model, second) DO UPDATE SET requests = u.requests + excluded.requests, tokens = u.tokens + excluded.tokens
  )
  SELECT c.batch_id, c.idx, c.custom_id, c.attempt, c.body,
         (SELECT b.endpoint FROM lote.batches b WHERE b.id = c.batch_id), c.est_tokens, c.tenant_id
    FROM claimed c;
END;
$$;

