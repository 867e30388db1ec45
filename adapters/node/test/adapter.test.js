// In-process tests of the adapter over injected streams.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { PassThrough, Writable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';

import { Client, ServerLoop } from '../index.js';
import { TICK, connect, drive, helloFor, msg, parse, recorder } from './harness.js';

// ---- harness ---------------------------------------------------------------

const hello = helloFor('raw');
const data = (id, s, eof) => msg(eof ? { op: 'data', id, data: s, eof: true } : { op: 'data', id, data: s });
const disconnect = (id, reason = 'eof') => msg({ op: 'disconnect', id, reason });

class Echo extends ServerLoop {
  processClientData(client, buf) {
    client.write(buf);
    return buf.length;
  }
}

/** Echoes whole lines only, like the doc's worked transcript. */
class LineEcho extends ServerLoop {
  processClientData(client, buf) {
    const end = buf.lastIndexOf(0x0a) + 1;
    if (end) client.write(buf.subarray(0, end));
    return end;
  }
}

const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const ALL_LATIN1 = ALL_BYTES.toString('latin1');

// ---- echo ------------------------------------------------------------------

test('echo: whole input', async () => {
  const r = await drive(new Echo(), [hello + connect(1) + data(1, 'hi\n') + disconnect(1)]);
  assert.deepEqual(r.lines, [
    [{ op: 'write', id: 1, data: 'hi\n' }, { op: 'consumed', id: 1, n: 3 }],
  ]);
  assert.equal(r.stderr, '');
});

test("the doc's worked transcript, byte for byte", async () => {
  const input = [
    '{"op":"hello","protocol":1,"tgate":"0.1.0","framing":"raw","bufsize":128,"max_bufsize":65536,"update_time":1.0}\n',
    '{"op":"connect","id":1,"peer":["127.0.0.1",40312],"local":["127.0.0.1",7000]}\n',
    '{"op":"data","id":1,"data":"h"}\n',
    '{"op":"data","id":1,"data":"i\\n"}\n',
    '{"op":"tick"}\n',
    '{"op":"data","id":1,"data":"","eof":true}\n',
    '{"op":"disconnect","id":1,"reason":"eof"}\n',
  ];
  const r = await drive(new LineEcho(), input);
  assert.equal(
    r.text,
    '{"op":"consumed","id":1,"n":0}\n' +
      '[{"op":"write","id":1,"data":"hi\\n"},{"op":"consumed","id":1,"n":3}]\n' +
      '{"op":"consumed","id":1,"n":0}\n',
  );
});

test('echo: input split at every byte boundary gives the same output', async () => {
  const input = Buffer.from(
    hello + connect(1) + connect(2) + data(1, 'h\u00e9llo ') + data(2, ALL_LATIN1) + TICK +
      data(1, 'w\u00ffrld\r\n', true) + disconnect(1) + data(2, '\u0000\n') + disconnect(2, 'reset'),
    'utf8',
  );
  const expected = (await drive(new Echo(), [input])).text;
  const { cmds } = parse(expected);
  assert.deepEqual(
    cmds.filter((c) => c.op === 'write').map((c) => c.data),
    ['h\u00e9llo ', ALL_LATIN1, 'w\u00ffrld\r\n', '\u0000\n'],
  );
  for (let i = 1; i < input.length; i++) {
    const r = await drive(new Echo(), [input.subarray(0, i), input.subarray(i)]);
    assert.equal(r.text, expected, `split at byte ${i}`);
  }
  const bytewise = await drive(new Echo(), [...input].map((b) => Buffer.from([b])));
  assert.equal(bytewise.text, expected, 'one byte per chunk');
});

test('bytes 0..255 round-trip exactly; strings are written as UTF-8', async () => {
  let seen;
  const loop = new ServerLoop({
    processClientData(client, buf) {
      seen = Buffer.from(buf);
      client.write(buf);
      client.write(new Uint8Array([0, 0x80, 0xff]));
      client.write('é€');
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1) + data(1, ALL_LATIN1)]);
  assert.deepEqual(seen, ALL_BYTES);
  const [w, c] = r.lines[0];
  const expectedBytes = Buffer.concat([ALL_BYTES, Buffer.from([0, 0x80, 0xff]), Buffer.from('é€', 'utf8')]);
  assert.deepEqual(Buffer.from(w.data, 'latin1'), expectedBytes);
  assert.ok([...w.data].every((ch) => ch.codePointAt(0) <= 0xff));
  assert.deepEqual(c, { op: 'consumed', id: 1, n: 256 });
  // And the raw wire text is valid UTF-8 JSON with U+0080..U+00FF as 2-byte sequences.
  assert.ok(r.text.includes('"\\u0000\\u0001'));
});

// ---- the process loop ------------------------------------------------------

test('process loop: several messages per data, incomplete tail kept, completed later', async () => {
  const calls = [];
  const loop = new ServerLoop({
    processClientData(client, buf) {
      calls.push(buf.toString('latin1'));
      const nl = buf.indexOf(0x0a);
      if (nl < 0) return 0;
      client.write(buf.subarray(0, nl).toString().toUpperCase() + '\n');
      return nl + 1;
    },
  });
  const r = await drive(loop, [
    hello + connect(1) + data(1, 'a\nbb\nc'),
    data(1, 'c'),
    data(1, 'c\nd\n'),
  ]);
  assert.deepEqual(calls, ['a\nbb\nc', 'bb\nc', 'c', 'cc', 'ccc\nd\n', 'd\n']);
  assert.deepEqual(r.lines, [
    [{ op: 'write', id: 1, data: 'A\nBB\n' }, { op: 'consumed', id: 1, n: 5 }], // coalesced writes
    { op: 'consumed', id: 1, n: 0 },
    [{ op: 'write', id: 1, data: 'CCC\nD\n' }, { op: 'consumed', id: 1, n: 6 }],
  ]);
});

test('process loop: a length-prefixed protocol with trailing data', async () => {
  // One byte length, then payload: answers each payload reversed.
  const loop = new ServerLoop({
    processClientData(client, buf) {
      if (buf.length < 1 || buf.length < 1 + buf[0]) return 0;
      client.write(Buffer.from(buf.subarray(1, 1 + buf[0])).reverse());
      return 1 + buf[0];
    },
  });
  const r = await drive(loop, [hello + connect(1) + data(1, '\u0003abc\u0002de\u0004fg'), data(1, 'hi')]);
  assert.deepEqual(r.lines, [
    [{ op: 'write', id: 1, data: 'cbaed' }, { op: 'consumed', id: 1, n: 7 }],
    [{ op: 'write', id: 1, data: 'ihgf' }, { op: 'consumed', id: 1, n: 5 }],
  ]);
});

test('eof: client.eof is set before the loop so a trailing partial message can be handled', async () => {
  const seen = [];
  const loop = new ServerLoop({
    processClientData(client, buf) {
      seen.push([buf.toString(), client.eof]);
      const nl = buf.indexOf(0x0a);
      if (nl >= 0) {
        client.write(`line:${buf.subarray(0, nl)}\n`);
        return nl + 1;
      }
      if (client.eof) {
        client.write(`last:${buf}\n`);
        return buf.length;
      }
      return 0;
    },
  });
  const r = await drive(loop, [
    hello + connect(1) + connect(2) + data(1, 'a\nbc') + data(1, '', true) + data(2, 'x\nyz', true),
  ]);
  assert.deepEqual(seen, [
    ['a\nbc', false], ['bc', false], ['bc', true], ['x\nyz', true], ['yz', true],
  ]);
  assert.deepEqual(r.lines, [
    [{ op: 'write', id: 1, data: 'line:a\n' }, { op: 'consumed', id: 1, n: 2 }],
    [{ op: 'write', id: 1, data: 'last:bc\n' }, { op: 'consumed', id: 1, n: 2 }],
    [{ op: 'write', id: 2, data: 'line:x\nlast:yz\n' }, { op: 'consumed', id: 2, n: 4 }],
  ]);
});

test('eof with nothing held and empty data: consumed 0, processClientData not called', async () => {
  let calls = 0;
  const loop = new ServerLoop({ processClientData: () => ++calls && 0 });
  const r = await drive(loop, [hello + connect(1) + data(1, '', true)]);
  assert.equal(calls, 0);
  assert.deepEqual(r.lines, [{ op: 'consumed', id: 1, n: 0 }]);
});

// ---- return values and exceptions ------------------------------------------

for (const [label, value] of [
  ['negative', -1],
  ['too large', 4],
  ['NaN', NaN],
  ['non-integer', 1.5],
  ['string', '2'],
  ['undefined', undefined],
  ['null', null],
  ['Infinity', Infinity],
  ['bigint', 2n],
  ['a Promise', Promise.resolve(2)],
]) {
  test(`invalid return value (${label}) closes that client only`, async () => {
    const loop = new ServerLoop({
      processClientData(client, buf) {
        if (client.id === 2) {
          client.write('ok\n');
          return buf.length;
        }
        if (buf[0] === 0x41 /* A */) return 1; // consumed before the bad value: still counted
        return value;
      },
    });
    const r = await drive(loop, [
      hello + connect(1) + connect(2) + data(1, 'Axy') + data(2, 'abc') + data(1, 'more') + data(2, 'd'),
    ]);
    assert.deepEqual(r.lines, [
      [{ op: 'consumed', id: 1, n: 1 }, { op: 'close', id: 1 }],
      [{ op: 'write', id: 2, data: 'ok\n' }, { op: 'consumed', id: 2, n: 3 }],
      { op: 'consumed', id: 1, n: 0 },
      [{ op: 'write', id: 2, data: 'ok\n' }, { op: 'consumed', id: 2, n: 1 }],
    ]);
    const errLines = r.stderr.split('\n');
    assert.match(errLines[0], /^tgate-handler: processClientData failed for client 1 \(127\.0\.0\.1:40001\); closing client 1: TypeError: processClientData returned /);
    assert.match(errLines[0], /integer from 0 to 2/);
    if (label === 'a Promise') assert.match(errLines[0], /must be synchronous/);
    assert.match(r.stderr, /\n {4}at /, 'stack follows');
  });
}

test('an exception in processClientData closes only that client; writes to it are then ignored', async () => {
  let calls1 = 0;
  let saved;
  const loop = new ServerLoop({
    processClientData(client, buf) {
      if (client.id === 1) {
        calls1++;
        saved = client;
        client.write('before\n');
        throw new Error('boom');
      }
      client.write(buf);
      saved.write('ignored');
      saved.close();
      return buf.length;
    },
  });
  const r = await drive(loop, [
    hello + connect(1) + connect(2) + data(1, 'x') + data(2, 'y') + data(1, 'z') + disconnect(1, 'closed') + data(2, 'w'),
  ]);
  assert.equal(calls1, 1);
  assert.deepEqual(r.lines, [
    [{ op: 'write', id: 1, data: 'before\n' }, { op: 'consumed', id: 1, n: 0 }, { op: 'close', id: 1 }],
    [{ op: 'write', id: 2, data: 'y' }, { op: 'consumed', id: 2, n: 1 }],
    { op: 'consumed', id: 1, n: 0 },
    [{ op: 'write', id: 2, data: 'w' }, { op: 'consumed', id: 2, n: 1 }],
  ]);
  const errLines = r.stderr.trimEnd().split('\n');
  assert.equal(errLines[0], 'tgate-handler: processClientData failed for client 1 (127.0.0.1:40001); closing client 1: Error: boom');
  assert.equal(errLines[1], 'Error: boom');
  assert.match(errLines[2], /^ {4}at /);
});

test('the default processClientData reports "not implemented" and closes the client', async () => {
  const r = await drive(new ServerLoop(), [hello + connect(1) + data(1, 'x')]);
  assert.deepEqual(r.lines, [[{ op: 'consumed', id: 1, n: 0 }, { op: 'close', id: 1 }]]);
  assert.match(r.stderr, /processClientData is not implemented/);
});

test('exceptions: clientConnected closes that client; update and clientDisconnected only report', async () => {
  const hooks = [];
  const loop = new ServerLoop({
    clientConnected(client) {
      if (client.id === 1) throw new Error('no 1');
      return { n: client.id };
    },
    processClientData(client, buf) {
      client.write(`${client.data.n}`);
      return buf.length;
    },
    update() {
      throw new Error('tick failed');
    },
    clientDisconnected() {
      throw new Error('bye failed');
    },
    onError(err, client, hook) {
      hooks.push([hook, client && client.id, err.message]);
    },
  });
  const r = await drive(loop, [
    hello + connect(1) + connect(2) + TICK + data(1, 'a') + data(2, 'b') + disconnect(2) + TICK + data(1, 'c'),
  ]);
  assert.deepEqual(hooks, [
    ['clientConnected', 1, 'no 1'],
    ['update', null, 'tick failed'],
    ['clientDisconnected', 2, 'bye failed'],
    ['update', null, 'tick failed'],
  ]);
  assert.deepEqual(r.lines, [
    [{ op: 'close', id: 1 }, { op: 'consumed', id: 1, n: 0 }],
    [{ op: 'write', id: 2, data: '2' }, { op: 'consumed', id: 2, n: 1 }],
    { op: 'consumed', id: 1, n: 0 },
  ]);
  assert.equal(r.stderr, '');
});

test('onError that throws does not stop the loop', async () => {
  const loop = new ServerLoop({
    processClientData() {
      throw new Error('first');
    },
    onError() {
      throw new Error('second');
    },
  });
  const r = await drive(loop, [hello + connect(1) + connect(2) + data(1, 'a') + data(2, 'b')]);
  assert.equal(r.cmds.filter((c) => c.op === 'consumed').length, 2);
  assert.match(r.stderr, /onError failed too: Error: second/);
});

// ---- replies and batching --------------------------------------------------

test('exactly one consumed per data message, whatever happens', async () => {
  const loop = new ServerLoop({
    processClientData(client, buf) {
      if (buf.includes('!')) client.close();
      if (buf.includes('?')) throw new Error('?');
      return buf.indexOf(0x2e /* . */) + 1;
    },
    onError() {},
  });
  const input = [
    hello, connect(1), connect(2), connect(3),
    data(1, 'a.b.'), data(2, 'x'), data(1, 'c'), data(3, '!'), data(3, 'ignored'), data(2, '?'),
    data(2, 'zzz'), data(1, '', true), data(99, 'who?'), disconnect(1), data(3, 'late', true),
  ];
  const r = await drive(loop, [input.join('')]);
  const dataCount = input.filter((l) => l.includes('"op":"data"')).length;
  const consumed = r.cmds.filter((c) => c.op === 'consumed');
  assert.equal(consumed.length, dataCount);
  assert.deepEqual(consumed.map((c) => [c.id, c.n]), [
    [1, 4], [2, 0], [1, 0], [3, 0], [3, 0], [2, 0], [2, 0], [1, 0], [99, 0], [3, 0],
  ]);
  // One consumed per line: each data message is its own atomic line.
  for (const line of r.lines) {
    const cmds = Array.isArray(line) ? line : [line];
    assert.equal(cmds.filter((c) => c.op === 'consumed').length, 1);
  }
  // Unknown client 99: answered, and closed.
  assert.deepEqual(r.lines[8], [{ op: 'consumed', id: 99, n: 0 }, { op: 'close', id: 99 }]);
});

test('writes to any client, broadcasts and closes go in the same array line as the consumed', async () => {
  const loop = new ServerLoop({
    processClientData(client, buf) {
      const other = this.clients.get(2);
      client.write('to-1 ');
      other.write('to-2');
      client.write('again');
      this.broadcast([1, other, 3], 'all');
      this.broadcast(this.clients, '!');
      this.clients.get(3).close();
      client.close(); // the current client's close goes after its consumed
      client.write('dropped');
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1) + connect(2) + connect(3) + data(1, 'go')]);
  assert.deepEqual(r.lines, [
    [
      { op: 'write', id: 1, data: 'to-1 ' },
      { op: 'write', id: 2, data: 'to-2' },
      { op: 'write', id: 1, data: 'again' },
      { op: 'write', ids: [1, 2, 3], data: 'all!' }, // same ids: coalesced
      { op: 'close', id: 3 },
      { op: 'consumed', id: 1, n: 2 },
      { op: 'close', id: 1 },
    ],
  ]);
});

test('broadcast: ids, dedup, closed and unknown clients skipped, empty is a no-op', async () => {
  const loop = new ServerLoop({
    processClientData(client, buf) {
      this.clients.get(3).close();
      this.broadcast([this.clients.get(2), 1, 2, 3, 42], buf); // 3 closed, 42 unknown
      this.broadcast([3, 42], 'nobody');
      this.broadcast([], 'nobody');
      this.broadcast(this.clients, ''); // nothing to send
      assert.throws(() => this.broadcast([{}], 'x'), TypeError);
      assert.throws(() => this.broadcast(7, 'x'), TypeError);
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1) + connect(2) + connect(3) + data(1, 'hey')]);
  assert.deepEqual(r.lines, [
    [{ op: 'close', id: 3 }, { op: 'write', ids: [2, 1], data: 'hey' }, { op: 'consumed', id: 1, n: 3 }],
  ]);
});

test('batching: N lines in one stdin chunk -> one stdout.write', async () => {
  const N = 50;
  let input = hello;
  for (let i = 1; i <= N; i++) input += connect(i) + data(i, `m${i}`) + TICK;
  const r = await drive(new Echo(), [input]);
  assert.equal(r.writes.length, 1);
  assert.equal(r.lines.length, N);
  // And one write per chunk when the same input comes in 3 chunks.
  const buf = Buffer.from(input);
  const third = Math.floor(buf.length / 3);
  const r3 = await drive(new Echo(), [buf.subarray(0, third), buf.subarray(third, 2 * third), buf.subarray(2 * third)]);
  assert.equal(r3.writes.length, 3);
  assert.equal(r3.text, r.text);
});

test('writes from clientConnected and update() go out in that turn', async () => {
  const loop = new ServerLoop({
    clientConnected(client) {
      client.write(`welcome ${client.id}\n`);
      return 'state';
    },
    update() {
      this.broadcast(this.clients, 'ping\n');
    },
    processClientData(client, buf) {
      client.write(client.data);
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1), connect(2) + TICK, TICK + data(1, 'x') + TICK]);
  assert.equal(r.writes.length, 3);
  assert.deepEqual(r.writes.map((w) => parse(w).lines), [
    [{ op: 'write', id: 1, data: 'welcome 1\n' }],
    [[{ op: 'write', id: 2, data: 'welcome 2\n' }, { op: 'write', ids: [1, 2], data: 'ping\n' }]],
    [
      [{ op: 'write', ids: [1, 2], data: 'ping\n' }, { op: 'write', id: 1, data: 'state' }, { op: 'consumed', id: 1, n: 1 }],
      { op: 'write', ids: [1, 2], data: 'ping\n' },
    ],
  ]);
});

test('writes from asynchronous code are flushed on their own, once per event-loop turn', async () => {
  const stdin = new PassThrough();
  const out = recorder();
  let saved;
  const loop = new ServerLoop({
    clientConnected(client) {
      saved = client;
    },
  });
  const done = loop.run({ stdin, stdout: out.stream, stderr: recorder().stream });
  stdin.write(hello + connect(1));
  await tick();
  await tick();
  saved.write('a');
  saved.write('b');
  loop.broadcast([1], 'c');
  await tick();
  await tick();
  assert.deepEqual(out.chunks, ['[{"op":"write","id":1,"data":"ab"},{"op":"write","ids":[1],"data":"c"}]\n']);
  saved.close();
  stdin.end();
  await done;
  assert.deepEqual(out.chunks.slice(1), ['{"op":"close","id":1}\n']);
});

// ---- lifecycle --------------------------------------------------------------

test('disconnect: clientDisconnected exactly once, client forgotten, later writes ignored', async () => {
  const gone = [];
  let saved;
  const loop = new ServerLoop({
    clientConnected(client) {
      saved = client;
    },
    processClientData: (c, buf) => buf.length,
    clientDisconnected(client) {
      gone.push([client.id, client.reason, client.closed, this.clients.has(client.id)]);
      client.write('too late');
      this.broadcast(this.clients, `${client.id} left`);
    },
  });
  const r = await drive(loop, [
    hello + connect(1) + connect(2) + disconnect(1, 'reset') + disconnect(1, 'reset') + data(1, 'x'),
  ]);
  assert.deepEqual(gone, [[1, 'reset', true, false]]);
  assert.equal(loop.clients.has(1), false);
  assert.deepEqual([...loop.clients.keys()], [2]);
  saved.write('ignored');
  saved.close();
  assert.deepEqual(r.lines, [
    [{ op: 'write', ids: [2], data: '1 left' }, { op: 'consumed', id: 1, n: 0 }, { op: 'close', id: 1 }],
  ]);
  assert.ok(saved instanceof Client);
});

test('unknown ops, unknown fields, blank and non-JSON lines are ignored', async () => {
  const r = await drive(new Echo(), [
    hello +
      msg({ op: 'frobnicate', id: 1 }) +
      '\n' +
      msg({ op: 'connect', id: 1, peer: ['::1', 5], local: ['::1', 7], extra: { a: 1 } }) +
      msg([{ op: 'data', id: 1, data: 'array' }]) +
      msg({ noop: true }) +
      'not json\n' +
      msg({ op: 'data', id: 1, data: 'ok', future: 1 }) +
      msg({ op: 'data', data: 'no id' }),
  ]);
  assert.deepEqual(r.lines, [[{ op: 'write', id: 1, data: 'ok' }, { op: 'consumed', id: 1, n: 2 }]]);
  assert.match(r.stderr, /not JSON/);
});

test('hello is kept; peer and local are exposed; a final line without newline is handled', async () => {
  let client;
  const loop = new ServerLoop({
    clientConnected(c) {
      client = c;
    },
    processClientData: (c, buf) => buf.length,
  });
  const r = await drive(loop, [hello + connect(7), data(7, 'x').trimEnd()]);
  assert.equal(loop.hello.update_time, 1.0);
  assert.deepEqual(client.peer, ['127.0.0.1', 40007]);
  assert.deepEqual(client.local, ['127.0.0.1', 7000]);
  assert.equal(String(client), 'client 7 (127.0.0.1:40007)');
  assert.deepEqual(r.lines, [{ op: 'consumed', id: 7, n: 1 }]);
});

test('stdin may be any async iterable of Buffers, Uint8Arrays or strings', async () => {
  async function* chunks() {
    yield hello + connect(1);
    yield new TextEncoder().encode(data(1, '\u00e9').slice(0, 20)); // a Uint8Array, mid-line
    yield Buffer.from(data(1, '\u00e9').slice(20));
  }
  const out = recorder();
  await new Echo().run({ stdin: chunks(), stdout: out.stream, stderr: recorder().stream });
  assert.deepEqual(parse(out.chunks.join('')).lines, [
    [{ op: 'write', id: 1, data: '\u00e9' }, { op: 'consumed', id: 1, n: 1 }],
  ]);
});

test('constructor hooks override methods; unknown hooks are rejected', () => {
  assert.throws(() => new ServerLoop({ processclientData() {} }), /unknown hook "processclientData"/);
  assert.throws(() => new ServerLoop({ update: 1 }), /must be a function/);
  const loop = new ServerLoop({ update() {} });
  assert.equal(typeof loop.processClientData, 'function');
});

test('run() twice at once is refused', async () => {
  const stdin = new PassThrough();
  const loop = new Echo();
  const p = loop.run({ stdin, stdout: recorder().stream, stderr: recorder().stream });
  await assert.rejects(loop.run({ stdin, stdout: recorder().stream }), /already running/);
  stdin.end();
  await p;
});

test('backpressure: stdin is not read while stdout needs draining', async () => {
  const callbacks = [];
  const writes = [];
  const stdout = new Writable({
    highWaterMark: 1,
    write(chunk, _enc, cb) {
      writes.push(chunk.toString());
      callbacks.push(cb); // completes only when the test says so
    },
  });
  const stdin = new PassThrough();
  const loop = new Echo();
  let resolved = false;
  const done = loop.run({ stdin, stdout, stderr: recorder().stream }).then(() => (resolved = true));
  stdin.write(hello + connect(1) + data(1, 'a'));
  await tick();
  await tick();
  assert.equal(writes.length, 1);
  stdin.write(data(1, 'b'));
  stdin.write(data(1, 'c'));
  stdin.end();
  for (let i = 0; i < 5; i++) await tick();
  assert.equal(writes.length, 1, 'no more input handled until drain');
  assert.equal(resolved, false);
  callbacks.shift()(); // drain
  for (let i = 0; i < 5; i++) await tick();
  assert.equal(writes.length, 2, 'the rest of stdin, in one turn');
  assert.equal(resolved, false, 'not flushed yet');
  callbacks.shift()();
  await done;
  assert.deepEqual(parse(writes.join('')).cmds.filter((c) => c.op === 'write').map((c) => c.data), ['a', 'b', 'c']);
});

test('stdout errors reject run()', async () => {
  const stdout = new Writable({
    write(_chunk, _enc, cb) {
      cb(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
    },
  });
  const stdin = new PassThrough();
  const p = new Echo().run({ stdin, stdout, stderr: recorder().stream });
  stdin.write(hello + connect(1) + data(1, 'a'));
  stdin.write(data(1, 'b'));
  await assert.rejects(p, /EPIPE/);
});

test('lines over the size limit are split, consumed last, data intact', async () => {
  const big = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 256));
  const loop = new ServerLoop({
    processClientData(client, buf) {
      client.write(big);
      this.broadcast(this.clients, big);
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1) + connect(2) + data(1, 'x')], { maxLineBytes: 1000 });
  for (const line of r.text.split('\n').slice(0, -1)) assert.ok(Buffer.byteLength(line) + 1 <= 1000);
  assert.ok(r.lines.length > 3);
  assert.deepEqual(r.cmds.at(-1), { op: 'consumed', id: 1, n: 1 });
  const direct = r.cmds.filter((c) => c.op === 'write' && c.id === 1).map((c) => c.data).join('');
  const bcast = r.cmds.filter((c) => c.op === 'write' && c.ids).map((c) => c.data).join('');
  assert.equal(direct, big.toString('latin1'));
  assert.equal(bcast, big.toString('latin1'));
});

test('write() rejects values that are not bytes or strings', async () => {
  const errs = [];
  const loop = new ServerLoop({
    processClientData(client) {
      client.write(42);
      return 1;
    },
    onError: (err) => errs.push(err),
  });
  const r = await drive(loop, [hello + connect(1) + data(1, 'x')]);
  assert.ok(errs[0] instanceof TypeError);
  assert.deepEqual(r.lines, [[{ op: 'consumed', id: 1, n: 0 }, { op: 'close', id: 1 }]]);
});
