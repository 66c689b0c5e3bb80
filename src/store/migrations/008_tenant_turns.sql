-- A tie between tenants goes to the one the claiming node served longest ago, not to the item with the lowest
-- position.
--
-- lote.claim_items, as in 006 but for the order of tenants with as many calls in flight. The node passes its tenants
-- (p_tenants) least recently served first, those holding no call too (src/dispatch/tenant-turns.ts); a tenant it
-- does not list was served longer ago than all it lists, so it comes first. Before, ties went by (idx, batch_id),
-- so that every *batch* advanced alike: where calls in flight cannot tell tenants apart (a model with one slot, or
-- a node's share of one, where each claim comes when no call runs) a tenant with four batches took 8 of 10 calls
-- against another tenant's one batch, and finished its 160 requests while the other still had 8 of its 40 to go.
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
      -- New in 008: tenants holding as many calls are in the node's turn order (p_tenants: least recently served
      -- first; a tenant it does not list, served longer ago or never, before all it lists), and so are items of the
      -- same rank: a tie goes to the tenant whose turn it is, where (idx, batch_id) gave it to the lowest position.
      SELECT array_agg(x.tenant ORDER BY x.running, x.turn, x.tenant), array_agg(x.running ORDER BY x.running, x.turn, x.tenant)
        INTO v_tenants, v_running
        FROM (SELECT u.tenant, coalesce(p_tenant_calls[q.pos], 0) AS running, coalesce(q.pos, 0) AS turn
                FROM unnest(v_tenants) AS u(tenant) CROSS JOIN LATERAL (SELECT array_position(p_tenants, u.tenant) AS pos) q) x;
      v_held := 0;
      FOR k IN 1 .. cardinality(v_tenants) LOOP
        v_held := v_held + v_running[k];
        v_level := ceil((v_left + v_held)::numeric / k)::integer;
        EXIT WHEN k = cardinality(v_tenants) OR v_level <= v_running[k + 1];
      END LOOP;
      WITH quotas AS (
        SELECT t.tenant, t.running, t.turn, greatest(v_level - t.running, 0) AS quota
          FROM unnest(v_tenants, v_running) WITH ORDINALITY AS t(tenant, running, turn)
      ), first_round AS (
        SELECT x.tid, x.tenant_id, x.idx, x.batch_id, x.est_tokens, u.turn,
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
        SELECT u.tenant, u.running, u.turn, u.quota FROM quotas u
         WHERE (SELECT count(*) FROM first_round f WHERE f.tenant_id = u.tenant) = u.quota
      ), second_round AS (
        SELECT x.tid, x.tenant_id, x.idx, x.batch_id, x.est_tokens, u.turn,
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
      SELECT array_agg(c.tid ORDER BY c.rank, c.turn, c.idx, c.batch_id), array_agg(c.est_tokens ORDER BY c.rank, c.turn, c.idx, c.batch_id)
        INTO v_level_tids, v_level_tokens
        FROM (SELECT * FROM first_round UNION ALL SELECT * FROM second_round ORDER BY rank, turn, idx, batch_id LIMIT v_left) c;
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

