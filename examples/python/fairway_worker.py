"""Fairway workers in Python: a small library on the streaming Work RPC.

    from fairway_worker import Worker, Retry

    def handle(job):
        send_email(job.text)    # return normally: the job is acked
                                # raise: it is nacked with the error message

    Worker(handle, queues=["emails"], addr="127.0.0.1:50051", concurrency=8).run()

What it does, and why:

* One Work stream per worker. The broker pushes a job whenever this worker
  holds fewer than `concurrency` unsettled ones (Subscribe.max_in_flight),
  so nothing polls and no job sits leased here while a thread is free
  elsewhere.
* `concurrency` handler threads. Handlers are plain blocking functions;
  threads suit the I/O-bound work jobs usually are.
* Heartbeats. A job that runs longer than its lease would be handed to
  another worker, so every job this worker holds has its lease extended
  when `heartbeat_fraction` (default 1/2) of it has passed. A handler never
  has to know its lease; lease length is a failure detector, not a limit.
* Failure. An exception nacks the job with its message: the broker retries
  it with backoff and dead-letters it after the queue's max_attempts.
  `Retry(after=...)` picks the delay instead; `DeadLetter` gives up now.
* Graceful shutdown. On SIGINT/SIGTERM (or `stop()`) the worker
  1. sends `drain` on its stream at once, so the broker sends it no more
     jobs (its answer, an Outcome of kind "drain", is the last word on
     deliveries: none follows it);
  2. gives back with `release` every job it was sent but has not started,
     including any that arrives before the drain is answered;
  3. lets the running jobs finish and sends their acks and nacks;
  4. waits for the broker's Outcomes of those settles and releases;
  5. then half-closes the stream and exits.
  The attempt rule is why: a delivery counts as an attempt unless it is
  released, and when a stream ends every delivery it still holds counts as
  one, started or not (the broker cannot tell an unstarted job from one
  whose handler crashed the worker). So a job this worker never ran spends
  none of its attempts, and closing before the acks are confirmed would
  hand the running jobs back as spent attempts. If the stream breaks while
  stopping, the acks, nacks and releases still owed go out again on the
  next stream (or, with no broker to reach, those leases simply expire). A
  second signal closes at once: what is still held goes back to ready,
  each counted as an attempt.
* Reconnect. If the broker goes away the worker reconnects with jittered
  exponential backoff. Running jobs carry on; their acks and heartbeats
  go out on the new stream (a broker that shut down gracefully keeps
  leases, so those acks still count). The new stream has a full window,
  so jobs it delivers while old ones still run wait for a free thread,
  their leases extended meanwhile; a stop releases those too, whichever
  stream delivered them.
* Logs. "connected to ADDR as WORKER_ID (version V)" at INFO once a stream
  is established (the broker's response headers arrived: the subscribe was
  accepted), and "dead-lettered job ID after N attempts" at WARNING when a
  nack's Outcome says the job went to the dead letters.

Needs grpcio and grpcio-tools. The stubs are generated from proto/ on first
use, into a cache dir named after the proto's hash, so the worker always
speaks the contract of the checkout it lives in.
"""

import hashlib
import importlib.metadata
import logging
import os
import queue as queue_mod
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

import grpc

__all__ = ["Worker", "Job", "Retry", "DeadLetter", "load_stubs"]

log = logging.getLogger("fairway_worker")

DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto"))
PROTO_FILE = os.path.join("fairway", "v1", "fairway.proto")

_stubs = None
_stubs_lock = threading.Lock()


def load_stubs(proto_dir=None):
    """Returns (fairway_pb2, fairway_pb2_grpc), compiling the proto the first time.

    The output directory is named after a hash of the proto and of the
    grpcio-tools version, so an edited contract or a new protoc is picked up
    and a warm start costs only an import. protoc writes into a temp dir that
    is renamed into place, so workers starting together never import a
    half-written module.
    """
    global _stubs
    with _stubs_lock:
        if _stubs is not None:
            return _stubs
        from grpc_tools import protoc
        import grpc_tools

        proto_dir = proto_dir or os.environ.get("FAIRWAY_PROTO_DIR") or DEFAULT_PROTO_DIR
        src = os.path.join(proto_dir, PROTO_FILE)
        with open(src, "rb") as f:
            digest = hashlib.sha256(f.read())
        digest.update(importlib.metadata.version("grpcio-tools").encode())
        cache = os.environ.get("FAIRWAY_STUB_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fairway", "python-stubs")
        out = os.path.join(cache, digest.hexdigest()[:16])
        if not os.path.exists(os.path.join(out, "fairway", "v1", "fairway_pb2_grpc.py")):
            try:
                os.makedirs(cache, exist_ok=True)
                tmp = tempfile.mkdtemp(prefix=".gen-", dir=cache)
            except OSError:  # no writable cache (read-only home): generate per process
                tmp = out = tempfile.mkdtemp(prefix="fairway-stubs-")
            wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
            rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={tmp}",
                              f"--grpc_python_out={tmp}", src])
            if rc != 0:
                raise RuntimeError(f"protoc failed on {src}")
            if tmp != out:
                try:
                    os.rename(tmp, out)
                except OSError:  # another process got there first with the same output
                    shutil.rmtree(tmp, ignore_errors=True)
        sys.path.insert(0, out)
        from fairway.v1 import fairway_pb2, fairway_pb2_grpc
        _stubs = (fairway_pb2, fairway_pb2_grpc)
        return _stubs


class Retry(Exception):
    """Raise from a handler to nack the job and have it run again after `after` seconds.

    The broker's own backoff is right for unexpected failures; this is for
    the ones that say when to come back (a rate limit's Retry-After, a
    resource that is known to be busy). `after=None` uses the queue's
    backoff. It still counts as an attempt.
    """

    def __init__(self, message="retry requested", after=None):
        super().__init__(message)
        self.after = after


class DeadLetter(Exception):
    """Raise from a handler to dead-letter the job now, whatever attempts remain.

    For failures no retry can fix (a malformed payload): retrying would only
    delay the moment someone looks at it.
    """


class Job:
    """One delivered job, as a handler sees it.

    `lease_lost` is set when the broker refused a heartbeat because the lease
    is gone (it expired while the worker was cut off, and the job may be
    running elsewhere). A long handler can check it to stop early; its
    result is then not acked, since the broker would refuse the ack.
    """

    def __init__(self, delivery):
        j = delivery.job
        self.id = j.id
        self.queue = j.queue
        self.tenant = j.tenant
        self.environment = j.environment
        self.payload = bytes(j.payload)
        self.headers = dict(j.headers)
        self.priority = j.priority
        self.attempt = j.attempt
        self.max_attempts = j.max_attempts
        self.dedup_key = j.dedup_key
        self.traceparent = j.traceparent
        self.lease_id = delivery.lease_id
        self.lease_lost = threading.Event()

    @property
    def text(self):
        """The payload decoded as UTF-8 (invalid bytes replaced)."""
        return self.payload.decode("utf-8", errors="replace")

    def __repr__(self):
        return f"Job(id={self.id!r}, queue={self.queue!r}, tenant={self.tenant!r}, attempt={self.attempt})"


# What becomes of a delivered job in this process.
_WAITING = "waiting"    # delivered, waiting for a free handler thread
_RUNNING = "running"    # its handler is running
_DONE = "done"          # handler returned; its ack or nack awaits the broker's Outcome
_RELEASING = "releasing"  # never started (the worker is stopping): its release awaits the broker's Outcome

# While stopping, how long to wait for the broker to answer `drain` before
# closing anyway (a broker without drain ignores it).
_DRAIN_WAIT = 5.0


class _Held:
    """A job this worker holds a lease on, with its lease bookkeeping (monotonic clock)."""

    def __init__(self, job, gen, lease_len, expires):
        self.job = job
        self.gen = gen  # the stream it was delivered on
        self.state = _WAITING
        self.lease_len = lease_len
        self.expires = expires
        self.next_beat = 0.0  # set by Worker._schedule_beat
        self.beat_gen = None  # stream an extend is outstanding on
        self.settle = None  # the ack/nack WorkRequest, once decided


class _Stream:
    """One Work stream: the request queue grpcio reads from, the call, and
    the requests still waiting for their Outcome.

    An Outcome names only the job and the kind of request, not the lease.
    A job can come back to this worker under a new lease while an answer
    about the old one is on its way, so each request is remembered with the
    lease holder it was sent for, and answers (which come in request order)
    are matched first in, first out per job and kind.
    """

    def __init__(self, gen):
        self.gen = gen
        self.outbox = queue_mod.Queue()
        self.call = None
        self.half_closed_at = None
        self.drain_sent_at = None  # when `drain` went out on this stream
        self.drained = False  # its Outcome came: no delivery follows
        self.pending = {}  # job id -> [(kind, _Held)] in the order sent

    def send(self, msg, kind=None, held=None):
        if self.half_closed_at is None:
            self.outbox.put(msg)
            if kind is not None:
                self.pending.setdefault(held.job.id, []).append((kind, held))

    def answered(self, job_id, kind):
        """The lease holder the oldest unanswered `kind` request for job_id was sent for."""
        waiting = self.pending.get(job_id, [])
        for i, (k, held) in enumerate(waiting):
            if k == kind:
                del waiting[i]
                if not waiting:
                    del self.pending[job_id]
                return held
        return None

    def drain_settled(self, now):
        """Sent `drain`, and it was answered (or the broker is taking too long)."""
        return self.drain_sent_at is not None and (self.drained or now - self.drain_sent_at > _DRAIN_WAIT)

    def half_close(self):
        if self.half_closed_at is None:
            self.half_closed_at = time.monotonic()
            self.outbox.put(None)  # ends the request iterator: grpcio half-closes


def _duration(seconds):
    from google.protobuf import duration_pb2  # protobuf comes with grpcio-tools

    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


class Worker:
    """Runs `handler(job)` for every job delivered from `queues`.

    handler:   called in a worker thread with a Job. Its return value is
               ignored; returning acks, raising nacks (see Retry, DeadLetter).
    queues:    a queue name or a list of them.
    addr:      host:port of the broker (default $FAIRWAY_GRPC or 127.0.0.1:50051).
    concurrency: jobs run at once; also the broker's max_in_flight for
               this worker, so it is never sent more than it can start.
    lease_duration: seconds each lease lasts (None = the job's or queue's).
               Short leases find dead workers fast; heartbeats keep live
               ones going.
    heartbeat_fraction: extend a lease when this share of it has passed.
    shutdown_timeout: seconds to wait for running jobs after stop() before
               closing anyway (None = wait for them).
    on_settled: called as on_settled(job, kind, ok, error) once the broker
               answered a settle or a release. kind is "ack"; "nack" (the
               job will run again); "dead" for a nack after which the job
               was dead-lettered (its attempts ran out, or DeadLetter);
               "release" for a job given back unstarted during a stop (not
               an attempt); or "lost" when the lease was lost and nothing
               was sent. ok is False (and error says why) when the broker
               refused the request. Runs on one of the library's threads:
               keep it short. It may call stop().
    """

    def __init__(self, handler, queues, addr=None, *, concurrency=4, worker_id=None, worker_version="",
                 lease_duration=None, heartbeat_fraction=0.5, shutdown_timeout=None, reconnect_min=0.1,
                 reconnect_max=10.0, on_settled=None, proto_dir=None):
        if not 0 < heartbeat_fraction < 1:
            raise ValueError("heartbeat_fraction must be between 0 and 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.handler = handler
        self.queues = [queues] if isinstance(queues, str) else list(queues)
        self.addr = addr or os.environ.get("FAIRWAY_GRPC", "127.0.0.1:50051")
        self.concurrency = concurrency
        self.worker_id = worker_id or f"python-{os.uname().nodename}-{os.getpid()}"
        self.worker_version = worker_version
        self.lease_duration = lease_duration
        self.heartbeat_fraction = heartbeat_fraction
        self.shutdown_timeout = shutdown_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.on_settled = on_settled
        self.pb, self.pb_grpc = load_stubs(proto_dir)

        # One lock for all shared state; notified on every change so the
        # heartbeat and connection threads re-check their conditions.
        self._cond = threading.Condition(threading.RLock())
        self._held = {}  # job id -> _Held
        self._stream = None  # the connected stream, if any
        self._gen = 0
        self._stop_requested_at = None
        self._forced = False
        self._finished = threading.Event()
        self._tasks = queue_mod.Queue()

    # ------------------------------------------------------------ lifecycle

    def run(self, install_signal_handlers=True):
        """Works until stop() (or SIGINT/SIGTERM) and the shutdown completes.

        Signal handlers are installed only when called from the main thread
        (Python allows no other), and the previous ones are restored on return.
        """
        previous = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        # Daemon threads: after a forced stop a handler that never returns
        # must not keep the process alive.
        threads = [threading.Thread(target=self._handler_loop, name=f"fairway-handler-{i}", daemon=True)
                   for i in range(self.concurrency)]
        threads.append(threading.Thread(target=self._heartbeat_loop, name="fairway-heartbeat", daemon=True))
        threads.append(threading.Thread(target=self._connection_loop, name="fairway-stream", daemon=True))
        for t in threads:
            t.start()
        try:
            # Wait in slices so signal handlers (which Python runs on the
            # main thread between bytecodes) get to run promptly.
            while not self._finished.wait(0.2):
                with self._cond:
                    since = self._stop_requested_at
                if since is not None and self.shutdown_timeout is not None \
                        and time.monotonic() - since > self.shutdown_timeout:
                    log.warning("shutdown timeout (%ss) passed with jobs still running; closing now",
                                self.shutdown_timeout)
                    self._force()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for _ in range(self.concurrency):
                self._tasks.put(None)

    def stop(self):
        """Starts a graceful shutdown: drain, release unstarted jobs, finish and ack running ones.

        Sends `drain` on the stream (no more deliveries), gives back every
        job delivered but not started with `release` (a release is not an
        attempt), lets the running jobs finish, waits for the broker to
        answer their acks/nacks and the releases, then closes the stream.
        Safe from any thread, a signal handler or on_settled. Returns at
        once; run() returns when the shutdown is complete.
        """
        with self._cond:
            if self._stop_requested_at is not None:
                return
            self._stop_requested_at = time.monotonic()
            # Drain before the releases: the broker applies a stream's
            # requests in order, so a released job cannot come back here.
            if self._stream is not None:
                self._send_drain(self._stream)
            running = sum(1 for h in self._held.values() if h.state == _RUNNING)
            waiting = [h for h in self._held.values() if h.state == _WAITING]
            log.info("stopping: %d job(s) running will finish first; releasing %d not started",
                     running, len(waiting))
            for h in waiting:
                self._release(h)
            self._maybe_half_close()
            self._cond.notify_all()

    def _force(self):
        """Closes the stream now: the broker puts this worker's leases back to ready."""
        with self._cond:
            self._forced = True
            stream = self._stream
            self._cond.notify_all()
        if stream is not None and stream.call is not None:
            stream.call.cancel()

    def _on_signal(self, signum, _frame):
        if self._stop_requested_at is None:
            log.info("%s: draining; finishing running jobs (again to quit now)", signal.Signals(signum).name)
            # Not stop() directly: the signal may interrupt this very thread
            # inside a locked section, and the lock is not safe to re-enter
            # from there in every case.
            threading.Thread(target=self.stop, daemon=True).start()
        else:
            log.warning("%s again: closing now; unfinished jobs go back to the queue",
                        signal.Signals(signum).name)
            threading.Thread(target=self._force, daemon=True).start()

    # ------------------------------------------------------------ handlers

    def _handler_loop(self):
        while True:
            h = self._tasks.get()
            if h is None:
                return
            with self._cond:
                if h.state != _WAITING or h.job.lease_lost.is_set():
                    continue
                h.state = _RUNNING
            self._run_one(h)

    def _run_one(self, h):
        pb, job = self.pb, h.job
        try:
            self.handler(job)
            msg = pb.WorkRequest(ack=pb.AckRequest(queue=job.queue, job_id=job.id, lease_id=job.lease_id))
        except Retry as e:
            nack = pb.NackRequest(queue=job.queue, job_id=job.id, lease_id=job.lease_id, error=str(e))
            if e.after is not None:
                after = e.after.total_seconds() if hasattr(e.after, "total_seconds") else float(e.after)
                nack.retry_after.CopyFrom(_duration(max(0.0, after)))
            msg = pb.WorkRequest(nack=nack)
        except DeadLetter as e:
            msg = pb.WorkRequest(nack=pb.NackRequest(queue=job.queue, job_id=job.id, lease_id=job.lease_id,
                                                     error=str(e) or type(e).__name__, dead=True))
        except Exception as e:  # noqa: BLE001 - any failure of the job is the broker's to retry
            log.warning("job %s (attempt %d) failed: %s: %s", job.id, job.attempt, type(e).__name__, e,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            msg = pb.WorkRequest(nack=pb.NackRequest(queue=job.queue, job_id=job.id, lease_id=job.lease_id,
                                                     error=f"{type(e).__name__}: {e}"))
        lost = False
        with self._cond:
            h.state = _DONE
            if job.lease_lost.is_set():
                # The broker already refused this lease (or leased the job
                # again): an ack would be refused too.
                self._forget(h)
                lost = True
            else:
                h.settle = msg
                self._send_settle(h)
            self._maybe_half_close()
            self._cond.notify_all()
        if lost:
            self._report(job, "lost", False, "the lease was lost before the job finished")

    def _report(self, job, kind, ok, error):
        if self.on_settled is not None:
            try:
                self.on_settled(job, kind, ok, error)
            except Exception:  # noqa: BLE001 - a faulty callback must not kill the stream reader
                log.exception("on_settled raised")

    # ------------------------------------------------------------ state (callers hold _cond)

    def _release(self, h):
        """Gives back a job that never started: ready again at once, and not an attempt.

        Whichever stream delivered it: a broker that restarted keeps leases,
        so one from an older stream is released on the current one too.
        Left to the stream's end instead, it would count as an attempt.
        """
        h.state = _RELEASING
        pb, job = self.pb, h.job
        h.settle = pb.WorkRequest(release=pb.ReleaseRequest(queue=job.queue, job_id=job.id, lease_id=job.lease_id))
        self._send_settle(h)

    def _send_drain(self, s):
        if s.drain_sent_at is None and s.half_closed_at is None:
            s.drain_sent_at = time.monotonic()
            s.send(self.pb.WorkRequest(drain=self.pb.Drain()))

    def _send_settle(self, h):
        s = self._stream
        if s is not None and s.half_closed_at is None:
            s.send(h.settle, h.settle.WhichOneof("request"), h)

    def _forget(self, h):
        if self._held.get(h.job.id) is h:
            del self._held[h.job.id]

    def _needs_broker(self):
        """While stopping: does any job still need the stream (heartbeats, a settle or a release)?"""
        now = time.monotonic()
        for h in self._held.values():
            if h.state == _RUNNING:
                return True
            # A settle is worth waiting for only while its lease can still be
            # alive; past that the broker has already taken the job back.
            if h.settle is not None and now < h.expires:
                return True
        return False

    def _maybe_half_close(self):
        s = self._stream
        if self._stop_requested_at is None or s is None or s.half_closed_at is not None:
            return
        # Only once `drain` is answered: a delivery still on its way would
        # otherwise arrive on a closing stream, too late to release, and
        # count as an attempt when the stream ends.
        if s.drain_settled(time.monotonic()) and not self._needs_broker():
            # Ending our side makes the broker end the stream once it has
            # applied everything sent before, so the acks are never lost.
            s.half_close()

    def _schedule_beat(self, h, now):
        h.next_beat = now + h.lease_len * self.heartbeat_fraction

    # ------------------------------------------------------------ heartbeats

    def _heartbeat_loop(self):
        pb = self.pb
        with self._cond:
            while not self._finished.is_set():
                now = time.monotonic()
                wake = now + 1.0
                s = self._stream
                for h in self._held.values():
                    if h.state not in (_WAITING, _RUNNING) or h.job.lease_lost.is_set():
                        continue
                    if s is not None and s.half_closed_at is None and h.beat_gen != s.gen and now >= h.next_beat:
                        j = h.job
                        s.send(pb.WorkRequest(extend=pb.ExtendLeaseRequest(
                            queue=j.queue, job_id=j.id, lease_id=j.lease_id)), "extend", h)
                        h.beat_gen = s.gen
                    if h.beat_gen is None:
                        wake = min(wake, h.next_beat)
                # While stopping: leases run out and an unanswered drain
                # times out with no message to wake anyone.
                self._maybe_half_close()
                if s is not None and self._stop_requested_at is not None and s.half_closed_at is None:
                    wake = min(wake, now + 0.5)
                # A stream that half-closed without ending would stall the
                # shutdown: give it a few seconds, then cut it.
                if s is not None and s.half_closed_at is not None and now - s.half_closed_at > 5:
                    if s.call is not None:
                        s.call.cancel()
                self._cond.wait(max(0.01, wake - now))

    # ------------------------------------------------------------ the stream

    def _connection_loop(self):
        backoff = self.reconnect_min
        try:
            while True:
                with self._cond:
                    if self._forced or (self._stop_requested_at is not None and not self._needs_broker()):
                        return
                started = time.monotonic()
                heard, err = self._run_stream()
                with self._cond:
                    if self._forced or (self._stop_requested_at is not None and not self._needs_broker()):
                        return
                # A stream that worked for a while (or delivered anything)
                # means the broker is back: start the backoff over.
                if heard or time.monotonic() - started > 10:
                    backoff = self.reconnect_min
                delay = backoff * random.uniform(0.5, 1.0)
                log.warning("stream to %s ended (%s); reconnecting in %.1fs", self.addr, err, delay)
                deadline = time.monotonic() + delay
                with self._cond:
                    while not self._forced and time.monotonic() < deadline:
                        self._cond.wait(deadline - time.monotonic())
                backoff = min(backoff * 2, self.reconnect_max)
        finally:
            self._finished.set()
            with self._cond:
                self._cond.notify_all()

    def _run_stream(self):
        """Opens one Work stream and reads it until it ends. Returns (heard anything, why it ended)."""
        pb = self.pb
        sub = pb.Subscribe(queues=self.queues, worker_id=self.worker_id, worker_version=self.worker_version,
                           max_in_flight=self.concurrency)
        if self.lease_duration is not None:
            sub.lease_duration.CopyFrom(_duration(self.lease_duration))
        # A fresh channel per attempt: grpc's own channel backoff (up to
        # two minutes) would otherwise override ours after an outage.
        channel = grpc.insecure_channel(self.addr, options=[("grpc.max_receive_message_length", -1)])
        with self._cond:
            self._gen += 1
            s = _Stream(self._gen)
            s.send(pb.WorkRequest(subscribe=sub))
            s.call = self.pb_grpc.WorkerServiceStub(channel).Work(iter(s.outbox.get, None))
            self._stream = s
            if self._stop_requested_at is not None:
                # Reconnected while stopping (to settle what still runs):
                # this stream must deliver nothing new either.
                self._send_drain(s)
            # Settles and releases decided while disconnected (or sent on a
            # stream that broke before its Outcome came) go out first on the
            # new one.
            for h in self._held.values():
                if h.settle is not None:
                    self._send_settle(h)
            self._maybe_half_close()
            self._cond.notify_all()
        heard, err = False, "closed by the broker"
        try:
            # Established once the broker's response headers arrive: it
            # answers them only after accepting the subscribe. Blocks until
            # then, or until the call fails (then it returns at once).
            s.call.initial_metadata()
            if not s.call.done():
                heard = True
                log.info("connected to %s as %s (version %s)", self.addr, self.worker_id,
                         self.worker_version or "none")
                with self._cond:
                    if s.drain_sent_at is not None and not s.drained:
                        # The wait for the drain's answer starts now that the
                        # broker reads this stream.
                        s.drain_sent_at = time.monotonic()
            for resp in s.call:
                heard = True
                self._on_response(s, resp)
        except grpc.RpcError as e:
            err = f"{e.code().name}: {e.details()}"
        finally:
            with self._cond:
                self._stream = None
                s.half_close()  # unblocks grpcio's request thread
                for h in self._held.values():
                    if h.beat_gen == s.gen:
                        h.beat_gen = None  # no answer will come: extend again on the next stream
                self._cond.notify_all()
            channel.close()
        return heard, err

    def _on_response(self, s, resp):
        kind = resp.WhichOneof("response")
        if kind == "delivery":
            self._on_delivery(s, resp.delivery)
        elif kind == "outcome":
            self._on_outcome(s, resp.outcome)

    def _on_delivery(self, s, d):
        job = Job(d)
        now = time.monotonic()
        remaining = d.lease_expires_at.seconds + d.lease_expires_at.nanos / 1e9 - time.time()
        # The lease's length decides the heartbeat period. The worker's own
        # setting or the job's is exact; else (the queue default) the time
        # left on a fresh lease is the best measure there is.
        if self.lease_duration is not None:
            lease_len = self.lease_duration
        elif d.job.HasField("lease_duration"):
            lease_len = d.job.lease_duration.seconds + d.job.lease_duration.nanos / 1e9
        else:
            lease_len = max(0.001, remaining)
        h = _Held(job, s.gen, lease_len, now + max(0.0, remaining))
        self._schedule_beat(h, now)
        with self._cond:
            old = self._held.get(job.id)
            if old is not None:
                # Leased again: the old lease expired (say, while the broker
                # was unreachable). Its handler may still be running; its
                # result must not be acked, and it needs no more heartbeats.
                log.warning("job %s delivered again (attempt %d) while its attempt %d was held here",
                            job.id, job.attempt, old.job.attempt)
                old.job.lease_lost.set()
            self._held[job.id] = h
            if self._stop_requested_at is not None:
                # Sent before the broker saw our drain: give it back unstarted.
                self._release(h)
            else:
                self._tasks.put(h)
            self._cond.notify_all()

    def _on_outcome(self, s, o):
        report = None
        with self._cond:
            if o.kind == "drain":
                if not o.ok:
                    log.warning("drain refused (%s: %s)", o.code, o.error)
                s.drained = True  # either way: no delivery follows it
                self._maybe_half_close()
                self._cond.notify_all()
                return
            h = s.answered(o.job_id, o.kind)
            if h is None:
                return
            current = self._held.get(o.job_id) is h
            now = time.monotonic()
            if o.kind == "extend":
                h.beat_gen = None
                if not current or h.state not in (_WAITING, _RUNNING):
                    pass  # about a lease this worker no longer holds
                elif o.ok:
                    remaining = o.lease_expires_at.seconds + o.lease_expires_at.nanos / 1e9 - time.time()
                    h.expires = now + max(0.0, remaining)
                    self._schedule_beat(h, now)
                elif o.code in ("FAILED_PRECONDITION", "NOT_FOUND"):
                    log.warning("job %s: lease lost (%s); it may run again elsewhere", o.job_id, o.error)
                    h.job.lease_lost.set()
                    if h.state == _WAITING:
                        self._forget(h)
                else:
                    log.warning("job %s: extend failed (%s: %s); trying again", o.job_id, o.code, o.error)
                    h.next_beat = now + min(1.0, h.lease_len * (1 - self.heartbeat_fraction) / 2)
            elif o.kind in ("ack", "nack", "release"):
                self._forget(h)
                kind = o.kind
                if not o.ok:
                    # After a reconnect this can be an ack the broker already
                    # applied on the old stream, or a lease that expired.
                    log.warning("job %s: %s refused (%s: %s)", o.job_id, o.kind, o.code, o.error)
                elif kind == "nack" and o.state == self.pb.JOB_STATE_DEAD:
                    log.warning("dead-lettered job %s after %d attempts", o.job_id, h.job.attempt)
                    kind = "dead"
                report = (h.job, kind, o.ok, o.error)
            self._maybe_half_close()
            self._cond.notify_all()
        if report is not None:
            self._report(*report)
