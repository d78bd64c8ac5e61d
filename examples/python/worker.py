#!/usr/bin/env python3
"""An example Fairway worker on fairway_worker.py (next to this file).

    python examples/python/worker.py --addr 127.0.0.1:50051 --queue emails
    python examples/python/worker.py --queue emails --count 3   # stop after 3 settled jobs

The handler reads the payload as text, so every path of the library can be
tried from the command line (and the tests drive it this way):

    "sleep:<seconds>[:<text>]"  works that long (heartbeats keep the lease), then acks
    "fail..."                   raises: nacked with the message, retried, dead-lettered
    "retry..."                  asks to be retried in 0.2 s on its first attempt
    anything else               acked, with the text as its result

It prints one JSON line per event on stdout: started and done around each
run of the handler; then, once the broker has answered, acked, nacked (to
be retried), dead (nacked and dead-lettered), released (given back
unstarted during a stop: not an attempt) or lost (the lease was lost, or
the broker refused the settle). When it exits it prints a summary line,
{"acked": N, "nacked": N, "dead": N, "released": N, "jobs": [the acked
jobs]}; logs go to stderr. SIGINT or SIGTERM drains: jobs not started are
released, the running ones finish and are acked, then it exits.
"""
import argparse
import json
import logging
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fairway_worker import Retry, Worker  # noqa: E402

_print_lock = threading.Lock()


def emit(event, **fields):
    """One JSON line per event, flushed: a reader sees it as it happens."""
    with _print_lock:
        print(json.dumps({"event": event, **fields}), flush=True)


def handle(job):
    """The work itself. Return normally to ack; raise to nack."""
    text = job.text
    emit("started", id=job.id, attempt=job.attempt, payload=text)
    if text.startswith("sleep:"):
        _, secs, *rest = text.split(":", 2)
        time.sleep(float(secs))
        return rest[0] if rest else text
    if text.startswith("fail"):
        raise RuntimeError(f"cannot process {text!r}")
    if text.startswith("retry") and job.attempt == 1:
        raise Retry("not yet: try again shortly", after=0.2)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default=os.environ.get("FAIRWAY_GRPC", "127.0.0.1:50051"))
    ap.add_argument("--queue", required=True, action="append", help="repeat to work on several queues")
    ap.add_argument("--concurrency", "--max-in-flight", type=int, default=4, help="jobs run at once")
    ap.add_argument("--lease", type=float, default=None, help="lease seconds (default: the job's or queue's)")
    ap.add_argument("--count", type=int, default=0, help="stop after this many settled jobs (0 = run until signalled)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    results = {}  # job id -> handler result, for the acked jobs' summary
    acked, nacked, dead, released = [], [], [], []
    worker = None

    def handler(job):
        try:
            results[job.id] = handle(job)
        finally:
            emit("done", id=job.id, attempt=job.attempt)

    def on_settled(job, kind, ok, error):
        if kind == "ack" and ok:
            acked.append({"id": job.id, "tenant": job.tenant, "attempt": job.attempt, "result": results.pop(job.id)})
            emit("acked", id=job.id, attempt=job.attempt)
        elif kind == "nack" and ok:
            nacked.append(job.id)
            emit("nacked", id=job.id, attempt=job.attempt)
        elif kind == "dead" and ok:
            dead.append(job.id)
            emit("dead", id=job.id, attempt=job.attempt)
        elif kind == "release" and ok:
            released.append(job.id)
            emit("released", id=job.id, attempt=job.attempt)
        else:
            results.pop(job.id, None)
            emit("lost", id=job.id, kind=kind, error=error)
        # Released jobs never ran: they do not count.
        if args.count and len(acked) + len(nacked) + len(dead) >= args.count:
            worker.stop()

    worker = Worker(handler, args.queue, args.addr, concurrency=args.concurrency, lease_duration=args.lease,
                    worker_version="example-1", on_settled=on_settled)
    worker.run()
    print(json.dumps({"acked": len(acked), "nacked": len(nacked), "dead": len(dead), "released": len(released),
                      "jobs": acked}), flush=True)


if __name__ == "__main__":
    main()
