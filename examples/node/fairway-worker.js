'use strict';
/**
 * Fairway workers in Node: a small library on the streaming Work RPC.
 *
 *   const { Worker, Retry } = require('./fairway-worker');
 *
 *   const worker = new Worker(async (job) => {
 *     await sendEmail(job.text);      // resolve: the job is acked
 *   }, { queues: ['emails'], addr: '127.0.0.1:50051', concurrency: 8 });
 *   await worker.run();               // until SIGINT/SIGTERM or worker.stop()
 *
 * What it does, and why (the same as examples/python/fairway_worker.py):
 *
 * - One Work stream per worker. The broker pushes a job whenever this
 *   worker holds fewer than `concurrency` unsettled ones
 *   (Subscribe.max_in_flight), so nothing polls and no job sits leased here
 *   while a slot is free elsewhere.
 * - `concurrency` handlers at once. Handlers are async functions; a
 *   CPU-bound one blocks the event loop, heartbeats included, so move such
 *   work to a worker thread.
 * - Heartbeats. A job that runs longer than its lease would be handed to
 *   another worker, so every job this worker holds has its lease extended
 *   when `heartbeatFraction` (default 1/2) of it has passed. Lease length is
 *   a failure detector, not a time limit.
 * - Failure. A thrown error (or rejected promise) nacks the job with its
 *   message: the broker retries it with backoff and dead-letters it after
 *   the queue's max_attempts. `Retry` picks the delay; `DeadLetter` gives up.
 * - Graceful shutdown. On SIGINT/SIGTERM (or stop()) the worker
 *   1. sends `drain` on its stream at once, so the broker sends it no more
 *      jobs (its answer, an Outcome of kind 'drain', is the last word on
 *      deliveries: none follows it);
 *   2. gives back with `release` every job it was sent but has not
 *      started, including any that arrives before the drain is answered;
 *   3. lets the running jobs finish and sends their acks and nacks;
 *   4. waits for the broker's Outcomes of those settles and releases;
 *   5. then half-closes the stream and run() resolves.
 *   The attempt rule is why: a delivery counts as an attempt unless it is
 *   released, and when a stream ends every delivery it still holds counts
 *   as one, started or not (the broker cannot tell an unstarted job from
 *   one whose handler crashed the worker). So a job this worker never ran
 *   spends none of its attempts, and closing before the acks are confirmed
 *   would hand the running jobs back as spent attempts. If the stream
 *   breaks while stopping, the acks, nacks and releases still owed go out
 *   again on the next stream (or, with no broker to reach, those leases
 *   simply expire). A second signal closes at once: what is still held
 *   goes back to ready, each counted as an attempt.
 * - Reconnect. If the broker goes away the worker reconnects with jittered
 *   exponential backoff. Running jobs carry on; their acks and heartbeats go
 *   out on the new stream (a broker that shut down gracefully keeps leases).
 *   The new stream has a full window, so jobs it delivers while old ones
 *   still run wait for a free slot, their leases extended meanwhile; a stop
 *   releases those too, whichever stream delivered them.
 * - Logs. "connected to ADDR as WORKER_ID (version V)" once a stream is
 *   established (the broker's response headers arrived: the subscribe was
 *   accepted), and a warning "dead-lettered job ID after N attempts" when a
 *   nack's Outcome says the job went to the dead letters.
 *
 * The proto is loaded from proto/ at start with @grpc/proto-loader, so the
 * worker always speaks the contract of the checkout it lives in.
 */
const { EventEmitter } = require('node:events');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const PROTO_FILE = path.join('fairway', 'v1', 'fairway.proto');

const loaded = new Map();

/** The fairway.v1 package (service constructors), loaded once per proto dir. */
function loadFairway(protoDir) {
  const dir = protoDir || process.env.FAIRWAY_PROTO_DIR || DEFAULT_PROTO_DIR;
  if (!loaded.has(dir)) {
    const def = protoLoader.loadSync(path.join(dir, PROTO_FILE), {
      includeDirs: [dir],
      // Field names as in the proto, so code reads like the contract.
      keepCase: true,
      // uint64 counters and Timestamp seconds can pass 2^53.
      longs: String,
      enums: String,
      defaults: true,
      // Adds the name of the set oneof member (e.g. `response: 'delivery'`).
      oneofs: true,
    });
    loaded.set(dir, grpc.loadPackageDefinition(def).fairway.v1);
  }
  return loaded.get(dir);
}

/**
 * Throw from a handler to nack the job and run it again after `afterMs`.
 *
 * The broker's backoff suits unexpected failures; this is for those that
 * say when to come back (a rate limit's Retry-After). No `afterMs` uses the
 * queue's backoff. It still counts as an attempt.
 */
class Retry extends Error {
  constructor(message = 'retry requested', { afterMs } = {}) {
    super(message);
    this.name = 'Retry';
    this.afterMs = afterMs;
  }
}

/**
 * Throw from a handler to dead-letter the job now, whatever attempts
 * remain: for failures no retry can fix, such as a malformed payload.
 */
class DeadLetter extends Error {
  constructor(message) {
    super(message);
    this.name = 'DeadLetter';
  }
}

/**
 * One delivered job, as a handler sees it.
 *
 * `signal` aborts when the lease is lost (the broker refused a heartbeat:
 * the lease expired while the worker was cut off and the job may run
 * elsewhere) or on a forced shutdown. Pass it to fetch() and the like to
 * stop early; the result of a job whose lease is lost is not acked, since
 * the broker would refuse the ack.
 */
class Job {
  constructor(delivery) {
    const j = delivery.job;
    this.id = j.id;
    this.queue = j.queue;
    this.tenant = j.tenant;
    this.environment = j.environment;
    this.payload = j.payload;
    this.headers = j.headers;
    this.priority = j.priority;
    this.attempt = j.attempt;
    this.maxAttempts = j.max_attempts;
    this.dedupKey = j.dedup_key;
    this.traceparent = j.traceparent;
    this.leaseId = delivery.lease_id;
    this._abort = new AbortController();
    this.signal = this._abort.signal;
  }

  /** The payload decoded as UTF-8. */
  get text() {
    return this.payload.toString('utf8');
  }

  get leaseLost() {
    return this.signal.aborted;
  }
}

// What becomes of a delivered job in this process.
const WAITING = 'waiting'; // delivered, waiting for a free slot
const RUNNING = 'running'; // its handler is running
const DONE = 'done'; // handler settled; its ack or nack awaits the broker's Outcome
const RELEASING = 'releasing'; // never started (the worker is stopping): its release awaits the broker's Outcome

// While stopping, how long to wait for the broker to answer `drain` before
// closing anyway (a broker without drain ignores it).
const DRAIN_WAIT_MS = 5000;

function millisOf(ts) {
  return Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6);
}

function duration(ms) {
  const whole = Math.floor(ms / 1000);
  return { seconds: whole, nanos: Math.round((ms - whole * 1000) * 1e6) };
}

/**
 * One Work stream and the requests still waiting for their Outcome.
 *
 * An Outcome names only the job and the kind of request, not the lease. A
 * job can come back to this worker under a new lease while an answer about
 * the old one is on its way, so each request is remembered with the lease
 * holder it was sent for, and answers (which come in request order) are
 * matched first in, first out per job and kind.
 */
class Stream {
  constructor(gen, call) {
    this.gen = gen;
    this.call = call;
    this.halfClosedAt = null;
    this.drainSentAt = null; // when `drain` went out on this stream
    this.drained = false; // its Outcome came: no delivery follows
    this.pending = new Map(); // job id -> [[kind, held]] in the order sent
  }

  /** Sent `drain`, and it was answered (or the broker is taking too long). */
  drainSettled(now) {
    return this.drainSentAt !== null && (this.drained || now - this.drainSentAt > DRAIN_WAIT_MS);
  }

  send(msg, kind, held) {
    if (this.halfClosedAt !== null) return;
    this.call.write(msg);
    if (kind) {
      const list = this.pending.get(held.job.id) || [];
      list.push([kind, held]);
      this.pending.set(held.job.id, list);
    }
  }

  answered(jobId, kind) {
    const list = this.pending.get(jobId) || [];
    const i = list.findIndex(([k]) => k === kind);
    if (i < 0) return null;
    const [[, held]] = list.splice(i, 1);
    if (list.length === 0) this.pending.delete(jobId);
    return held;
  }

  halfClose() {
    if (this.halfClosedAt === null) {
      this.halfClosedAt = Date.now();
      this.call.end();
    }
  }
}

/**
 * Runs `handler(job)` for every job delivered from `queues`.
 *
 * Options:
 *   queues            queue names (required)
 *   addr              host:port of the broker (default $FAIRWAY_GRPC or 127.0.0.1:50051)
 *   concurrency       jobs run at once; also the broker's max_in_flight for this worker
 *   leaseMs           lease length (default: the job's or the queue's)
 *   heartbeatFraction extend a lease when this share of it has passed (default 0.5)
 *   shutdownTimeoutMs after stop(), close anyway after this long (default: wait)
 *   handleSignals     stop on SIGINT/SIGTERM, close on a second one (default true)
 *   logger            { info(msg), warn(msg) } (default: stderr)
 *
 * Emits 'settled' (job, kind, ok, error) once the broker answered a settle
 * or a release. kind is 'ack'; 'nack' (the job will run again); 'dead' for
 * a nack after which the job was dead-lettered (its attempts ran out, or
 * DeadLetter); 'release' for a job given back unstarted during a stop (not
 * an attempt); or 'lost' when the lease was lost and nothing was sent. ok
 * is false (and error says why) when the broker refused the request. A
 * listener may call stop().
 */
class Worker extends EventEmitter {
  constructor(handler, opts = {}) {
    super();
    const queues = typeof opts.queues === 'string' ? [opts.queues] : opts.queues;
    if (!queues || queues.length === 0) throw new Error('name at least one queue');
    this.handler = handler;
    this.queues = queues;
    this.addr = opts.addr || process.env.FAIRWAY_GRPC || '127.0.0.1:50051';
    this.concurrency = opts.concurrency || 4;
    this.workerId = opts.workerId || `node-${os.hostname()}-${process.pid}`;
    this.workerVersion = opts.workerVersion || '';
    this.leaseMs = opts.leaseMs;
    this.heartbeatFraction = opts.heartbeatFraction || 0.5;
    if (!(this.heartbeatFraction > 0 && this.heartbeatFraction < 1)) {
      throw new Error('heartbeatFraction must be between 0 and 1');
    }
    this.shutdownTimeoutMs = opts.shutdownTimeoutMs;
    this.reconnectMinMs = opts.reconnectMinMs || 100;
    this.reconnectMaxMs = opts.reconnectMaxMs || 10_000;
    this.handleSignals = opts.handleSignals !== false;
    // Logs go to stderr: stdout is the application's.
    this.log = opts.logger || {
      info: (m) => console.error(`fairway-worker: ${m}`),
      warn: (m) => console.error(`fairway-worker: warning: ${m}`),
    };
    this.fairway = loadFairway(opts.protoDir);

    this._held = new Map(); // job id -> held
    this._waiting = []; // held, in delivery order
    this._running = 0;
    this._stream = null;
    this._gen = 0;
    this._stopping = false;
    this._forced = false;
    this._timer = null;
    this._shutdownTimer = null;
    this._wakeReconnect = null;
  }

  /** Works until stop() (or a signal) and the shutdown completes. */
  async run() {
    const onSignal = (sig) => {
      if (!this._stopping) {
        this.log.info(`${sig}: draining; finishing running jobs (again to quit now)`);
        this.stop();
      } else {
        this.log.warn(`${sig} again: closing now; unfinished jobs go back to the queue`);
        this._force();
      }
    };
    if (this.handleSignals) {
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
    }
    try {
      await this._connectionLoop();
    } finally {
      clearTimeout(this._timer);
      clearTimeout(this._shutdownTimer);
      if (this.handleSignals) {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    }
  }

  /**
   * Starts a graceful shutdown: sends `drain` on the stream (no more
   * deliveries), gives back every job delivered but not started with
   * `release` (a release is not an attempt), lets the running jobs finish,
   * waits for the broker to answer their acks/nacks and the releases, then
   * closes the stream. Returns at once; run() resolves when the shutdown is
   * complete.
   */
  stop() {
    if (this._stopping) return;
    this._stopping = true;
    // Drain before the releases: the broker applies a stream's requests in
    // order, so a released job cannot come back here.
    if (this._stream) this._sendDrain(this._stream);
    const waiting = this._waiting.filter((h) => h.state === WAITING && this._held.get(h.job.id) === h);
    this.log.info(`stopping: ${this._running} job(s) running will finish first; releasing ${waiting.length} not started`);
    for (const h of waiting) this._release(h);
    this._waiting = [];
    if (this.shutdownTimeoutMs !== undefined) {
      this._shutdownTimer = setTimeout(() => {
        this.log.warn(`shutdown timeout (${this.shutdownTimeoutMs} ms) passed with jobs running; closing now`);
        this._force();
      }, this.shutdownTimeoutMs);
      this._shutdownTimer.unref();
    }
    this._changed();
  }

  /** Closes the stream now: the broker puts this worker's leases back to ready. */
  _force() {
    this._forced = true;
    for (const h of this._held.values()) h.job._abort.abort(new Error('worker closed'));
    if (this._stream) this._stream.call.cancel();
    this._changed();
  }

  // ---------------------------------------------------------------- handlers

  _pump() {
    while (!this._stopping && this._running < this.concurrency && this._waiting.length > 0) {
      const h = this._waiting.shift();
      if (h.state !== WAITING || h.job.leaseLost) continue;
      h.state = RUNNING;
      this._running++;
      this._runOne(h);
    }
  }

  async _runOne(h) {
    const { job } = h;
    const target = { queue: job.queue, job_id: job.id, lease_id: job.leaseId };
    let msg;
    try {
      await this.handler(job);
      msg = { ack: target };
    } catch (e) {
      if (e instanceof Retry) {
        const nack = { ...target, error: e.message };
        if (e.afterMs !== undefined) nack.retry_after = duration(Math.max(0, e.afterMs));
        msg = { nack };
      } else if (e instanceof DeadLetter) {
        msg = { nack: { ...target, error: e.message || 'DeadLetter', dead: true } };
      } else {
        const error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
        this.log.warn(`job ${job.id} (attempt ${job.attempt}) failed: ${error}`);
        msg = { nack: { ...target, error } };
      }
    }
    this._running--;
    h.state = DONE;
    if (job.leaseLost) {
      // The broker already refused this lease (or leased the job again):
      // an ack would be refused too.
      this._forget(h);
      this._report(job, 'lost', false, 'the lease was lost before the job finished');
    } else {
      h.settle = msg;
      this._sendSettle(h);
    }
    this._changed();
  }

  _report(job, kind, ok, error) {
    try {
      this.emit('settled', job, kind, ok, error);
    } catch (e) {
      this.log.warn(`a 'settled' listener threw: ${e && e.stack}`);
    }
  }

  // ---------------------------------------------------------------- state

  /**
   * Gives back a job that never started: ready again at once, and not an
   * attempt. Whichever stream delivered it: a broker that restarted keeps
   * leases, so one from an older stream is released on the current one
   * too. Left to the stream's end instead, it would count as an attempt.
   */
  _release(h) {
    h.state = RELEASING;
    const { job } = h;
    h.settle = { release: { queue: job.queue, job_id: job.id, lease_id: job.leaseId } };
    this._sendSettle(h);
  }

  _sendDrain(s) {
    if (s.drainSentAt === null && s.halfClosedAt === null) {
      s.drainSentAt = Date.now();
      s.send({ drain: {} });
    }
  }

  _sendSettle(h) {
    const s = this._stream;
    if (s && s.halfClosedAt === null) s.send(h.settle, Object.keys(h.settle)[0], h);
  }

  _forget(h) {
    if (this._held.get(h.job.id) === h) this._held.delete(h.job.id);
  }

  /** While stopping: does any job still need the stream (heartbeats, a settle or a release)? */
  _needsBroker() {
    const now = Date.now();
    for (const h of this._held.values()) {
      if (h.state === RUNNING) return true;
      // A settle is worth waiting for only while its lease can be alive;
      // past that the broker has already taken the job back.
      if (h.settle && now < h.expires) return true;
    }
    return false;
  }

  /** Re-checks everything that waits on state: run once after every change. */
  _changed() {
    this._pump();
    const s = this._stream;
    // Only once `drain` is answered: a delivery still on its way would
    // otherwise arrive on a closing stream, too late to release, and count
    // as an attempt when the stream ends.
    if (this._stopping && s && s.halfClosedAt === null && s.drainSettled(Date.now()) && !this._needsBroker()) {
      // Ending our side makes the broker end the stream once it has applied
      // everything sent before, so the acks are never lost.
      s.halfClose();
    }
    if (this._wakeReconnect && (this._forced || (this._stopping && !this._needsBroker()))) {
      this._wakeReconnect();
    }
    this._heartbeat();
  }

  // ---------------------------------------------------------------- heartbeats

  _heartbeat() {
    clearTimeout(this._timer);
    const now = Date.now();
    let wake = now + 1000;
    const s = this._stream;
    for (const h of this._held.values()) {
      if ((h.state !== WAITING && h.state !== RUNNING) || h.job.leaseLost) continue;
      if (s && s.halfClosedAt === null && h.beatGen !== s.gen && now >= h.nextBeat) {
        const { job } = h;
        s.send({ extend: { queue: job.queue, job_id: job.id, lease_id: job.leaseId } }, 'extend', h);
        h.beatGen = s.gen;
      }
      if (h.beatGen === null) wake = Math.min(wake, h.nextBeat);
    }
    // A stream that half-closed without ending would stall the shutdown:
    // give it a few seconds, then cut it.
    if (s && s.halfClosedAt !== null && now - s.halfClosedAt > 5000) s.call.cancel();
    // While stopping, leases run out and an unanswered drain times out with
    // no message to wake anyone: look again soon.
    const stopping = this._stopping && s && s.halfClosedAt === null;
    if (stopping) wake = Math.min(wake, now + 500);
    if (this._held.size > 0 || (s && s.halfClosedAt !== null) || stopping) {
      this._timer = setTimeout(() => this._changed(), Math.max(1, wake - now));
    }
  }

  // ---------------------------------------------------------------- the stream

  _done() {
    return this._forced || (this._stopping && !this._needsBroker());
  }

  async _connectionLoop() {
    let backoff = this.reconnectMinMs;
    while (!this._done()) {
      const started = Date.now();
      const { heard, err } = await this._runStream();
      if (this._done()) return;
      // A stream that worked for a while (or delivered anything) means the
      // broker is back: start the backoff over.
      if (heard || Date.now() - started > 10_000) backoff = this.reconnectMinMs;
      const delay = Math.round(backoff * (0.5 + Math.random() / 2));
      this.log.warn(`stream to ${this.addr} ended (${err}); reconnecting in ${delay} ms`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, delay);
        this._wakeReconnect = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this._wakeReconnect = null;
      backoff = Math.min(backoff * 2, this.reconnectMaxMs);
    }
  }

  /** Opens one Work stream and reads it until it ends. */
  _runStream() {
    // A fresh client per attempt: grpc's own channel backoff (up to two
    // minutes) would otherwise override ours after an outage.
    const client = new this.fairway.WorkerService(this.addr, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': -1,
    });
    const call = client.Work();
    const s = new Stream(++this._gen, call);
    const subscribe = {
      queues: this.queues,
      worker_id: this.workerId,
      worker_version: this.workerVersion,
      max_in_flight: this.concurrency,
    };
    if (this.leaseMs !== undefined) subscribe.lease_duration = duration(this.leaseMs);
    s.send({ subscribe });
    this._stream = s;
    // Reconnected while stopping (to settle what still runs): this stream
    // must deliver nothing new either.
    if (this._stopping) this._sendDrain(s);
    // Settles and releases decided while disconnected (or sent on a stream
    // that broke before its Outcome came) go out first on the new one.
    for (const h of this._held.values()) if (h.settle) this._sendSettle(h);
    return new Promise((resolve) => {
      let heard = false;
      let finished = false;
      const finish = (err) => {
        if (finished) return;
        finished = true;
        if (this._stream === s) this._stream = null;
        s.halfClose();
        for (const h of this._held.values()) {
          if (h.beatGen === s.gen) h.beatGen = null; // no answer will come: extend on the next stream
        }
        client.close();
        this._changed();
        resolve({ heard, err });
      };
      // Established once the broker's response headers arrive: it sends
      // them only after accepting the subscribe (a refusal comes as
      // trailers only, without this event).
      call.on('metadata', () => {
        heard = true;
        this.log.info(`connected to ${this.addr} as ${this.workerId} (version ${this.workerVersion || 'none'})`);
        // The wait for the drain's answer starts now that the broker reads
        // this stream.
        if (s.drainSentAt !== null && !s.drained) s.drainSentAt = Date.now();
      });
      call.on('data', (resp) => {
        heard = true;
        if (resp.response === 'delivery') this._onDelivery(s, resp.delivery);
        else if (resp.response === 'outcome') this._onOutcome(s, resp.outcome);
      });
      call.on('error', (e) => finish(`${grpc.status[e.code] || e.code}: ${e.details || e.message}`));
      call.on('end', () => finish('closed by the broker'));
      this._changed();
    });
  }

  _onDelivery(s, d) {
    const job = new Job(d);
    const now = Date.now();
    const remaining = millisOf(d.lease_expires_at) - now;
    // The lease's length decides the heartbeat period. The worker's own
    // setting or the job's is exact; else (the queue default) the time left
    // on a fresh lease is the best measure there is.
    let leaseMs;
    if (this.leaseMs !== undefined) leaseMs = this.leaseMs;
    else if (d.job.lease_duration) leaseMs = millisOf(d.job.lease_duration);
    else leaseMs = Math.max(1, remaining);
    const h = {
      job, gen: s.gen, state: WAITING, leaseMs, expires: now + Math.max(0, remaining),
      nextBeat: now + leaseMs * this.heartbeatFraction, beatGen: null, settle: null,
    };
    const old = this._held.get(job.id);
    if (old) {
      // Leased again: the old lease expired (say, while the broker was
      // unreachable). Its handler may still be running; its result must not
      // be acked, and it needs no more heartbeats.
      this.log.warn(`job ${job.id} delivered again (attempt ${job.attempt}) while attempt ${old.job.attempt} was held here`);
      old.job._abort.abort(new Error('lease lost'));
    }
    this._held.set(job.id, h);
    if (this._stopping) this._release(h); // sent before the broker saw our drain: give it back unstarted
    else this._waiting.push(h);
    this._changed();
  }

  _onOutcome(s, o) {
    if (o.kind === 'drain') {
      if (!o.ok) this.log.warn(`drain refused (${o.code}: ${o.error})`);
      s.drained = true; // either way: no delivery follows it
      this._changed();
      return;
    }
    const h = s.answered(o.job_id, o.kind);
    if (!h) return;
    const current = this._held.get(o.job_id) === h;
    const now = Date.now();
    if (o.kind === 'extend') {
      h.beatGen = null;
      if (!current || (h.state !== WAITING && h.state !== RUNNING)) {
        // About a lease this worker no longer holds.
      } else if (o.ok) {
        h.expires = now + Math.max(0, millisOf(o.lease_expires_at) - now);
        h.nextBeat = now + h.leaseMs * this.heartbeatFraction;
      } else if (o.code === 'FAILED_PRECONDITION' || o.code === 'NOT_FOUND') {
        this.log.warn(`job ${o.job_id}: lease lost (${o.error}); it may run again elsewhere`);
        h.job._abort.abort(new Error('lease lost'));
        if (h.state === WAITING) this._forget(h);
      } else {
        this.log.warn(`job ${o.job_id}: extend failed (${o.code}: ${o.error}); trying again`);
        h.nextBeat = now + Math.min(1000, (h.leaseMs * (1 - this.heartbeatFraction)) / 2);
      }
    } else if (o.kind === 'ack' || o.kind === 'nack' || o.kind === 'release') {
      this._forget(h);
      let kind = o.kind;
      if (!o.ok) {
        // After a reconnect this can be an ack the broker already applied on
        // the old stream, or a lease that expired.
        this.log.warn(`job ${o.job_id}: ${o.kind} refused (${o.code}: ${o.error})`);
      } else if (kind === 'nack' && o.state === 'JOB_STATE_DEAD') {
        this.log.warn(`dead-lettered job ${o.job_id} after ${h.job.attempt} attempts`);
        kind = 'dead';
      }
      this._report(h.job, kind, o.ok, o.error);
    }
    this._changed();
  }
}

module.exports = { Worker, Job, Retry, DeadLetter, loadFairway };
