// A CPU-bound echo handler for tgate's worker benchmark (bench/workers.py):
// the Node twin of bench/cpu_handler.py.
//
// Every complete line a client sends costs a fixed amount of pure JavaScript
// work (about 0.5 ms on the machine that calibrated it: a loop of integer
// arithmetic, no I/O, no timers) and is then echoed back byte for byte, so
// bench/loadgen.c can drive it like examples/echo.js.
//
//   node bench/cpu_handler.js --calibrate          # print the loop count for 0.5 ms
//   tgate --handler "node bench/cpu_handler.js --iterations 1234567"
//   tgate --handler "node bench/cpu_handler.js"    # calibrates itself at start
//
// The work is a loop count, not a time: fixed once (by --iterations, or by
// calibrating at start), it stays the same however busy the machine is, so
// one worker and two workers do exactly the same work per request.
// --work-ms changes the calibration target (default 0.5).
import { ServerLoop } from '../adapters/node/index.js';

/** Pure CPU work: an xorshift32 mix, `iterations` rounds (the result is used). */
export function work(iterations, seed) {
  let x = seed | 1;
  for (let i = 0; i < iterations; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
  }
  return x | 0;
}

/**
 * The loop count that takes `workMs` here at the machine's fastest: the
 * quickest of `trials` timed runs (after a JIT warm-up), spread over `spreadMs`,
 * because a VM's CPU speed can drift by 1.7x for seconds at a time.
 */
export function calibrate(workMs, trials = 25, spreadMs = 1000) {
  const probe = 2_000_000;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  let sink = 0;
  for (let i = 0; i < 5; i++) sink ^= work(probe, i + 1); // let the JIT optimise work()
  let best = Infinity;
  for (let i = 0; i < trials; i++) {
    const t0 = process.cpuUsage();
    sink ^= work(probe, i + 7);
    const used = process.cpuUsage(t0);
    best = Math.min(best, (used.user + used.system) / 1e6);
    Atomics.wait(pause, 0, 0, spreadMs / trials);
  }
  if (sink === 0x7fffffff) process.stderr.write(''); // keep sink alive
  return best > 0 ? Math.max(1, Math.round((probe * (workMs / 1000)) / best)) : probe;
}

class CpuEcho extends ServerLoop {
  constructor(iterations) {
    super();
    this.iterations = iterations;
    this.sink = 0;
  }

  // every complete line in this read: work for each, then echo them all
  processClientData(client, buf) {
    const end = buf.lastIndexOf(10) + 1;
    if (!end) return 0; // partial line: wait for the rest
    for (let i = 0; i < end; i++) {
      if (buf[i] === 10) this.sink ^= work(this.iterations, buf[0] + i);
    }
    client.write(buf.subarray(0, end));
    return end;
  }

  processFrame(client, frame) { // --framing line etc.
    this.sink ^= work(this.iterations, frame.length);
    client.write(frame);
  }
}

function option(name) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const workMs = Number(option('--work-ms') ?? 0.5);
if (process.argv.includes('--calibrate')) {
  process.stdout.write(`${calibrate(workMs)}\n`);
} else {
  const iterations = Number(option('--iterations') ?? 0) || calibrate(workMs);
  await new CpuEcho(iterations).run();
}
