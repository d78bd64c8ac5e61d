#!/usr/bin/env python3
"""A Fairway worker in Python, on the streaming Work RPC.

Generates the gRPC stubs from ../proto at start (needs grpcio and
grpcio-tools), subscribes to a queue, and acks every job it receives.

    python examples/python_worker.py --addr 127.0.0.1:50051 --queue emails
    python examples/python_worker.py --queue emails --count 3   # stop after 3 jobs

A real worker puts its job handling in handle(); raising an exception there
nacks the job, and the broker retries it with backoff.
"""
import argparse
import json
import os
import queue
import sys
import tempfile

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")


def load_stubs():
    """Compiles proto/fairway/v1/fairway.proto into a temp dir and imports it."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="fairway-stubs-")
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{wkt}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(PROTO_DIR, "fairway", "v1", "fairway.proto")])
    if rc != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    from fairway.v1 import fairway_pb2, fairway_pb2_grpc  # noqa: E402
    return fairway_pb2, fairway_pb2_grpc


def handle(job):
    """The work itself. Return normally to ack; raise to nack."""
    text = job.payload.decode("utf-8", errors="replace")
    if text.startswith("fail"):
        raise RuntimeError(f"cannot process {text!r}")
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default=os.environ.get("FAIRWAY_GRPC", "127.0.0.1:50051"))
    ap.add_argument("--queue", required=True)
    ap.add_argument("--count", type=int, default=0, help="stop after this many settled jobs (0 = run forever)")
    ap.add_argument("--max-in-flight", type=int, default=8)
    args = ap.parse_args()

    import grpc
    pb, pb_grpc = load_stubs()
    channel = grpc.insecure_channel(args.addr)
    stub = pb_grpc.WorkerServiceStub(channel)

    outbox = queue.Queue()
    outbox.put(pb.WorkRequest(subscribe=pb.Subscribe(
        queues=[args.queue], worker_id=f"python-{os.getpid()}", worker_version="example-1",
        max_in_flight=args.max_in_flight)))
    responses = stub.Work(iter(outbox.get, None))

    done = []
    settled = 0
    for resp in responses:
        kind = resp.WhichOneof("response")
        if kind == "delivery":
            d = resp.delivery
            try:
                result = handle(d.job)
                done.append({"id": d.job.id, "tenant": d.job.tenant, "attempt": d.job.attempt, "result": result})
                outbox.put(pb.WorkRequest(ack=pb.AckRequest(queue=d.job.queue, job_id=d.job.id, lease_id=d.lease_id)))
            except Exception as e:  # the job failed: nack, the broker retries with backoff
                outbox.put(pb.WorkRequest(nack=pb.NackRequest(queue=d.job.queue, job_id=d.job.id,
                                                             lease_id=d.lease_id, error=str(e))))
        elif kind == "outcome":
            if not resp.outcome.ok:
                print(f"settle failed: {resp.outcome.error}", file=sys.stderr)
            settled += 1
            if args.count and settled >= args.count:
                break
    outbox.put(None)  # closes our side of the stream
    channel.close()
    print(json.dumps({"acked": len(done), "jobs": done}))


if __name__ == "__main__":
    main()
