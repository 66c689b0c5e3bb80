-- The fingerprint of the call that made a batch with a request_id: a SHA-256 of its options and requests
-- (src/batch/request-digest.ts). A later CreateBatch with the same request_id but other requests or options is
-- refused with ALREADY_EXISTS: answered with the first batch, a nightly job that reused its request_id got
-- yesterday's batch and results back, with no error. NULL for batches made without a request_id, by RetryBatch, or
-- before this migration (a repeat of those is answered as before).
ALTER TABLE lote.batches ADD COLUMN request_digest text;
