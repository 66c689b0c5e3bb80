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
