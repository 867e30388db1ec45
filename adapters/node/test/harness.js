// Shared harness for the in-process adapter tests (no tests here).
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { Readable, Writable } from 'node:stream';

export const msg = (obj) => JSON.stringify(obj) + '\n';
export const helloFor = (framing) =>
  msg({ op: 'hello', protocol: 1, tgate: '0.1.0', framing, bufsize: 128, max_bufsize: 65536, update_time: 1.0 });
export const connect = (id) => msg({ op: 'connect', id, peer: ['127.0.0.1', 40000 + id], local: ['127.0.0.1', 7000] });
export const TICK = msg({ op: 'tick' });

/** A Writable that records every chunk written to it, as text. */
export function recorder() {
  const chunks = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(chunk.toString('utf8'));
      cb();
    },
  });
  return { stream, chunks };
}

/** Parse stdout text into lines (each an object or array) and the flat command list. */
export function parse(text) {
  assert.ok(text === '' || text.endsWith('\n'), 'output ends with a newline');
  const lines = text.split('\n').slice(0, -1).map((l) => JSON.parse(l));
  return { lines, cmds: lines.flatMap((l) => (Array.isArray(l) ? l : [l])) };
}

/**
 * Run `loop` over `chunks` (each a string or Buffer, delivered as one stdin
 * chunk), until stdin ends.
 */
export async function drive(loop, chunks, opts = {}) {
  const out = recorder();
  const err = recorder();
  const stdin = Readable.from(chunks.map((c) => (typeof c === 'string' ? Buffer.from(c, 'utf8') : c)));
  await loop.run({ stdin, stdout: out.stream, stderr: err.stream, ...opts });
  const text = out.chunks.join('');
  return { ...parse(text), text, writes: out.chunks, stderr: err.chunks.join('') };
}
