"""LoteClient: create, watch, read and cancel batches on a lote server over gRPC."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, Iterator, Mapping, NamedTuple, Optional, Tuple, Union

import grpc
from google.protobuf import duration_pb2
from lote.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc

from .errors import LoteError

# One request: (custom_id, body) or an OpenAI batch-input line {"custom_id": ..., "body": {...}, ...}.
RequestLike = Union[Tuple[str, Mapping[str, Any]], Mapping[str, Any]]


class Result(NamedTuple):
    """The outcome of one request. Exactly one of `response` and `error` is set.

    response: the backend's JSON body (a dict) when it answered 2xx; its text (a str) if that body is not JSON.
    error: {"code": ..., "message": ..., "status_code": ...} when the request failed, expired or was cancelled.
    cursor: pass as `after` to results() to resume right after this result.
    """

    custom_id: str
    response: Optional[Dict[str, Any]]
    error: Optional[Dict[str, Any]]
    cursor: str


class LoteClient:
    """A connection to one lote server.

    target: "host:port" of the gRPC endpoint, plaintext (h2c), e.g. "127.0.0.1:50051".
    api_key: sent as "authorization: Bearer <key>" on every call when set; needed when the server has auth on.
    timeout_s: deadline of unary calls in seconds (default 30). Streams (watch, results) have none: they last as
      long as the batch runs.
    """

    def __init__(self, target: str, api_key: Optional[str] = None, *, timeout_s: float = 30.0):
        if not isinstance(target, str) or not target:
            raise TypeError(f"Expected `target` to be a non-empty 'host:port' string, got {target!r}")
        self._channel = grpc.insecure_channel(target)
        self._stub = batch_service_pb2_grpc.BatchServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout_s = timeout_s
        self.target = target

    def __repr__(self) -> str:
        # Never the key itself.
        return f"LoteClient({self.target!r}, api_key={'<set>' if self._metadata else None})"

    def __enter__(self) -> "LoteClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def create_batch(
        self,
        endpoint: Union[str, int],
        requests: Iterable[RequestLike],
        metadata: Optional[Mapping[str, str]] = None,
        completion_window_s: Optional[int] = None,
        request_id: str = "",
    ) -> batch_pb2.Batch:
        """Queues a batch. endpoint: "classify", "chat_completions", ... or a batch_pb2.Endpoint value."""
        message = batch_service_pb2.CreateBatchRequest(
            endpoint=_endpoint(endpoint),
            requests=[_request(r) for r in requests],
            metadata=dict(metadata or {}),
            request_id=request_id,
        )
        if completion_window_s is not None:
            message.completion_window.CopyFrom(duration_pb2.Duration(seconds=int(completion_window_s)))
        return self._unary(self._stub.CreateBatch, message)

    def get_batch(self, batch_id: str) -> batch_pb2.Batch:
        return self._unary(self._stub.GetBatch, batch_service_pb2.GetBatchRequest(id=batch_id))

    def cancel(self, batch_id: str) -> batch_pb2.Batch:
        """Cancels a batch; returns it CANCELLING or CANCELLED. FAILED_PRECONDITION when already terminal."""
        return self._unary(self._stub.CancelBatch, batch_service_pb2.CancelBatchRequest(id=batch_id))

    def watch(self, batch_id: str) -> Iterator[batch_pb2.Batch]:
        """Yields the batch now and on every change of status or counts; ends when the batch is terminal."""
        stream = self._stub.WatchBatch(batch_service_pb2.WatchBatchRequest(id=batch_id), metadata=self._metadata)
        for message in _stream(stream):
            yield message.batch

    def results(self, batch_id: str, follow: bool = True, after: str = "") -> Iterator[Result]:
        """Yields results as they complete. follow=True waits for the batch to end; False stops at what is stored.

        Bodies come as raw JSON bytes (raw_json) and are parsed with json.loads: lossless, unlike Struct, whose
        numbers are doubles.
        """
        request = batch_service_pb2.StreamResultsRequest(batch_id=batch_id, follow=follow, after=after, raw_json=True)
        for message in _stream(self._stub.StreamResults(request, metadata=self._metadata)):
            r = message.result
            if r.HasField("response"):
                yield Result(r.custom_id, _body(r.response.body_json), None, r.cursor)
            else:
                error = {"code": r.error.code, "message": r.error.message, "status_code": r.error.status_code}
                yield Result(r.custom_id, None, error, r.cursor)

    def _unary(self, method: Any, message: Any) -> Any:
        try:
            return method(message, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise LoteError.from_rpc_error(error) from None


def _stream(call: Any) -> Iterator[Any]:
    try:
        yield from call
    except grpc.RpcError as error:
        raise LoteError.from_rpc_error(error) from None
    finally:
        # Stops the server's work when the caller abandons the generator early (break, exception).
        call.cancel()


def _body(body_json: bytes) -> Any:
    """The backend's JSON body; its text when it is not JSON (a proxy's HTML page answered with 200).

    json.loads raising there ended the results() generator at that result, and every later one was lost.
    """
    text = body_json.decode("utf-8", errors="replace") if body_json else "{}"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _endpoint(endpoint: Union[str, int]) -> int:
    if isinstance(endpoint, int):
        return endpoint
    name = endpoint.upper()
    name = name if name.startswith("ENDPOINT_") else f"ENDPOINT_{name}"
    try:
        return batch_pb2.Endpoint.Value(name)
    except ValueError:
        names = ", ".join(n.removeprefix("ENDPOINT_").lower() for n in batch_pb2.Endpoint.keys()[1:])
        raise ValueError(f"Expected `endpoint` to be one of {names}, got {endpoint!r}") from None


def _request(request: RequestLike) -> batch_pb2.Request:
    if isinstance(request, Mapping):
        custom_id, body = request["custom_id"], request["body"]
    else:
        custom_id, body = request
    # body_json keeps the body byte for byte (integers above 2^53 included); see Request.body_json in batch.proto.
    return batch_pb2.Request(custom_id=custom_id, body_json=json.dumps(body, ensure_ascii=False).encode("utf-8"))


__all__ = ["LoteClient", "Result"]
