#!/usr/bin/env node
'use strict';
/**
 * An example Fairway worker on fairway-worker.js (next to this file).
 *
 *   node examples/node/worker.js --addr 127.0.0.1:50051 --queue emails
 *   node examples/node/worker.js --queue emails --count 3   # stop after 3 settled jobs
 *
 * The handler reads the payload as text, so every path of the library can
 * be tried from the command line (and the tests drive it this way):
 *
 *   "sleep:<seconds>[:<text>]"  works that long (heartbeats keep the lease), then acks
 *   "fail..."                   throws: nacked with the message, retried, dead-lettered
 *   "retry..."                  asks to be retried in 0.2 s on its first attempt
 *   anything else               acked, with the text as its result
 *
 * It prints one JSON line per event on stdout: started and done around each
 * run of the handler; then, once the broker has answered, acked, nacked (to
 * be retried), dead (nacked and dead-lettered), released (given back
 * unstarted during a stop: not an attempt) or lost (the lease was lost, or
 * the broker refused the settle). When it exits it prints a summary line,
 * {"acked": N, "nacked": N, "dead": N, "released": N, "jobs": [the acked
 * jobs]}; logs go to stderr. SIGINT or SIGTERM drains: jobs not started are
 * released, the running ones finish and are acked, then it exits.
 */
const { parseArgs } = require('node:util');
const { setTimeout: sleep } = require('node:timers/promises');
const { Worker, Retry } = require('./fairway-worker');

function emit(event, fields) {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

/** The work itself. Resolve to ack; throw to nack. */
async function handle(job) {
  const text = job.text;
  emit('started', { id: job.id, attempt: job.attempt, payload: text });
  if (text.startsWith('sleep:')) {
    const [, secs, ...rest] = text.split(':');
    await sleep(Number(secs) * 1000, undefined, { signal: job.signal });
    return rest.length ? rest.join(':') : text;
  }
  if (text.startsWith('fail')) throw new Error(`cannot process '${text}'`);
  if (text.startsWith('retry') && job.attempt === 1) throw new Retry('not yet: try again shortly', { afterMs: 200 });
  return text;
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      addr: { type: 'string', default: process.env.FAIRWAY_GRPC || '127.0.0.1:50051' },
      queue: { type: 'string', multiple: true },
      concurrency: { type: 'string', default: '4' },
      lease: { type: 'string' },
      count: { type: 'string', default: '0' },
    },
  });
  if (!args.queue) {
    console.error('usage: worker.js --queue NAME [--queue NAME...] [--addr HOST:PORT] [--concurrency N] [--lease SECONDS] [--count N]');
    process.exit(2);
  }
  const count = Number(args.count);
  const results = new Map(); // job id -> handler result, for the acked jobs' summary
  const acked = [];
  const nacked = [];
  const dead = [];
  const released = [];

  const handler = async (job) => {
    try {
      results.set(job.id, await handle(job));
    } finally {
      emit('done', { id: job.id, attempt: job.attempt });
    }
  };
  const worker = new Worker(handler, {
    queues: args.queue,
    addr: args.addr,
    concurrency: Number(args.concurrency),
    leaseMs: args.lease === undefined ? undefined : Number(args.lease) * 1000,
    workerVersion: 'example-1',
  });
  worker.on('settled', (job, kind, ok, error) => {
    if (kind === 'ack' && ok) {
      acked.push({ id: job.id, tenant: job.tenant, attempt: job.attempt, result: results.get(job.id) });
      emit('acked', { id: job.id, attempt: job.attempt });
    } else if (kind === 'nack' && ok) {
      nacked.push(job.id);
      emit('nacked', { id: job.id, attempt: job.attempt });
    } else if (kind === 'dead' && ok) {
      dead.push(job.id);
      emit('dead', { id: job.id, attempt: job.attempt });
    } else if (kind === 'release' && ok) {
      released.push(job.id);
      emit('released', { id: job.id, attempt: job.attempt });
    } else {
      emit('lost', { id: job.id, kind, error });
    }
    results.delete(job.id);
    // Released jobs never ran: they do not count.
    if (count && acked.length + nacked.length + dead.length >= count) worker.stop();
  });
  await worker.run();
  const summary = { acked: acked.length, nacked: nacked.length, dead: dead.length, released: released.length, jobs: acked };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  // A forced stop can leave handlers running: they must not keep the
  // process alive.
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
