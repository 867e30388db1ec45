// The adapter's work is linear in the bytes it receives, however many messages
// they hold: bounded by counting bytes, not by timing. (This file patches
// Buffer.prototype.indexOf and Buffer.concat while a test runs; node --test
// runs each test file in its own process.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { Readable } from 'node:stream';

import { ServerLoop } from '../index.js';
import { connect, drive, helloFor, msg, recorder } from './harness.js';

const TOTAL = 256 * 1024;
const NL = 0x0a;
const data = (id, s) => msg({ op: 'data', id, data: s });

/**
 * Consumes one line per processClientData call (without Buffer.indexOf, which
 * the next test counts) and counts the bytes of every buffer it is handed that
 * does not share memory with the previous one (a new ArrayBuffer means the
 * adapter copied). Past `budget` it throws, which closes the client: a
 * quadratic adapter fails fast instead of copying gigabytes.
 */
function lineCounter(budget) {
  const stats = { calls: 0, lines: 0, copied: 0 };
  let last = null;
  const loop = new ServerLoop({
    processClientData(client, buf) {
      stats.calls++;
      if (buf.buffer !== last) {
        last = buf.buffer;
        stats.copied += buf.length;
        if (stats.copied > budget) throw new Error(`over budget: ${stats.copied} bytes in ${stats.calls} calls`);
      }
      for (let i = 0; i < buf.length; i++) {
        if (buf[i] === NL) {
          stats.lines++;
          return i + 1;
        }
      }
      return 0;
    },
  });
  return { loop, stats };
}

for (const chunk of [TOTAL, 16 * 1024, 1000]) {
  test(`256 KiB of one-byte messages in data messages of ${chunk} bytes: one buffer per batch, views after`, async () => {
    const { loop, stats } = lineCounter(4 * TOTAL);
    let input = helloFor('raw') + connect(1);
    for (let i = 0; i < TOTAL; i += chunk) input += data(1, '\n'.repeat(Math.min(chunk, TOTAL - i)));
    const r = await drive(loop, [input]);
    assert.equal(stats.calls, TOTAL, JSON.stringify(stats));
    assert.equal(stats.lines, TOTAL);
    assert.equal(r.cmds.filter((c) => c.op === 'consumed').reduce((a, c) => a + c.n, 0), TOTAL);
    assert.deepEqual(r.cmds.filter((c) => c.op !== 'consumed'), []); // no close: no error
    // Each batch is handed over once, then as views of it (Buffer.subarray).
    assert.ok(stats.copied <= TOTAL + 8192, JSON.stringify(stats)); // (+ the 8 KiB pool slack)
  });
}

/** Count what Buffer.prototype.indexOf(0x0a) scans and what Buffer.concat copies during fn. */
async function countScans(fn) {
  const { indexOf } = Buffer.prototype;
  const { concat } = Buffer;
  const counts = { scanned: 0, concatenated: 0 };
  Buffer.prototype.indexOf = function (value, byteOffset, encoding) {
    const r = indexOf.call(this, value, byteOffset, encoding);
    if (value === NL) {
      const from = byteOffset === undefined ? 0 : byteOffset;
      counts.scanned += (r === -1 ? this.length : r + 1) - from;
    }
    return r;
  };
  Buffer.concat = function (list, totalLength) {
    const b = concat.call(this, list, totalLength);
    counts.concatenated += b.length;
    return b;
  };
  try {
    await fn();
  } finally {
    Buffer.prototype.indexOf = indexOf;
    Buffer.concat = concat;
  }
  return counts;
}

test('stdin line splitting scans each input byte once, however the lines are chunked', async () => {
  // A 512 KiB data line (256 Ki "\n", each escaped as \n) arriving in 1 KiB
  // stdin chunks, then many short lines (connects, ticks) split mid-line.
  let input = helloFor('raw') + connect(1) + data(1, '\n'.repeat(TOTAL));
  for (let i = 2; i < 2000; i++) input += connect(i) + msg({ op: 'tick' });
  const bytes = Buffer.from(input);
  const chunks = [];
  for (let i = 0; i < bytes.length; i += 1024) chunks.push(bytes.subarray(i, i + 1024));
  const { loop, stats } = lineCounter(4 * TOTAL);
  const out = recorder();
  const counts = await countScans(() =>
    loop.run({ stdin: Readable.from(chunks), stdout: out.stream, stderr: recorder().stream }),
  );
  assert.equal(stats.lines, TOTAL);
  assert.equal(loop.clients.size, 1999);
  // Every byte is scanned once looking for the newline: no rescanning of the
  // partial line when a chunk arrives.
  assert.equal(counts.scanned, bytes.length);
  // Partial lines are joined once, when their newline arrives: at most the
  // input once over (no re-concatenation per chunk).
  assert.ok(counts.concatenated <= bytes.length, JSON.stringify({ ...counts, input: bytes.length }));
});
