#!/bin/sh
# Installs what clients/python needs, from Debian (bookworm) packages, and checks them. Idempotent: does nothing
# but the checks when everything is already there, so CI can call it on every run.
#
#   protobuf-compiler       protoc 3.21: proto3 `optional` is accepted without flags since 3.15. Debian's
#                           python3-grpc-tools bundles an older protoc, so we do not use it.
#   libprotobuf-dev         the well-known types' .proto files (/usr/include/google/protobuf/struct.proto, ...)
#                           that lote's protos import; protoc finds /usr/include next to /usr/bin by itself.
#   protobuf-compiler-grpc  grpc_python_plugin, which protoc runs to write the *_pb2_grpc.py stubs.
#   python3-grpcio          the gRPC runtime for Debian's /usr/bin/python3 (not a pyenv python first on PATH).
#   python3-protobuf        the protobuf runtime, with the well-known types (duration, struct, timestamp).
#
# Needs root (CI runs as root) to install; never prompts (DEBIAN_FRONTEND=noninteractive, -y).
set -eu

packages="protobuf-compiler libprotobuf-dev protobuf-compiler-grpc python3-grpcio python3-protobuf"

missing=""
for p in $packages; do
  # dpkg-query prints "install ok installed" only for a fully installed package.
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
    missing="$missing $p"
  fi
done

if [ -n "$missing" ]; then
  echo "install-python-client-deps: installing$missing" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-python-client-deps: must run as root to install$missing" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  apt-get install -y --no-install-recommends $missing </dev/null
fi

# Checks: fail loudly here rather than in the middle of a test.
version="$(protoc --version)"
case "$version" in
  "libprotoc 3.2"[1-9]*|"libprotoc 3.3"*|"libprotoc "[4-9]*|"libprotoc "[1-9][0-9]*) ;;
  *) echo "install-python-client-deps: expected protoc >= 3.21, got '$version'" >&2; exit 1 ;;
esac
[ -f /usr/include/google/protobuf/struct.proto ] || { echo "install-python-client-deps: /usr/include/google/protobuf/struct.proto missing" >&2; exit 1; }
command -v grpc_python_plugin >/dev/null || { echo "install-python-client-deps: grpc_python_plugin not on PATH" >&2; exit 1; }
/usr/bin/python3 -c 'import sys, grpc, google.protobuf; print("install-python-client-deps: ok,", sys.argv[1] + ", grpcio", grpc.__version__ + ", python protobuf", google.protobuf.__version__)' "$version"
