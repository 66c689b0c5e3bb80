#!/bin/sh
# Generates the Python protobuf and gRPC modules of lote's API from proto/ into OUT_DIR (default
# clients/python/lote_client/gen, which git ignores). Never edit the output; rerun this script instead.
#
#   clients/python/generate.sh [OUT_DIR]
#
# Uses Debian's protoc 3.21 and grpc_python_plugin (scripts/install-python-client-deps.sh installs them). Not
# python3-grpc-tools: its bundled protoc predates 3.15 and rejects proto3 `optional`.
# The output keeps the proto package layout (OUT_DIR/lote/v1/batch_pb2.py, OUT_DIR/google/rpc/...) because the
# generated code imports by that path (`from lote.v1 import batch_pb2`); lote_client puts OUT_DIR on sys.path.
# The well-known types' .proto files (google/protobuf/struct.proto, ...) come from libprotobuf-dev's /usr/include,
# which protoc searches by itself (it sits in /usr/bin); their Python modules come with python3-protobuf.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here/lote_client/gen}"

command -v protoc >/dev/null 2>&1 || { echo "generate.sh: protoc not found; run scripts/install-python-client-deps.sh" >&2; exit 1; }
plugin="$(command -v grpc_python_plugin)" || { echo "generate.sh: grpc_python_plugin not found; run scripts/install-python-client-deps.sh" >&2; exit 1; }

# Start from nothing so a message or file removed from proto/ cannot survive as a stale module.
rm -rf "$out/lote" "$out/google"
mkdir -p "$out"

cd "$root/proto"
# Messages (and .pyi type stubs, for editors and type checkers) for every file; gRPC stubs only for the file that
# declares a service, so no empty *_pb2_grpc.py modules are written.
protoc -I . --python_out="$out" --pyi_out="$out" lote/v1/batch.proto lote/v1/batch_service.proto google/rpc/error_details.proto
protoc -I . --grpc_out="$out" --plugin=protoc-gen-grpc="$plugin" lote/v1/batch_service.proto
