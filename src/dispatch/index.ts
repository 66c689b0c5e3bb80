/** Dispatch: the worker pool that claims items from Postgres and runs them against model backends. */
export { Dispatcher, type CallOutcome, type DatabaseOperation, type DispatcherOptions, type DispatcherState, type DispatchObserver } from "./dispatcher.ts";
export { isRetryable, isRetryableStatus, retryableTransport, retryDelayMs, describeFailure, type Failure } from "./retry-policy.ts";
