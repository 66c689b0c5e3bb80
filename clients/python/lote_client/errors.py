"""LoteError: a failed RPC, with the google.rpc details lote attaches (BadRequest field violations, ...)."""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.rpc import error_details_pb2

# gRPC sends the full google.rpc.Status, details included, in this binary trailer (gRPC's "richer error model").
_DETAILS_TRAILER = "grpc-status-details-bin"


class FieldViolation(NamedTuple):
    """One bad field of a request, as google.rpc.BadRequest.FieldViolation reports it."""

    field: str
    description: str


class LoteError(Exception):
    """A call lote refused or could not complete.

    code: the gRPC status (grpc.StatusCode.INVALID_ARGUMENT, NOT_FOUND, ...).
    message: the server's explanation.
    field_violations: for INVALID_ARGUMENT, which request fields were wrong and why.
    """

    def __init__(self, code: grpc.StatusCode, message: str, field_violations: Optional[List[FieldViolation]] = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations or []

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "LoteError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        violations: List[FieldViolation] = []
        for key, value in trailers or ():
            if key != _DETAILS_TRAILER:
                continue
            for detail in _status_class().FromString(value).details:
                # Matched by type URL rather than Any.Unpack: this Any comes from a private descriptor pool.
                if detail.type_url.rsplit("/", 1)[-1] == "google.rpc.BadRequest":
                    bad_request = error_details_pb2.BadRequest.FromString(detail.value)
                    violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
        return cls(code, message or "", violations)


_status = None


def _status_class():
    """google.rpc.Status, built from its three fields at first use.

    proto/ vendors error_details.proto but not status.proto, and python3-grpcio ships without grpcio-status, so the
    message is declared here: code = 1, message = 2, repeated google.protobuf.Any details = 3 (googleapis
    google/rpc/status.proto). Kept in a private pool so it never clashes with a real google.rpc.Status elsewhere.
    """
    global _status
    if _status is None:
        pool = descriptor_pool.DescriptorPool()
        any_file = descriptor_pb2.FileDescriptorProto()
        any_pb2.DESCRIPTOR.CopyToProto(any_file)
        pool.Add(any_file)
        F = descriptor_pb2.FieldDescriptorProto
        status_file = descriptor_pb2.FileDescriptorProto(
            name="lote_client/google_rpc_status.proto", package="google.rpc", syntax="proto3",
            dependency=["google/protobuf/any.proto"],
        )
        status = status_file.message_type.add(name="Status")
        status.field.add(name="code", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
        status.field.add(name="message", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        status.field.add(name="details", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                         type_name=".google.protobuf.Any")
        pool.Add(status_file)
        descriptor = pool.FindMessageTypeByName("google.rpc.Status")
        # GetMessageClass is protobuf >= 4.22; Debian bookworm has 4.21, where MessageFactory.GetPrototype does it.
        if hasattr(message_factory, "GetMessageClass"):
            _status = message_factory.GetMessageClass(descriptor)
        else:
            _status = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return _status
