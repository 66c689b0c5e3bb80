"""A small Python client for lote's gRPC API (lote.v1.BatchService).

The protobuf and gRPC modules are generated from proto/ by clients/python/generate.sh (see the README) and are
not committed. They are looked up in $LOTE_CLIENT_GEN_DIR when set, else in lote_client/gen/.
"""

import os
import sys

# grpc_python_plugin writes absolute imports that follow the proto package (`from lote.v1 import batch_pb2`), so
# the generated tree must be a root on sys.path rather than a subpackage of lote_client. `google` is a namespace
# package in python3-protobuf, so gen/google/rpc joins the installed google/protobuf instead of hiding it.
_gen_dir = os.environ.get("LOTE_CLIENT_GEN_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen")
if not os.path.isfile(os.path.join(_gen_dir, "lote", "v1", "batch_service_pb2_grpc.py")):
    raise ImportError(
        f"lote_client: generated modules not found in {_gen_dir}; run clients/python/generate.sh"
        + (" \"$LOTE_CLIENT_GEN_DIR\"" if os.environ.get("LOTE_CLIENT_GEN_DIR") else "")
    )
if _gen_dir not in sys.path:
    sys.path.insert(0, _gen_dir)

from lote.v1 import batch_pb2, batch_service_pb2  # noqa: E402  (needs the sys.path entry above)

from .client import LoteClient, Result  # noqa: E402
from .errors import LoteError  # noqa: E402

__all__ = ["LoteClient", "LoteError", "Result", "batch_pb2", "batch_service_pb2"]
