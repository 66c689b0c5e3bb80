#!/usr/bin/python3
"""Classifies three sentences with lote's built-in `lote-sentiment` model, as one batch.

    clients/python/generate.sh                        # once, and after every change to proto/
    /usr/bin/python3 clients/python/example.py --target 127.0.0.1:50051

Creates the batch on the classify endpoint, watches it to the end printing one progress line per change, then
streams the results and prints `custom_id label confidence` per request. Set LOTE_API_KEY when the server has
authentication on. Exits 0 when every request got a label, 1 otherwise.
"""

import argparse
import os
import sys

# Run from a checkout without installing anything: lote_client sits next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lote_client import LoteClient, LoteError, batch_pb2  # noqa: E402

SENTENCES = ["Eu amo estudar IA!", "Estou muito cansado hoje", "Esse filme foi terrível"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the lote gRPC server")
    args = parser.parse_args()

    with LoteClient(args.target, api_key=os.environ.get("LOTE_API_KEY") or None) as client:
        try:
            batch = client.create_batch(
                "classify",
                [(f"s{i}", {"model": "lote-sentiment", "input": text}) for i, text in enumerate(SENTENCES)],
                metadata={"example": "python-client"},
            )
            print(f"created {batch.id} ({batch.request_counts.total} requests)", flush=True)

            for batch in client.watch(batch.id):
                counts = batch.request_counts
                done = counts.completed + counts.failed + counts.cancelled + counts.expired
                status = batch_pb2.BatchStatus.Name(batch.status).removeprefix("BATCH_STATUS_")
                print(f"{status} {done}/{counts.total}", flush=True)
            if batch.status != batch_pb2.BATCH_STATUS_COMPLETED:
                print(f"batch {batch.id} ended {batch_pb2.BatchStatus.Name(batch.status)}", file=sys.stderr)
                return 1

            ok = True
            for result in client.results(batch.id, follow=False):
                if result.error is not None:
                    ok = False
                    print(f"{result.custom_id} error {result.error['code']}: {result.error['message']}")
                    continue
                # A vLLM-style classify response: one entry in `data` per input text.
                first = result.response["data"][0]
                print(f"{result.custom_id} {first['label']} {first['confidence']:.2f}")
            return 0 if ok else 1
        except LoteError as error:
            print(f"lote: {error}", file=sys.stderr)
            for violation in error.field_violations:
                print(f"  {violation.field}: {violation.description}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
