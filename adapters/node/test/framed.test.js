// Framed modes (tgate --framing line|crlf|packet2|packet4|netstring), in-process
// over injected streams: processFrame, clientEof, writeRaw, no consumed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { PassThrough, Readable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';

import { ServerLoop } from '../index.js';
import { TICK, connect, drive, helloFor, msg, parse, recorder } from './harness.js';

// ---- harness ---------------------------------------------------------------

const hello = helloFor('line');
const frame = (id, s) => msg({ op: 'frame', id, data: s });
const eof = (id) => msg({ op: 'eof', id });
const disconnect = (id, reason = 'closed') => msg({ op: 'disconnect', id, reason });

/** Echoes each frame; records frames and eofs. */
class FrameEcho extends ServerLoop {
  calls = [];
  errors = [];

  processFrame(client, frame) {
    this.calls.push(['frame', client.id, frame.toString('latin1')]);
    client.write(frame);
  }

  clientEof(client) {
    this.calls.push(['eof', client.id, client.eof]);
    super.clientEof(client);
  }

  onError(err, client, hook) {
    this.errors.push([hook, client && client.id, err.message]);
  }
}

const ALL_LATIN1 = Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('latin1');

// ---- tests -----------------------------------------------------------------

test('hello sets this.framing (raw before hello, or when hello has no framing)', async () => {
  const loop = new FrameEcho();
  assert.equal(loop.framing, 'raw');
  await drive(loop, [helloFor('packet4')]);
  assert.equal(loop.framing, 'packet4');
  const old = new ServerLoop(); // no data hooks: serves any framing (see the mismatch tests)
  await drive(old, [msg({ op: 'hello', protocol: 1 })]);
  assert.equal(old.framing, 'raw');
});

test('frames are delivered whole as Buffers and get no consumed; each write is one frame', async () => {
  const loop = new FrameEcho();
  const seen = [];
  loop.processFrame = function (client, buf) {
    seen.push([client.id, Buffer.isBuffer(buf), buf.toString('latin1')]);
    client.write(buf);
    client.write(buf); // a second frame, not coalesced into the first
  };
  const r = await drive(loop, [
    hello + connect(1) + connect(2) + frame(1, 'hello') + frame(2, ALL_LATIN1) + TICK + frame(1, ''),
  ]);
  assert.deepEqual(seen, [
    [1, true, 'hello'],
    [2, true, ALL_LATIN1],
    [1, true, ''],
  ]);
  assert.deepEqual(r.cmds.filter((c) => c.op === 'consumed'), []);
  assert.deepEqual(r.cmds, [
    { op: 'write', id: 1, data: 'hello' },
    { op: 'write', id: 1, data: 'hello' },
    { op: 'write', id: 2, data: ALL_LATIN1 },
    { op: 'write', id: 2, data: ALL_LATIN1 },
    { op: 'write', id: 1, data: '' }, // an empty frame is a frame
    { op: 'write', id: 1, data: '' },
  ]);
  assert.equal(r.stderr, '');
});

test('writeRaw sends raw: true; raw writes coalesce, frames never do', async () => {
  const loop = new ServerLoop({
    processFrame(client) {
      client.write('one');
      client.writeRaw('> ');
      client.writeRaw(Buffer.from('é'));
      client.writeRaw('');
      client.write('two');
      this.broadcast(this.clients, 'all');
      this.broadcast(this.clients, 'all');
      this.broadcast([2], '*', { raw: true });
      this.broadcast([2], '*', { raw: true });
    },
  });
  const r = await drive(loop, [helloFor('crlf') + connect(1) + connect(2) + frame(1, 'go')]);
  assert.deepEqual(r.lines, [
    [
      { op: 'write', id: 1, data: 'one' },
      { op: 'write', id: 1, data: '> \u00c3\u00a9', raw: true },
      { op: 'write', id: 1, data: 'two' },
      { op: 'write', ids: [1, 2], data: 'all' },
      { op: 'write', ids: [1, 2], data: 'all' },
      { op: 'write', ids: [2], data: '**', raw: true },
    ],
  ]);
});

test('in raw mode writeRaw is a plain write (no raw field)', async () => {
  const loop = new ServerLoop({
    processClientData(client, buf) {
      client.write('a');
      client.writeRaw('b');
      this.broadcast([client], 'c', { raw: true });
      return buf.length;
    },
  });
  const r = await drive(loop, [helloFor('raw') + connect(1) + msg({ op: 'data', id: 1, data: 'x' })]);
  assert.deepEqual(r.lines, [
    [
      { op: 'write', id: 1, data: 'ab' },
      { op: 'write', ids: [1], data: 'c' },
      { op: 'consumed', id: 1, n: 1 },
    ],
  ]);
});

test('eof: client.eof is set, and by default the client is closed after its writes', async () => {
  const loop = new FrameEcho();
  const r = await drive(loop, [
    hello + connect(1) + connect(2) + frame(1, 'last') + eof(1) + frame(2, 'still here') + disconnect(1),
  ]);
  assert.deepEqual(loop.calls, [
    ['frame', 1, 'last'],
    ['eof', 1, true],
    ['frame', 2, 'still here'],
  ]);
  assert.deepEqual(r.cmds, [
    { op: 'write', id: 1, data: 'last' },
    { op: 'close', id: 1 },
    { op: 'write', id: 2, data: 'still here' },
  ]);
  assert.deepEqual([...loop.clients.keys()], [2]);
});

test('clientEof can be overridden: answer, keep the client open, close it later', async () => {
  const loop = new ServerLoop({
    processFrame() {},
    clientEof(client) {
      client.write('bye');
    },
    update() {
      for (const c of this.clients.values()) {
        if (c.eof) {
          c.writeRaw('!');
          c.close();
        }
      }
    },
  });
  const r = await drive(loop, [hello + connect(1) + connect(2) + eof(1), TICK, TICK]);
  assert.deepEqual(r.writes.map((w) => parse(w).lines), [
    [{ op: 'write', id: 1, data: 'bye' }],
    [[{ op: 'write', id: 1, data: '!', raw: true }, { op: 'close', id: 1 }]],
  ]);
  assert.deepEqual([...loop.clients.values()].map((c) => c.eof), [true, false]);
});

test('an exception in processFrame closes only that client; its later frames and eof are ignored', async () => {
  const loop = new FrameEcho();
  loop.processFrame = function (client, buf) {
    if (buf.toString() === 'boom') {
      client.write('partial');
      this.broadcast(this.clients, 'to all');
      throw new Error('bang');
    }
    FrameEcho.prototype.processFrame.call(this, client, buf);
  };
  const r = await drive(loop, [
    hello + connect(1) + connect(2) + frame(1, 'boom'),
    frame(2, 'hello') + frame(1, 'ignored') + eof(1) + disconnect(1) + frame(2, 'world'),
  ]);
  assert.deepEqual(loop.errors, [['processFrame', 1, 'bang']]);
  assert.deepEqual(loop.calls, [
    ['frame', 2, 'hello'],
    ['frame', 2, 'world'],
  ]);
  assert.deepEqual(r.cmds, [
    { op: 'write', id: 1, data: 'partial' },
    { op: 'write', ids: [1, 2], data: 'to all' },
    { op: 'close', id: 1 },
    { op: 'write', id: 2, data: 'hello' },
    { op: 'write', id: 2, data: 'world' },
  ]);
});

test('the default onError names processFrame and the closed client', async () => {
  const r = await drive(new ServerLoop(), [hello + connect(1) + connect(2) + frame(1, 'x') + eof(2)]);
  assert.deepEqual(r.cmds, [
    { op: 'close', id: 1 },
    { op: 'close', id: 2 },
  ]);
  assert.match(
    r.stderr,
    /^tgate-handler: processFrame failed for client 1 \(127\.0\.0\.1:40001\); closing client 1: Error: processFrame is not implemented/,
  );
});

test('an exception in clientEof closes the client', async () => {
  const loop = new FrameEcho();
  loop.clientEof = () => {
    throw new Error('eof failed');
  };
  const r = await drive(loop, [hello + connect(1) + eof(1)]);
  assert.deepEqual(loop.errors, [['clientEof', 1, 'eof failed']]);
  assert.deepEqual(r.cmds, [{ op: 'close', id: 1 }]);
});

test('an async processFrame: its writes go out, a rejection closes that client', async () => {
  const stdin = new PassThrough();
  const out = recorder();
  const errors = [];
  const loop = new ServerLoop({
    async processFrame(client, buf) {
      await tick();
      if (buf.toString() === 'bad') throw new Error('async bang');
      client.write(buf);
    },
    onError(err, client, hook) {
      errors.push([hook, client.id, err.message]);
    },
  });
  const done = loop.run({ stdin, stdout: out.stream, stderr: recorder().stream });
  stdin.write(hello + connect(1) + connect(2) + frame(1, 'ok') + frame(2, 'bad'));
  for (let i = 0; i < 5; i++) await tick();
  stdin.end();
  await done;
  assert.deepEqual(errors, [['processFrame', 2, 'async bang']]);
  assert.deepEqual(parse(out.chunks.join('')).cmds, [
    { op: 'write', id: 1, data: 'ok' },
    { op: 'close', id: 2 },
  ]);
});

test('frames and eofs for unknown or closed clients are ignored', async () => {
  const loop = new FrameEcho();
  const r = await drive(loop, [
    hello + frame(9, 'who?') + eof(9) + msg({ op: 'frame', id: '1', data: 'x' }) + connect(1) +
      msg({ op: 'frame', id: 1, data: 'ok', future: true }),
  ]);
  assert.deepEqual(r.cmds, [{ op: 'write', id: 1, data: 'ok' }]);
  assert.match(r.stderr, /frame for unknown client 9/);
  assert.match(r.stderr, /eof for unknown client 9/);
});

test('batching: every frame and eof of one stdin chunk -> one stdout.write', async () => {
  const N = 30;
  let input = hello;
  for (let i = 1; i <= N; i++) input += connect(i) + frame(i, `f${i}`);
  for (let i = 1; i <= N; i++) input += eof(i);
  const r = await drive(new FrameEcho(), [input]);
  assert.equal(r.writes.length, 1);
  assert.equal(r.cmds.filter((c) => c.op === 'write').length, N);
  assert.deepEqual(r.cmds.filter((c) => c.op === 'close').map((c) => c.id), Array.from({ length: N }, (_, i) => i + 1));
  assert.equal(r.cmds.filter((c) => c.op === 'consumed').length, 0);
  const buf = Buffer.from(input);
  const half = Math.floor(buf.length / 2);
  const r2 = await drive(new FrameEcho(), [buf.subarray(0, half), buf.subarray(half)]);
  assert.equal(r2.writes.length, 2);
  assert.deepEqual(r2.cmds, r.cmds);
});

for (const [framing, prefix, suffix] of [
  ['line', '', '\n'],
  ['crlf', '', '\r\n'],
  ['packet2', '\u000c\u0000', ''],
  ['packet4', '\u0000\u0000\u000c\u0000', ''],
  ['netstring', '3072:', ','],
]) {
  test(`a frame over the line limit is framed by the adapter and sent raw in pieces (${framing})`, async () => {
    const big = ALL_LATIN1.repeat(12); // 3072 bytes
    const r = await drive(new FrameEcho(), [helloFor(framing) + connect(1) + frame(1, big) + eof(1)], {
      maxLineBytes: 1000,
    });
    for (const line of r.text.split('\n').slice(0, -1)) assert.ok(Buffer.byteLength(line) + 1 <= 1000);
    const writes = r.cmds.filter((c) => c.op === 'write');
    assert.ok(writes.length > 3);
    assert.ok(writes.every((c) => c.raw === true));
    assert.equal(writes.map((c) => c.data).join(''), prefix + big + suffix);
    assert.deepEqual(r.cmds.at(-1), { op: 'close', id: 1 });
  });
}

test('a frame too long for packet2 cannot be split: dropped with a message', async () => {
  const loop = new ServerLoop({
    processFrame(client) {
      client.write(Buffer.alloc(70000));
      client.write('small');
    },
  });
  const r = await drive(loop, [helloFor('packet2') + connect(1) + frame(1, 'x')], { maxLineBytes: 10000 });
  assert.deepEqual(r.cmds, [{ op: 'write', id: 1, data: 'small' }]);
  assert.match(r.stderr, /cannot be sent in framing "packet2"/);
});

test('constructor hooks accept processFrame and clientEof', async () => {
  const seen = [];
  const loop = new ServerLoop({
    processFrame: (client, buf) => seen.push(['frame', client.id, buf.toString()]),
    clientEof: (client) => seen.push(['eof', client.id]),
  });
  const r = await drive(loop, [hello + connect(1) + frame(1, 'a') + eof(1)]);
  assert.deepEqual(seen, [['frame', 1, 'a'], ['eof', 1]]);
  assert.deepEqual(r.cmds, []); // the clientEof hook replaced the default close
  assert.throws(() => new ServerLoop({ processframe() {} }), /unknown hook "processframe" \(known: .*processFrame, clientEof/);
});

// ---- hooks that cannot serve the framing ------------------------------------

class FramesOnly extends ServerLoop {
  processFrame(client, frame) {
    client.write(frame);
  }
}

class BytesOnly extends ServerLoop {
  processClientData(client, buf) {
    client.write(buf);
    return buf.length;
  }
}

const mismatches = [
  {
    name: 'processFrame only, tgate in raw mode',
    loop: () => new FramesOnly(),
    hello: helloFor('raw'),
    line:
      'tgate-handler: FramesOnly defines processFrame but not processClientData, and tgate runs in raw mode ' +
      '(hello framing "raw"), where every client would fail: start tgate with --framing line (or another ' +
      'framing) or implement processClientData\n',
  },
  {
    name: 'processFrame only (a constructor hook), an old tgate whose hello has no framing',
    loop: () => new ServerLoop({ processFrame() {} }),
    hello: msg({ op: 'hello', protocol: 1 }),
    line:
      'tgate-handler: this handler defines processFrame but not processClientData, and tgate runs in raw mode ' +
      '(hello framing "raw"), where every client would fail: start tgate with --framing line (or another ' +
      'framing) or implement processClientData\n',
  },
  {
    name: 'processClientData only, tgate --framing line',
    loop: () => new BytesOnly(),
    hello: helloFor('line'),
    line:
      'tgate-handler: BytesOnly defines processClientData but not processFrame, and tgate runs with ' +
      '--framing line, where every client would fail: start tgate with --framing raw or implement processFrame\n',
  },
  {
    name: 'processClientData only (a constructor hook), tgate --framing netstring',
    loop: () => new ServerLoop({ processClientData: (c, buf) => buf.length }),
    hello: helloFor('netstring'),
    line:
      'tgate-handler: this handler defines processClientData but not processFrame, and tgate runs with ' +
      '--framing netstring, where every client would fail: start tgate with --framing raw or implement processFrame\n',
  },
];

for (const { name, loop: make, hello: h, line } of mismatches) {
  test(`hooks that cannot serve the framing end run() at hello: ${name}`, async () => {
    const loop = make();
    const out = recorder();
    const err = recorder();
    const input = h + connect(1) + msg({ op: 'data', id: 1, data: 'x' }) + frame(1, 'x');
    await assert.rejects(
      loop.run({ stdin: Readable.from([Buffer.from(input)]), stdout: out.stream, stderr: err.stream }),
      (e) => e.code === 'TGATE_FRAMING_MISMATCH' && `tgate-handler: ${e.message}\n` === line,
    );
    assert.equal(err.chunks.join(''), line); // one line, no stack
    assert.equal(out.chunks.join(''), ''); // nothing handled after hello
    assert.equal(loop.clients.size, 0);
  });
}

test('hooks that fit the framing, both hooks, or neither (a banner) serve without complaint', async () => {
  const banner = () =>
    new ServerLoop({
      clientConnected(client) {
        client.write('hi');
        client.close();
      },
    });
  class Both extends ServerLoop {
    processClientData(client, buf) {
      client.write(buf);
      return buf.length;
    }
    processFrame(client, frame) {
      client.write(frame);
    }
  }
  const data = (id, s) => msg({ op: 'data', id, data: s });
  for (const [loop, input, cmds] of [
    [new BytesOnly(), helloFor('raw') + connect(1) + data(1, 'x'), [{ op: 'write', id: 1, data: 'x' }, { op: 'consumed', id: 1, n: 1 }]],
    [new FramesOnly(), helloFor('crlf') + connect(1) + frame(1, 'x'), [{ op: 'write', id: 1, data: 'x' }]],
    [new Both(), helloFor('raw') + connect(1) + data(1, 'x'), [{ op: 'write', id: 1, data: 'x' }, { op: 'consumed', id: 1, n: 1 }]],
    [new Both(), helloFor('line') + connect(1) + frame(1, 'x'), [{ op: 'write', id: 1, data: 'x' }]],
    [banner(), helloFor('raw') + connect(1), [{ op: 'write', id: 1, data: 'hi' }, { op: 'close', id: 1 }]],
    [banner(), helloFor('packet2') + connect(1), [{ op: 'write', id: 1, data: 'hi' }, { op: 'close', id: 1 }]],
  ]) {
    const r = await drive(loop, [input]);
    assert.deepEqual(r.cmds, cmds);
    assert.equal(r.stderr, '');
  }
});
