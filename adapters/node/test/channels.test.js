// Workers and channels (docs/protocol.md, "Workers and channels"), in-process:
// hello's worker fields, subscribe / unsubscribe / publish on the wire, and
// their place in the turn's line, next to the writes and the consumed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { PassThrough } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';

import { Client, ServerLoop } from '../index.js';
import { TICK, connect, drive, helloFor, msg, recorder } from './harness.js';

const hello = helloFor('raw');
const data = (id, s, eof) => msg(eof ? { op: 'data', id, data: s, eof: true } : { op: 'data', id, data: s });
const disconnect = (id, reason = 'eof') => msg({ op: 'disconnect', id, reason });
const frame = (id, s) => msg({ op: 'frame', id, data: s });

test('hello: worker and workers, 0 and 1 when hello lacks them or before it', async () => {
  const seen = [];
  const hooks = {
    clientConnected() {
      seen.push([this.worker, this.workers]);
    },
  };
  const loop = new ServerLoop(hooks);
  assert.equal(loop.worker, 0);
  assert.equal(loop.workers, 1);
  const withFields = msg({ ...JSON.parse(hello), worker: 2, workers: 4 });
  await drive(loop, [withFields + connect(1)]);
  assert.deepEqual(seen, [[2, 4]]);
  assert.equal(loop.hello.workers, 4);

  const old = new ServerLoop(hooks);
  await drive(old, [hello + connect(1)]);
  assert.deepEqual(seen.at(-1), [0, 1]);

  // Nonsense is ignored: defaults stay.
  const bad = new ServerLoop(hooks);
  await drive(bad, [msg({ ...JSON.parse(hello), worker: 5, workers: '4' }) + connect(1)]);
  assert.deepEqual(seen.at(-1), [0, 1]);
});

test('subscribe, unsubscribe and publish on the wire; optional fields omitted', async () => {
  const loop = new ServerLoop({
    clientConnected(client) {
      client.subscribe('room');
      client.subscribe('caf\u00e9'); // channel names are any string
      client.unsubscribe('caf\u00e9');
    },
    processClientData(client, buf) {
      this.publish('room', buf); // to every subscriber
      this.publish('room', buf, { exclude: client }); // but the sender
      this.publish('room', 'h\u00e9', { exclude: 2 }); // an id; a string is sent as UTF-8
      this.publish('room', new Uint8Array([0, 255]), { raw: true }); // raw means nothing in raw mode
      this.publish('room', ''); // no bytes: nothing to send
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1) + data(1, 'hi\u00ff')]);
  assert.equal(r.stderr, '');
  assert.deepEqual(r.lines, [
    [
      { op: 'subscribe', id: 1, channel: 'room' },
      { op: 'subscribe', id: 1, channel: 'caf\u00e9' },
      { op: 'unsubscribe', id: 1, channel: 'caf\u00e9' },
      // (the connect's commands wait for the next line of the same chunk)
      { op: 'publish', channel: 'room', data: 'hi\u00ff' },
      { op: 'publish', channel: 'room', data: 'hi\u00ff', exclude: 1 },
      { op: 'publish', channel: 'room', data: 'h\u00c3\u00a9', exclude: 2 },
      { op: 'publish', channel: 'room', data: '\u0000\u00ff' },
      { op: 'consumed', id: 1, n: 3 },
    ],
  ]);
  // The exact bytes: no extra fields, the keys in the documented order.
  assert.ok(r.text.includes('{"op":"subscribe","id":1,"channel":"room"}'), r.text);
  assert.ok(r.text.includes('{"op":"publish","channel":"room","data":"hi\u00ff","exclude":1}'), r.text);
});

test('publish, subscribe and writes share the consumed line, in the order issued; closes after', async () => {
  const loop = new ServerLoop({
    processClientData(client, buf) {
      client.write('before ');
      client.subscribe('a');
      this.publish('a', 'news', { exclude: client });
      client.write('after');
      this.clients.get(2).unsubscribe('a');
      client.close(); // the current client's close goes after its consumed
      client.subscribe('b'); // closed: ignored
      this.publish('a', 'bye'); // not tied to a client: still sent
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1) + connect(2) + data(1, 'go') + TICK]);
  assert.equal(r.writes.length, 1);
  assert.deepEqual(r.lines, [
    [
      { op: 'write', id: 1, data: 'before ' },
      { op: 'subscribe', id: 1, channel: 'a' },
      { op: 'publish', channel: 'a', data: 'news', exclude: 1 },
      { op: 'write', id: 1, data: 'after' }, // not coalesced across the publish
      { op: 'unsubscribe', id: 2, channel: 'a' },
      { op: 'publish', channel: 'a', data: 'bye' },
      { op: 'consumed', id: 1, n: 2 },
      { op: 'close', id: 1 },
    ],
  ]);
});

test('commands from connect, disconnect and tick go out in that turn; one stdout write per chunk', async () => {
  const loop = new ServerLoop({
    clientConnected(client) {
      client.subscribe('all');
      this.publish('all', `+${client.id}`, { exclude: client.id });
    },
    clientDisconnected(client) {
      client.subscribe('all'); // gone: ignored
      this.publish('all', `-${client.id}`);
    },
    update() {
      this.publish('all', 'tick');
    },
    processClientData(client, buf) {
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1) + connect(2), disconnect(1) + TICK + data(2, 'x')]);
  assert.equal(r.writes.length, 2);
  assert.deepEqual(r.lines, [
    [
      { op: 'subscribe', id: 1, channel: 'all' },
      { op: 'publish', channel: 'all', data: '+1', exclude: 1 },
      { op: 'subscribe', id: 2, channel: 'all' },
      { op: 'publish', channel: 'all', data: '+2', exclude: 2 },
    ],
    [
      // One line for the chunk's disconnect, tick and data: tgate applies it at
      // once, so the two publishes of plain bytes to one channel coalesce.
      { op: 'publish', channel: 'all', data: '-1tick' },
      { op: 'consumed', id: 2, n: 1 },
    ],
  ]);
});

test('consecutive publishes of bytes to the same channel and exclude coalesce; frames never do', async () => {
  const loop = new ServerLoop({
    processClientData(client, buf) {
      for (const line of buf.toString('latin1').split(/(?<=\n)/)) this.publish('a', line, { exclude: client });
      this.publish('a', '!', { exclude: client.id }); // the same exclude, as an id
      this.publish('a', 'x'); // another exclude
      this.publish('b', 'y'); // another channel
      this.publish('b', 'z');
      return buf.length;
    },
    processFrame(client, f) {
      this.publish('a', f);
      this.publish('a', f); // two frames
      this.publish('a', '> ', { raw: true });
      this.publish('a', '$ ', { raw: true }); // raw bytes coalesce
      this.publish('a', f);
    },
  });
  const r = await drive(loop, [hello + connect(1) + data(1, 'one\ntwo\nthree\n')]);
  assert.deepEqual(r.lines, [
    [
      { op: 'publish', channel: 'a', data: 'one\ntwo\nthree\n!', exclude: 1 },
      { op: 'publish', channel: 'a', data: 'x' },
      { op: 'publish', channel: 'b', data: 'yz' },
      { op: 'consumed', id: 1, n: 14 },
    ],
  ]);
  const framed = new ServerLoop({ processFrame: loop.processFrame });
  const f = await drive(framed, [helloFor('line') + connect(1) + frame(1, 'f')]);
  assert.deepEqual(f.lines, [
    [
      { op: 'publish', channel: 'a', data: 'f' },
      { op: 'publish', channel: 'a', data: 'f' },
      { op: 'publish', channel: 'a', data: '> $ ', raw: true },
      { op: 'publish', channel: 'a', data: 'f' },
    ],
  ]);
});

test('framed modes: a publish is one frame (empty allowed), raw: true only when asked', async () => {
  const loop = new ServerLoop({
    processFrame(client, f) {
      this.publish('room', f, { exclude: client });
      this.publish('room', '');
      this.publish('room', '> ', { raw: true });
      this.publish('room', '', { raw: true }); // no bytes, unframed: nothing
    },
  });
  const r = await drive(loop, [helloFor('line') + connect(1) + frame(1, 'hi')]);
  assert.deepEqual(r.lines, [
    [
      { op: 'publish', channel: 'room', data: 'hi', exclude: 1 },
      { op: 'publish', channel: 'room', data: '' },
      { op: 'publish', channel: 'room', data: '> ', raw: true },
    ],
  ]);
});

test('bad channels and excludes throw (and close the client, from processClientData)', async () => {
  const errs = [];
  const loop = new ServerLoop({
    processClientData(client, buf) {
      assert.throws(() => client.subscribe(''), RangeError);
      assert.throws(() => client.subscribe(7), TypeError);
      assert.throws(() => client.unsubscribe(undefined), TypeError);
      assert.throws(() => this.publish('', 'x'), RangeError);
      assert.throws(() => this.publish(['a'], 'x'), TypeError);
      assert.throws(() => this.publish('a', 42), TypeError);
      assert.throws(() => this.publish('a', 'x', { exclude: 'me' }), TypeError);
      assert.throws(() => this.publish('a', 'x', { exclude: 1.5 }), TypeError);
      client.subscribe(null); // uncaught: reported, the client is closed
      return buf.length;
    },
    onError: (err, client, hook) => errs.push([err.constructor.name, client.id, hook]),
  });
  const r = await drive(loop, [hello + connect(1) + data(1, 'x')]);
  assert.deepEqual(errs, [['TypeError', 1, 'processClientData']]);
  assert.deepEqual(r.lines, [[{ op: 'consumed', id: 1, n: 0 }, { op: 'close', id: 1 }]]);
});

test('publishing from asynchronous code is flushed on its own; exclude: null is no exclude', async () => {
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
  saved.subscribe('later');
  loop.publish('later', 'x', { exclude: null });
  await tick();
  await tick();
  stdin.end();
  await done;
  assert.deepEqual(out.chunks, [
    '[{"op":"subscribe","id":1,"channel":"later"},{"op":"publish","channel":"later","data":"x"}]\n',
  ]);
});

test('a publish over the line limit is split into pieces, in order, consumed last', async () => {
  const big = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 256));
  const loop = new ServerLoop({
    processClientData(client, buf) {
      client.subscribe('big');
      this.publish('big', big, { exclude: client });
      return buf.length;
    },
  });
  const r = await drive(loop, [hello + connect(1) + data(1, 'x')], { maxLineBytes: 1000 });
  for (const line of r.text.split('\n').slice(0, -1)) assert.ok(Buffer.byteLength(line) + 1 <= 1000);
  assert.deepEqual(r.cmds[0], { op: 'subscribe', id: 1, channel: 'big' });
  const pieces = r.cmds.filter((c) => c.op === 'publish');
  assert.ok(pieces.length > 3);
  for (const p of pieces) assert.deepEqual({ ...p, data: '' }, { op: 'publish', channel: 'big', data: '', exclude: 1 });
  assert.equal(pieces.map((c) => c.data).join(''), big.toString('latin1'));
  assert.deepEqual(r.cmds.at(-1), { op: 'consumed', id: 1, n: 1 });
});

test('a framed publish over the line limit is framed by the adapter, then sent raw in pieces', async () => {
  const big = 'y'.repeat(3000);
  const loop = new ServerLoop({
    processFrame() {
      this.publish('big', big);
    },
  });
  const r = await drive(loop, [helloFor('netstring') + connect(1) + frame(1, 'go')], { maxLineBytes: 1000 });
  const pieces = r.cmds.filter((c) => c.op === 'publish');
  assert.ok(pieces.length > 1 && pieces.every((c) => c.raw === true));
  assert.equal(pieces.map((c) => c.data).join(''), `3000:${big},`);
});

test('a replayed connect sets client.replayed before clientConnected; a first connect does not', async () => {
  const seen = {};
  const loop = new ServerLoop({
    clientConnected(client) {
      seen[client.id] = client.replayed;
    },
  });
  const withReplay = (id, replay) => msg({ ...JSON.parse(connect(id)), replay });
  // Only a real true counts: the field is absent on a first connect.
  const r = await drive(loop, [
    hello + connect(1) + withReplay(2, true) + withReplay(3, false) + withReplay(4, 1) + withReplay(5, 'true'),
  ]);
  assert.equal(r.stderr, '');
  assert.equal(r.text, '');
  assert.deepEqual(seen, { 1: false, 2: true, 3: false, 4: false, 5: false });
  assert.deepEqual(Object.fromEntries([...loop.clients].map(([id, c]) => [id, c.replayed])), seen);
});

test('Client exposes subscribe and unsubscribe', () => {
  assert.equal(typeof Client.prototype.subscribe, 'function');
  assert.equal(typeof Client.prototype.unsubscribe, 'function');
  assert.equal(typeof ServerLoop.prototype.publish, 'function');
});
