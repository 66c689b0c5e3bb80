-- The claim, as one call. plpgsql because the fleet-wide concurrency count must be read AFTER the per-model
-- advisory lock is held: in READ COMMITTED a single SQL statement takes its snapshot before it could take the lock,
-- and would miss claims committed while it waited. Each statement of a VOLATILE function gets a fresh snapshot.
--
-- p_own_calls: the calls the claiming node has in flight for this model, or NULL. The node knows exactly which of
-- its running rows are still at the backend and which only wait for their completion write; the table cannot
-- tell them apart. With it, the count is other nodes' running rows (their unwritten completions still count:
-- conservative) plus p_own_calls, so a node's completion batching does not eat its own concurrency. Without it
-- (each flush then waking the claim loop to take the slots it freed), 30,000 calls at 50 ms and max_concurrency
-- 256 ran at 3,390/s instead of 3,760/s (0.66 and 0.73 of 5,120/s), and 50,000 at zero latency with 128 slots at
-- 6,100/s instead of 7,800/s (bench/dispatch.ts, 2 cores). NULL counts every running row.
--
-- The planner settings make the plan independent of statistics. Right after a large COPY lote.items has none
-- (autovacuum analyzes a minute later, and on a big table not until 10% of it changed): the planner then took
-- 'pending' for a handful of rows and chose a bitmap scan plus a sort of every pending item for each claim,
-- 50-230 ms per claim with 50,000 pending, instead of reading the first rows of items_claimable in order
-- (0.5 ms). Every statement here is meant to be an index scan, so turning the alternatives off costs nothing.
CREATE FUNCTION lote.claim_items(
  p_model text,
  p_limit integer,
  p_worker text,
  p_lease_ms integer,
  p_max_concurrency integer,
  p_requests_per_minute bigint,
  p_tokens_per_minute bigint,
  p_own_calls integer DEFAULT NULL
) RETURNS TABLE (batch_id text, idx integer, custom_id text, attempt integer, body text, endpoint text, est_tokens integer)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
-- With the above the generic plan is the right one; without this, plpgsql re-planned the CTE on every call
-- (custom plans looked cheaper), 0.3 ms of each 0.5 ms claim of one item.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
  v_allowed bigint;
  v_requests bigint := 0;
  v_tokens bigint := 0;
  v_token_budget bigint;
BEGIN
  -- One claimer per model at a time across every node: claims are ~1 ms, and this is what makes
  -- max_concurrency hold fleet-wide rather than per process.
  PERFORM pg_advisory_xact_lock(hashtext('lote.claim_items'), hashtext(p_model));
  IF p_own_calls IS NULL THEN
    SELECT p_max_concurrency - count(*) INTO v_allowed
      FROM lote.items i WHERE i.model = p_model AND i.status = 'running';
  ELSE
    SELECT p_max_concurrency - p_own_calls - count(*) INTO v_allowed
      FROM lote.items i WHERE i.model = p_model AND i.status = 'running' AND i.worker_id IS DISTINCT FROM p_worker;
  END IF;
  v_allowed := least(v_allowed, p_limit);
  IF p_requests_per_minute > 0 OR p_tokens_per_minute > 0 THEN
    SELECT coalesce(sum(u.requests), 0), coalesce(sum(u.tokens), 0) INTO v_requests, v_tokens
      FROM lote.model_usage u WHERE u.model = p_model AND u.second > now() - interval '60 seconds';
    IF p_requests_per_minute > 0 THEN
      v_allowed := least(v_allowed, p_requests_per_minute - v_requests);
    END IF;
  END IF;
  IF v_allowed <= 0 THEN
    RETURN;
  END IF;
  v_token_budget := CASE WHEN p_tokens_per_minute > 0 THEN p_tokens_per_minute - v_tokens ELSE NULL END;

  RETURN QUERY
  WITH picked AS (
    SELECT c.batch_id, c.idx, c.est_tokens,
           sum(c.est_tokens) OVER (ORDER BY c.priority DESC, c.idx, c.batch_id) AS cumulative,
           row_number() OVER (ORDER BY c.priority DESC, c.idx, c.batch_id) AS position
      FROM (
        SELECT it.batch_id, it.idx, it.est_tokens, it.priority
          FROM lote.items it
         WHERE it.model = p_model AND it.status = 'pending' AND it.run_at <= now()
         ORDER BY it.priority DESC, it.idx, it.batch_id
         LIMIT v_allowed
           FOR UPDATE SKIP LOCKED
      ) c
  ), within_budget AS (
    -- tokens_per_minute: stop at the budget, but let one request through when the window is empty so a single
    -- request larger than the whole budget cannot block the model forever.
    SELECT p.batch_id, p.idx FROM picked p
     WHERE v_token_budget IS NULL OR p.cumulative <= v_token_budget OR (p.position = 1 AND v_tokens = 0)
  ), claimed AS (
    UPDATE lote.items it
       SET status = 'running', attempt = it.attempt + 1, worker_id = p_worker,
           lease_expires_at = now() + p_lease_ms * interval '1 millisecond'
      FROM within_budget w
     WHERE it.batch_id = w.batch_id AND it.idx = w.idx
    RETURNING it.batch_id, it.idx, it.custom_id, it.attempt, it.body, it.est_tokens
  ), usage AS (
    -- Only when a per-minute limit is set: the window is this table's last 60 one-second rows.
    INSERT INTO lote.model_usage AS u (model, second, requests, tokens)
    SELECT p_model, date_trunc('second', now()), count(*), coalesce(sum(c.est_tokens), 0)
      FROM claimed c
    HAVING count(*) > 0 AND (p_requests_per_minute > 0 OR p_tokens_per_minute > 0)
    ON CONFLICT (model, second) DO UPDATE SET requests = u.requests + excluded.requests, tokens = u.tokens + excluded.tokens
  )
  SELECT c.batch_id, c.idx, c.custom_id, c.attempt, c.body, b.endpoint, c.est_tokens
    FROM claimed c JOIN lote.batches b ON b.id = c.batch_id;

END;
$$;

-- Completions, batched: one call writes up to hundreds of outcomes. Fenced by attempt and status = 'running', so a
-- worker whose lease was rescued (and re-claimed by another node) cannot overwrite the newer attempt; exactly one
-- result row per item is guaranteed by results' UNIQUE (batch_id, idx) and by only final outcomes inserting one.
CREATE FUNCTION lote.complete_items(
  p_batch_id text[], p_idx integer[], p_attempt integer[], p_outcome text[], p_status_code integer[],
  p_request_id text[], p_body text[], p_error_code text[], p_error_message text[], p_retry_delay_ms integer[],
  p_input_tokens bigint[], p_output_tokens bigint[], p_total_tokens bigint[]
) RETURNS TABLE (batch_id text, finished boolean)
LANGUAGE plpgsql VOLATILE
-- Statistics-proof plan, as for the claim: each input row is one primary-key probe into lote.items.
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
  r record;
BEGIN
  -- The batch row lock orders result_seq: the next completer of the same batch waits here until we commit, so a
  -- higher seq always becomes visible after a lower one (StreamResults resumes with no gap). Locked in id order
  -- so two completers never deadlock.
  PERFORM 1 FROM lote.batches b WHERE b.id = ANY(p_batch_id) ORDER BY b.id FOR UPDATE;

  FOR r IN
  WITH input AS (
    SELECT * FROM unnest(p_batch_id, p_idx, p_attempt, p_outcome, p_status_code, p_request_id, p_body, p_error_code,
                         p_error_message, p_retry_delay_ms, p_input_tokens, p_output_tokens, p_total_tokens)
      AS u(batch_id, idx, attempt, outcome, status_code, request_id, body, error_code, error_message, retry_delay_ms,
           input_tokens, output_tokens, total_tokens)
  ), updated AS (
    UPDATE lote.items it
       SET status = CASE u.outcome WHEN 'retry' THEN 'pending' ELSE u.outcome END,
           run_at = CASE u.outcome WHEN 'retry' THEN now() + u.retry_delay_ms * interval '1 millisecond' ELSE it.run_at END,
           lease_expires_at = NULL,
           worker_id = NULL,
           last_error = CASE WHEN u.error_code IS NULL THEN it.last_error
                             ELSE jsonb_build_object('code', u.error_code, 'message', u.error_message, 'status_code', u.status_code) END
      FROM input u
     -- COLLATE "C" (byte equality, the same answer for 'running') keeps the planner from proving the partial index
     -- items_running_batch usable: without statistics it preferred it to the primary key, and then read every
     -- running row of the batch from the heap for each input row (this UPDATE, 100 rows: 6.6 ms instead of 1.6 ms).
     WHERE it.batch_id = u.batch_id AND it.idx = u.idx AND it.attempt = u.attempt AND it.status = 'running' COLLATE "C"
    RETURNING it.batch_id, it.idx, it.custom_id, it.attempt, u.outcome, u.status_code, u.request_id, u.body,
              u.error_code, u.error_message, u.input_tokens, u.output_tokens, u.total_tokens
  ), finals AS (
    SELECT up.*, row_number() OVER (PARTITION BY up.batch_id ORDER BY up.idx) AS rn
      FROM updated up WHERE up.outcome <> 'retry'
  ), inserted AS (
    INSERT INTO lote.results (batch_id, seq, idx, custom_id, attempts, status_code, backend_request_id, body, error_code, error_message)
    SELECT f.batch_id, b.result_seq + f.rn, f.idx, f.custom_id, f.attempt, f.status_code, coalesce(f.request_id, ''),
           f.body, f.error_code, f.error_message
      FROM finals f JOIN lote.batches b ON b.id = f.batch_id
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
     SET completed = b.completed + s.succeeded,
         failed = b.failed + s.failed,
         cancelled = b.cancelled + s.cancelled,
         result_seq = b.result_seq + s.n,
         input_tokens = b.input_tokens + s.input_tokens,
         output_tokens = b.output_tokens + s.output_tokens,
         total_tokens = b.total_tokens + s.total_tokens,
         updated_at = now()
    FROM sums s
   WHERE b.id = s.batch_id AND (SELECT count(*) FROM inserted) >= 0
  RETURNING b.id, (b.completed + b.failed + b.cancelled + b.expired) = b.total AS done
  LOOP
    -- Wakes StreamResults/WatchBatch on every node, once per batch per flush; sent at commit. In here rather
    -- than a second statement from the completer: one round trip per flush instead of two.
    PERFORM pg_notify('lote_batch', r.id);
    batch_id := r.id;
    finished := r.done;
    RETURN NEXT;
  END LOOP;
END;
$$;
