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

// ---- a fake gateway: what each client receives ------------------------------

/** The client id of the fence (tests must not use it). */
export const FENCE = 1000;
const fenceMsg = msg({ op: 'data', id: FENCE, data: '' });

/**
 * `msgs` (hello first) with a fence after each message: a client FENCE that
 * connects right after hello, then an empty `data` for it after every message.
 * Its `consumed` (always sent, alone: there are no bytes to process) marks the
 * end of the commands the message before it produced, however the adapter
 * groups commands into lines; `answers(cmds, n)` splits them back. The fence
 * client is also a client of the handler (a chat subscribes it, say): ignore
 * what it receives. An empty `data` works in framed modes too (the adapters
 * answer it all the same), so the trick serves both.
 */
export function fenced(msgs) {
  const [hello, ...rest] = msgs;
  return [hello, connect(FENCE), fenceMsg, ...rest.flatMap((m) => [m, fenceMsg])];
}

/** The commands of a fenced run, one list per message after hello (fence consumed removed). */
export function answers(cmds, n) {
  const groups = [[]];
  for (const c of cmds) {
    if (c.op === 'consumed' && c.id === FENCE) groups.push([]);
    else groups.at(-1).push(c);
  }
  // groups[0]: hello and the fence's connect; then one per message; then nothing.
  assert.equal(groups.length, n + 2, 'one fence reply per message');
  assert.deepEqual(groups.at(-1), []);
  return groups.slice(1, -1);
}

/**
 * What each client receives (latin-1 strings, by id) when a gateway applies
 * `answers[i]` right after sending `msgs[i]` (both without hello): writes and
 * channels as docs/protocol.md says, a client leaving its channels at its
 * disconnect and getting nothing after it or after its close. `framed`: each
 * write or publish is a line (tgate appends "\n") unless raw.
 */
export function simulate(msgs, answersPerMsg, { framed = false } = {}) {
  const got = {};
  const live = new Set();
  const closed = new Set();
  const channels = new Map();
  const send = (id, data, raw) => {
    if (!live.has(id) || closed.has(id)) return;
    got[id] = (got[id] ?? '') + data + (framed && !raw ? '\n' : '');
  };
  msgs.forEach((line, i) => {
    const m = JSON.parse(line);
    if (m.op === 'connect') live.add(m.id);
    if (m.op === 'disconnect') {
      live.delete(m.id);
      for (const members of channels.values()) members.delete(m.id);
    }
    for (const c of answersPerMsg[i]) {
      if (c.op === 'write') for (const id of c.ids ?? [c.id]) send(id, c.data, c.raw);
      else if (c.op === 'close') closed.add(c.id);
      else if (c.op === 'subscribe' && live.has(c.id)) {
        if (!channels.has(c.channel)) channels.set(c.channel, new Set());
        channels.get(c.channel).add(c.id);
      } else if (c.op === 'unsubscribe') channels.get(c.channel)?.delete(c.id);
      else if (c.op === 'publish') {
        for (const id of channels.get(c.channel) ?? []) if (id !== c.exclude) send(id, c.data, c.raw);
      }
    }
  });
  delete got[FENCE];
  return got;
}
