// Real processes: the examples and the adapter over the real process stdio.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { FENCE, answers, fenced, simulate } from './harness.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const ADAPTER = pathToFileURL(fileURLToPath(new URL('../index.js', import.meta.url))).href;

const msg = (obj) => JSON.stringify(obj) + '\n';
const hello = msg({ op: 'hello', protocol: 1, tgate: '0.1.0', framing: 'raw', bufsize: 128, max_bufsize: 65536, update_time: 1.0 });
const connect = (id) => msg({ op: 'connect', id, peer: ['127.0.0.1', 40000 + id], local: ['127.0.0.1', 7000] });
const data = (id, s, eof) => msg(eof ? { op: 'data', id, data: s, eof: true } : { op: 'data', id, data: s });
const disconnect = (id, reason = 'eof') => msg({ op: 'disconnect', id, reason });

/** Spawn node with `args`, feed `input`, end stdin; resolve when the process has exited. */
function run(args, input, { timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    child.stdout.on('data', (b) => out.push(b));
    child.stderr.on('data', (b) => err.push(b));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${args.join(' ')} did not exit within ${timeoutMs} ms after stdin ended`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      resolve({ code, signal, stdout, stderr: Buffer.concat(err).toString('utf8'), ms: Date.now() - t0 });
    });
    let t0 = Date.now();
    child.stdin.end(input, () => {
      t0 = Date.now();
    });
  });
}

function commands(stdout) {
  assert.ok(stdout === '' || stdout.endsWith('\n'));
  return stdout
    .split('\n')
    .slice(0, -1)
    .map((l) => JSON.parse(l)) // every stdout line is protocol JSON
    .flatMap((l) => (Array.isArray(l) ? l : [l]));
}

test('examples/echo.js: echoes, answers each data, exits promptly when stdin ends', async () => {
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('latin1');
  const r = await run(['examples/echo.js'], [
    hello, connect(1), data(1, 'h'), data(1, 'i\n'), msg({ op: 'tick' }), connect(2), data(2, all),
    data(1, '', true), disconnect(1), disconnect(2, 'shutdown'),
  ].join(''));
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.equal(
    r.stdout,
    '[{"op":"write","id":1,"data":"h"},{"op":"consumed","id":1,"n":1}]\n' +
      '[{"op":"write","id":1,"data":"i\\n"},{"op":"consumed","id":1,"n":2}]\n' +
      `[${JSON.stringify({ op: 'write', id: 2, data: all })},{"op":"consumed","id":2,"n":256}]\n` +
      '{"op":"consumed","id":1,"n":0}\n',
  );
  assert.ok(r.ms < 3000, `exited ${r.ms} ms after stdin ended`);
});

const CHAT_RECEIVED = {
  1: '* 2 joined\n* 3 joined\n2: yo\n3: caf\u00c3\u00a9 \u0000\u00ff\r\n2: bye\n2: partial\n* 2 left\n',
  2: '* 3 joined\n1: hello\n1: second\n1: \n3: caf\u00c3\u00a9 \u0000\u00ff\r\n1: third\n',
  3: '2: yo\n1: hello\n1: second\n1: \n1: third\n2: bye\n2: partial\n* 2 left\n* 1 left\n',
};

const CHAT_RAW = [
  hello, connect(1), connect(2), connect(3),
  data(1, 'hel'), // partial: waits
  data(2, 'yo\r\n'),
  data(1, 'lo\r\nsecond\n\r\nthird'),
  data(3, 'caf\u00c3\u00a9 \u0000\u00ff\r\r\n'), // raw bytes pass through; only one \r is stripped
  data(1, '\n'),
  data(2, 'bye\npartial\r', true), // an unterminated last line is still a line
  disconnect(2),
  disconnect(1, 'reset'),
];

test('examples/chat.js: joined, lines to the others, partial lines wait, left', async () => {
  // A fence after each message tells which commands answer it (see harness.js).
  const r = await run(['examples/chat.js'], fenced(CHAT_RAW).join(''));
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  const cmds = commands(r.stdout);
  assert.deepEqual(
    cmds.filter((c) => c.op === 'consumed' && c.id !== FENCE).map((c) => [c.id, c.n]),
    [[1, 0], [2, 4], [1, 16], [3, 11], [1, 6], [2, 12]],
  );
  assert.deepEqual(cmds.filter((c) => c.op === 'close'), []);
  // No list of clients: one channel, each message published to it but its author.
  const per = answers(cmds, CHAT_RAW.length - 1);
  assert.deepEqual(per[1], [
    { op: 'subscribe', id: 2, channel: 'chat' },
    { op: 'publish', channel: 'chat', data: '* 2 joined\n', exclude: 2 },
  ]);
  assert.deepEqual(per[4], [
    { op: 'publish', channel: 'chat', data: '2: yo\n', exclude: 2 },
    { op: 'consumed', id: 2, n: 4 },
  ]);
  assert.deepEqual(per[9], [{ op: 'publish', channel: 'chat', data: '* 2 left\n' }]);
  assert.ok(cmds.every((c) => c.op !== 'write'), 'no write: everything goes through the channel');
  assert.deepEqual(simulate(CHAT_RAW.slice(1), per), CHAT_RECEIVED);
  // And without fences, the same replies and bytes (publishes of one line may
  // coalesce across messages: tgate applies a line at once).
  const plain = commands((await run(['examples/chat.js'], CHAT_RAW.join(''))).stdout);
  const replies = (cmds) => cmds.filter((c) => c.op === 'consumed');
  const published = (cmds) => cmds.filter((c) => c.op === 'publish').map((c) => c.data).join('');
  assert.deepEqual(replies(plain), replies(per.flat()));
  assert.equal(published(plain), published(per.flat()));
});

test('examples/chat.js: a replayed client is subscribed again but not announced again', async () => {
  // Two processes, one gateway: the second is a restarted handler, replayed
  // the live clients' connects (a new process knows nothing else).
  const replayed = (id) => msg({ ...JSON.parse(connect(id)), replay: true });
  const first = [hello, connect(1), connect(2), data(1, 'a\n')];
  const second = [hello, replayed(1), replayed(2), data(2, 'b\n'), connect(3), data(1, 'c\n')];
  const per = [];
  for (const input of [first, second]) {
    const r = await run(['examples/chat.js'], fenced(input).join(''));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    per.push(...answers(commands(r.stdout), input.length - 1));
  }
  // The replayed connects (per[3], per[4]): a subscribe, no publish.
  assert.deepEqual(per[3], [{ op: 'subscribe', id: 1, channel: 'chat' }]);
  assert.deepEqual(per[4], [{ op: 'subscribe', id: 2, channel: 'chat' }]);
  assert.deepEqual(per[6], [
    { op: 'subscribe', id: 3, channel: 'chat' },
    { op: 'publish', channel: 'chat', data: '* 3 joined\n', exclude: 3 },
  ]);
  assert.deepEqual(simulate([...first.slice(1), ...second.slice(1)], per), {
    1: '* 2 joined\n2: b\n* 3 joined\n',
    2: '1: a\n* 3 joined\n1: c\n',
    3: '1: c\n',
  });
});

test('examples/chat.js under --framing line: the clients get the same bytes as in raw mode', async () => {
  const frame = (id, s) => msg({ op: 'frame', id, data: s });
  const input = [
    hello.replace('"raw"', '"line"'), connect(1), connect(2), connect(3),
    frame(2, 'yo'),
    frame(1, 'hello'),
    frame(1, 'second'),
    frame(1, ''),
    frame(3, 'caf\u00c3\u00a9 \u0000\u00ff\r'),
    frame(1, 'third'),
    frame(2, 'bye'),
    frame(2, 'partial'),
    msg({ op: 'eof', id: 2 }),
    disconnect(2, 'closed'),
    disconnect(1, 'reset'),
  ];
  const r = await run(['examples/chat.js'], fenced(input).join(''));
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  const cmds = commands(r.stdout);
  assert.deepEqual(cmds.filter((c) => c.op === 'consumed' && c.id !== FENCE), []);
  assert.deepEqual(cmds.filter((c) => c.op === 'close'), [{ op: 'close', id: 2 }]);
  const per = answers(cmds, input.length - 1);
  assert.deepEqual(per[1], [
    { op: 'subscribe', id: 2, channel: 'chat' },
    { op: 'publish', channel: 'chat', data: '* 2 joined', exclude: 2 },
  ]);
  assert.deepEqual(per[6], [{ op: 'publish', channel: 'chat', data: '1: ', exclude: 1 }]);
  // tgate ends each publish with "\n": the clients get the raw-mode bytes.
  assert.deepEqual(simulate(input.slice(1), per, { framed: true }), CHAT_RECEIVED);
});

test('examples/echo.js in a framed mode: each frame back as one frame, close on eof', async () => {
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('latin1');
  const r = await run(['examples/echo.js'], [
    hello.replace('"raw"', '"netstring"'), connect(1), connect(2),
    msg({ op: 'frame', id: 1, data: all }),
    msg({ op: 'frame', id: 2, data: '' }),
    msg({ op: 'tick' }),
    msg({ op: 'eof', id: 1 }),
    disconnect(1, 'closed'),
  ].join(''));
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  // (how the commands are grouped into lines depends on how stdin was chunked)
  assert.deepEqual(commands(r.stdout), [
    { op: 'write', id: 1, data: all },
    { op: 'write', id: 2, data: '' },
    { op: 'close', id: 1 },
  ]);
});

test('console output in handler code goes to stderr, never stdout; no handles left open', async () => {
  const script = `
    import { ServerLoop } from ${JSON.stringify(ADAPTER)};
    const loop = new ServerLoop({
      processClientData(client, buf) {
        console.log('LOG', buf.toString());
        console.info('INFO');
        console.debug('DEBUG');
        console.warn('WARN');
        console.dir({ dir: 1 });
        console.table([{ table: 1 }]);
        client.write(buf);
        return buf.length;
      },
    });
    await loop.run({ exitTimeout: null }); // no safety net: the process must end by itself
    console.log('after run');
  `;
  const r = await run(['--input-type=module', '-e', script], hello + connect(1) + data(1, 'ping'));
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, '[{"op":"write","id":1,"data":"ping"},{"op":"consumed","id":1,"n":4}]\n');
  for (const word of ['LOG ping', 'INFO', 'DEBUG', 'WARN', 'dir: 1', 'table', 'after run']) {
    assert.ok(r.stderr.includes(word), `${word} on stderr`);
  }
});

test('the process exits even if handler code leaves a timer running', async () => {
  const script = `
    import { ServerLoop } from ${JSON.stringify(ADAPTER)};
    await new ServerLoop({
      clientConnected() { setInterval(() => {}, 1000); },
      processClientData: (c, buf) => buf.length,
    }).run({ exitTimeout: 200 });
  `;
  const r = await run(['--input-type=module', '-e', script], hello + connect(1) + data(1, 'x'));
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, '{"op":"consumed","id":1,"n":1}\n');
  assert.ok(r.ms < 3000, `exited ${r.ms} ms after stdin ended`);
});

test('an exception in a real process: one stderr line naming the client, the process keeps serving', async () => {
  const script = `
    import { ServerLoop } from ${JSON.stringify(ADAPTER)};
    await new ServerLoop({
      processClientData(client, buf) {
        if (client.id === 1) throw new RangeError('bad input');
        client.write(buf);
        return buf.length;
      },
    }).run();
  `;
  const r = await run(['--input-type=module', '-e', script], hello + connect(1) + connect(2) + data(1, 'x') + data(2, 'y'));
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    r.stdout,
    '[{"op":"consumed","id":1,"n":0},{"op":"close","id":1}]\n' +
      '[{"op":"write","id":2,"data":"y"},{"op":"consumed","id":2,"n":1}]\n',
  );
  assert.match(r.stderr, /^tgate-handler: processClientData failed for client 1 \(127\.0\.0\.1:40001\); closing client 1: RangeError: bad input\nRangeError: bad input\n {4}at /);
});

test('processFrame only while tgate runs in raw mode: one stderr line, exit status 1, nothing on stdout', async () => {
  const script = `
    import { ServerLoop } from ${JSON.stringify(ADAPTER)};
    class LineEcho extends ServerLoop {
      processFrame(client, frame) { client.write(frame); }
    }
    setInterval(() => {}, 1000); // handler code keeping the process alive does not matter
    await new LineEcho().run();
    console.error('not reached');
  `;
  const r = await run(['--input-type=module', '-e', script], hello + connect(1) + data(1, 'hi\n'));
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(
    r.stderr,
    'tgate-handler: LineEcho defines processFrame but not processClientData, and tgate runs in raw mode ' +
      '(hello framing "raw"), where every client would fail: start tgate with --framing line (or another ' +
      'framing) or implement processClientData; exiting\n',
  );
});

test('processClientData only while tgate runs --framing line: exit status 1 at hello, even with stdin left open', async () => {
  const script = `
    import { ServerLoop } from ${JSON.stringify(ADAPTER)};
    await new ServerLoop({ processClientData: (c, buf) => buf.length }).run();
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT });
  const err = [];
  child.stderr.on('data', (b) => err.push(b));
  child.stdout.on('data', () => assert.fail('nothing on stdout'));
  // stdin stays open (as tgate keeps it): the adapter must exit by itself.
  child.stdin.write(msg({ op: 'hello', protocol: 1, tgate: '0.1.0', framing: 'line', bufsize: 128, max_bufsize: 65536, update_time: 1.0 }));
  const code = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('did not exit with stdin open'));
    }, 5000);
    child.on('close', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  assert.equal(code, 1);
  assert.match(Buffer.concat(err).toString(), /^tgate-handler: this handler defines processClientData but not processFrame, and tgate runs with --framing line, .*; exiting\n$/);
});
