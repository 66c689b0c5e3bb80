-- The dispatch hot path, made cheaper for Postgres. Every claimed item is one UPDATE at claim and one at completion
-- plus a result row, so each index entry and trigger on that path is paid once or twice per request. Measured with
-- `npm run bench` (a): see BENCHMARKS.md, "Dispatch".

-- From here on a succeeded item is deleted by the completion that writes its result (complete_items below):
-- lote.items holds what has not succeeded. Rows that succeeded before this migration go the same way.
DELETE FROM lote.items WHERE status = 'succeeded';

-- Running rows by (model, worker): the claim counts OTHER workers' running rows of its model (two range scans that
-- skip the claiming node's own rows, which it counts from memory), the heartbeat finds a worker's rows by model,
-- and a batch's running count reads its model's running rows (runningItemsOf in src/store/batch-row.ts).
-- lease_expires_at is no longer in any index, so a heartbeat's lease renewal is a HOT update (no index entries),
-- and the rescuer reads the few running rows and filters. items_running_worker and items_running_batch go: each
-- claim wrote four index entries and now writes two.
DROP INDEX lote.items_running;
DROP INDEX lote.items_running_worker;
DROP INDEX lote.items_running_batch;
CREATE INDEX items_running ON lote.items (model, worker_id) WHERE status = 'running';

-- The foreign key on results ran a trigger and a lookup of the batch per result row. Results are written only by
-- lote.complete_items and closeItems, for a batch row they hold locked FOR UPDATE, and batches are never deleted:
-- the guarantee holds without the check (as for lote.items, 001).
ALTER TABLE lote.results DROP CONSTRAINT results_batch_id_fkey;

-- As in 002, with the running count split by worker so it reads only other nodes' rows.
CREATE OR REPLACE FUNCTION lote.claim_items(
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
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
  v_allowed bigint;
  v_requests bigint := 0;
  v_tokens bigint := 0;
  v_token_budget bigint;
BEGIN
  -- The claim commits without waiting for its WAL flush (transaction-local; the function's SET clauses do not
  -- cover it, so it holds at commit). Lost in a Postgres crash, a claim undoes itself: its items are pending again
  -- with their old attempt, the calls already made are fenced out at completion and the items run again, which
  -- at-least-once calls allow. Completions keep waiting for the flush: results are read by clients. The flush
  -- was 6% of Postgres' CPU in the dispatch benchmark, and a share of each claim's round trip.
  PERFORM set_config('synchronous_commit', 'off', true);
  PERFORM pg_advisory_xact_lock(hashtext('lote.claim_items'), hashtext(p_model));
  IF p_own_calls IS NULL THEN
    SELECT p_max_concurrency - count(*) INTO v_allowed
      FROM lote.items i WHERE i.model = p_model AND i.status = 'running';
  ELSE
    -- `<> p_worker` as two range scans of items_running (model, worker_id), which skip this worker's rows instead
    -- of reading and filtering them (written as one OR, the plan read every running row of the model, with a heap
    -- visit each: 128 per claim at 128 calls in flight). Running rows always have a worker_id.
    v_allowed := p_max_concurrency - p_own_calls
      - (SELECT count(*) FROM lote.items i WHERE i.model = p_model AND i.status = 'running' AND i.worker_id < p_worker)
      - (SELECT count(*) FROM lote.items i WHERE i.model = p_model AND i.status = 'running' AND i.worker_id > p_worker);
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

  -- No join whose order the planner could get wrong: the claimed rows are updated by ctid (a TID scan), and the
  -- endpoint is one primary-key probe per row. The join this replaces (picked rows -> lote.items by primary key)
  -- flipped when the table's statistics said it was empty, as they do after a VACUUM between two batches (a
  -- succeeded item is deleted): the cached plan then read all of lote.items for every claim, 100 ms per claim with
  -- 25,000 pending, until the next ANALYZE.
  RETURN QUERY
  WITH picked AS (
    SELECT c.tid, c.est_tokens,
           sum(c.est_tokens) OVER (ORDER BY c.priority DESC, c.idx, c.batch_id) AS cumulative,
           row_number() OVER (ORDER BY c.priority DESC, c.idx, c.batch_id) AS position
      FROM (
        SELECT it.ctid AS tid, it.batch_id, it.idx, it.est_tokens, it.priority
          FROM lote.items it
         WHERE it.model = p_model AND it.status = 'pending' AND it.run_at <= now()
         ORDER BY it.priority DESC, it.idx, it.batch_id
         LIMIT v_allowed
           FOR UPDATE SKIP LOCKED
      ) c
  ), claimed AS (
    -- tokens_per_minute: stop at the budget, but let one request through when the window is empty so a single
    -- request larger than the whole budget cannot block the model forever. The rows are locked by `picked`, so
    -- their ctid cannot change before this update (and no other condition here: `status = 'pending'` let the
    -- planner read the whole of items_claimable and filter by ctid).
    UPDATE lote.items it
       SET status = 'running', attempt = it.attempt + 1, worker_id = p_worker,
           lease_expires_at = now() + p_lease_ms * interval '1 millisecond'
     WHERE it.ctid = ANY (ARRAY(
             SELECT p.tid FROM picked p
              WHERE v_token_budget IS NULL OR p.cumulative <= v_token_budget OR (p.position = 1 AND v_tokens = 0)))
    RETURNING it.batch_id, it.idx, it.custom_id, it.attempt, it.body, it.est_tokens
  ), usage AS (
    INSERT INTO lote.model_usage AS u (model, second, requests, tokens)
    SELECT p_model, date_trunc('second', now()), count(*), coalesce(sum(c.est_tokens), 0)
      FROM claimed c
    HAVING count(*) > 0 AND (p_requests_per_minute > 0 OR p_tokens_per_minute > 0)
    ON CONFLICT (model, second) DO UPDATE SET requests = u.requests + excluded.requests, tokens = u.tokens + excluded.tokens
  )
  SELECT c.batch_id, c.idx, c.custom_id, c.attempt, c.body,
         (SELECT b.endpoint FROM lote.batches b WHERE b.id = c.batch_id), c.est_tokens
    FROM claimed c;
END;
$$;

-- Completions now arrive as one JSON array of objects (keys: the columns of `input` below) instead of 13 parallel
-- arrays: node-postgres builds array literals in JavaScript, escaping every quote of every response body with a
-- regular expression (5% of the node's time at zero backend latency), where JSON.stringify does it natively, and
-- json_to_recordset reads it in one pass. p_batch_ids: the distinct batch ids among the rows, to lock first.
CREATE FUNCTION lote.complete_items(p_batch_ids text[], p_rows json) RETURNS TABLE (batch_id text, finished boolean)
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
    FROM ROWS FROM (json_to_recordset(p_rows) AS (batch_id text, idx integer, attempt integer))
         WITH ORDINALITY AS u(batch_id, idx, attempt, n)
    LEFT JOIN LATERAL (
      SELECT it.ctid AS tid, it.custom_id FROM lote.items it
       WHERE it.batch_id = u.batch_id AND it.idx = u.idx AND it.attempt = u.attempt AND it.status = 'running' COLLATE "C"
         FOR UPDATE
    ) t ON true;

  -- 2. Everything else, by ctid and primary key. A new statement, so a new snapshot: a row version locked in step 1
  --    after a heartbeat renewed its lease (a new version, committed after step 1's snapshot) is visible here, and
  --    being locked it stays the current one.
  FOR r IN
  WITH targets AS (
    -- One row per item, should the input repeat one (the first wins).
    SELECT DISTINCT ON (v_tid[u.n]) u.*, v_tid[u.n] AS tid, v_custom_id[u.n] AS custom_id
      FROM ROWS FROM (json_to_recordset(p_rows)
             AS (batch_id text, idx integer, attempt integer, outcome text, status_code integer, request_id text,
                 body text, error_code text, error_message text, retry_delay_ms integer, input_tokens bigint,
                 output_tokens bigint, total_tokens bigint))
           WITH ORDINALITY AS u(batch_id, idx, attempt, outcome, status_code, request_id, body, error_code, error_message,
                                retry_delay_ms, input_tokens, output_tokens, total_tokens, n)
     WHERE v_tid[u.n] IS NOT NULL
     ORDER BY v_tid[u.n], u.n
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
DROP FUNCTION lote.complete_items(text[], integer[], integer[], text[], integer[], text[], text[], text[], text[],
                                  integer[], bigint[], bigint[], bigint[]);
