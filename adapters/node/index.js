// tgate-handler: the Node adapter for tgate's handler protocol, version 1
// (docs/protocol.md). One file, no dependencies, Node 20+.
//
// It is Haxe's neko.net.ServerLoop carried across a pipe: tgate holds the TCP
// sockets and sends each client's new bytes on our stdin as JSON lines; this
// module keeps a mirror of every client's unconsumed bytes, calls your
// processClientData(client, buf) in a loop, and answers on stdout with one
// `consumed` per `data`, in the same line (a JSON array) as the writes,
// broadcasts, closes, subscribes and publishes your code produced while
// handling it, in order, so tgate applies them atomically (exact replay across
// handler restarts).
//
//   import { ServerLoop } from 'tgate-handler';
//   class Echo extends ServerLoop {
//     processClientData(client, buf) { client.write(buf); return buf.length; }
//   }
//   await new Echo().run();
//
// Framed modes (tgate --framing line|crlf|packet2|packet4|netstring, see
// this.framing): tgate splits the client's bytes into frames and sends each as
// a `frame` message; override processFrame(client, frame) instead, and
// clientEof(client) for the client's half-close (the default closes it once
// the writes queued before are out). No `consumed` is sent. Each write() is one
// frame, which tgate frames (in `line` mode it appends the "\n"); writeRaw()
// sends bytes unframed.
//
//   class LineEcho extends ServerLoop {
//     processFrame(client, frame) { client.write(frame); }
//   }
//
// Workers and channels (tgate --workers N): tgate may run N processes of the
// same handler, each serving its own share of the clients; this.worker is this
// process's index (0 to N-1) and this.workers is N (0 and 1 when tgate does not
// say), and this.clients holds this process's clients only. Channels live in
// tgate and span every worker: client.subscribe('room'), client.unsubscribe(
// 'room') (tgate also drops a client from its channels when it disconnects),
// and this.publish('room', data, { exclude: client }) sends the bytes to every
// subscribed client, whichever worker serves it, but `exclude` (a Client or an
// id). Any worker may also write to or close any live client id.
//
// A handler whose hooks cannot serve the framing tgate announces in `hello`
// (processFrame but no processClientData while tgate runs in raw mode, or the
// reverse in a framed mode) would fail every client: run() says so in one line
// on stderr and, when serving process.stdin, exits the process with status 1
// (otherwise it rejects with an Error whose code is 'TGATE_FRAMING_MISMATCH').
//
// Stdout carries protocol lines only. When run() writes to the real
// process.stdout it re-routes the global console (console.log, info, debug,
// warn, dir, table, ...) to stderr, so a stray console.log cannot corrupt the
// stream; tgate passes stderr through to its own. Writing to process.stdout
// directly is still your bug.

import { Buffer } from 'node:buffer';
import { Console } from 'node:console';
import { inspect } from 'node:util';

const NL = 0x0a;
const EMPTY = Buffer.alloc(0);
/** Longest line tgate accepts from a handler (docs/protocol.md). */
const MAX_LINE_BYTES = 16 * 1024 * 1024;
const HOOKS = [
  'clientConnected',
  'processClientData',
  'processFrame',
  'clientEof',
  'clientDisconnected',
  'update',
  'onError',
];
/** Hooks whose failure closes the client. */
const CLOSING_HOOKS = new Set(['clientConnected', 'processClientData', 'processFrame', 'clientEof']);
/** error.code of the rejection of run() when the hooks cannot serve tgate's framing. */
const FRAMING_MISMATCH = 'TGATE_FRAMING_MISMATCH';
// Per-client state the loop keeps out of the public surface.
const LOOP = Symbol('tgate.loop');
const MIRROR = Symbol('tgate.mirror');

/** Bytes (Buffer, any ArrayBufferView, ArrayBuffer) or a string (UTF-8) to a latin-1 wire string. */
function toWire(data) {
  if (typeof data === 'string') return Buffer.from(data, 'utf8').toString('latin1');
  if (Buffer.isBuffer(data)) return data.toString('latin1');
  if (ArrayBuffer.isView(data)) {
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('latin1');
  }
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString('latin1');
  throw new TypeError(
    `write() takes a Buffer, Uint8Array or string, not ${inspect(data, { depth: 0 })}`,
  );
}

/** A stdin chunk (Buffer, other Uint8Array, or string from an object-mode stream) as a Buffer. */
function toBuffer(chunk) {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
}

function peerString(addr) {
  if (!Array.isArray(addr) || addr.length < 2) return '?';
  const host = String(addr[0]);
  return host.includes(':') ? `[${host}]:${addr[1]}` : `${host}:${addr[1]}`;
}

function serialize(cmd) {
  switch (cmd.op) {
    case 'write': {
      const data = cmd.parts.length === 1 ? cmd.parts[0] : cmd.parts.join('');
      const obj = cmd.ids ? { op: 'write', ids: cmd.ids, data } : { op: 'write', id: cmd.id, data };
      if (cmd.raw) obj.raw = true;
      return JSON.stringify(obj);
    }
    case 'publish': {
      const data = cmd.parts.length === 1 ? cmd.parts[0] : cmd.parts.join('');
      const obj = { op: 'publish', channel: cmd.channel, data };
      if (cmd.exclude !== undefined) obj.exclude = cmd.exclude;
      if (cmd.raw) obj.raw = true;
      return JSON.stringify(obj);
    }
    case 'consumed':
      return `{"op":"consumed","id":${cmd.id},"n":${cmd.n}}`;
    case 'subscribe':
    case 'unsubscribe':
      return JSON.stringify({ op: cmd.op, id: cmd.id, channel: cmd.channel });
    default:
      return JSON.stringify({ op: cmd.op, id: cmd.id });
  }
}

/** A channel name, checked: a non-empty string. */
function checkChannel(channel, what) {
  if (typeof channel !== 'string') {
    throw new TypeError(`${what}: the channel must be a string, not ${inspect(channel, { depth: 0 })}`);
  }
  if (channel.length === 0) throw new RangeError(`${what}: the channel cannot be empty`);
  return channel;
}

/** A payload (latin-1 string) framed as tgate frames it; null if it cannot be. */
function frameWire(framing, s) {
  const n = s.length;
  switch (framing) {
    case 'line':
      return s + '\n';
    case 'crlf':
      return s + '\r\n';
    case 'packet2':
      return n < 0x10000 ? String.fromCharCode(n >>> 8, n & 0xff) + s : null;
    case 'packet4':
      return n < 2 ** 32
        ? String.fromCharCode(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff) + s
        : null;
    case 'netstring':
      return `${n}:${s},`;
    default:
      return null;
  }
}

function sameIds(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Route every output method of the global console to `stream`. */
function redirectConsole(stream) {
  const c = new Console({ stdout: stream, stderr: stream });
  for (const key of Object.keys(Console.prototype)) {
    if (typeof c[key] === 'function') globalThis.console[key] = c[key].bind(c);
  }
}

/** One TCP client, as tgate describes it. Created by the loop on `connect`. */
export class Client {
  constructor(loop, id, peer, local, replayed = false) {
    /** Positive integer, never reused while tgate runs. */
    this.id = id;
    /** [host, port] of the remote end. */
    this.peer = peer;
    /** [host, port] of the listening socket. */
    this.local = local;
    /** Whatever clientConnected() returned: your per-client state. */
    this.data = undefined;
    /**
     * True once the client has half-closed: the current data is its last (in
     * framed modes: set before clientEof()).
     */
    this.eof = false;
    /** The disconnect reason (`eof`, `reset`, `closed`, ...), set on disconnect. */
    this.reason = undefined;
    /** True once close() was called or the client disconnected: writes are ignored. */
    this.closed = false;
    /**
     * True when tgate replayed this client's `connect` (`"replay": true`) to a
     * restarted handler process: the client was already connected to an
     * earlier one. Set before clientConnected().
     */
    this.replayed = replayed;
    Object.defineProperty(this, LOOP, { value: loop });
    Object.defineProperty(this, MIRROR, { value: EMPTY, writable: true });
  }

  /**
   * Queue bytes for this client (Buffer/Uint8Array as is, string as UTF-8). In
   * a framed mode they are one frame, which tgate frames.
   */
  write(data) {
    this[LOOP]._write(this, data, false);
  }

  /** Queue bytes that tgate sends unframed (`"raw": true`). In raw mode: write(). */
  writeRaw(data) {
    this[LOOP]._write(this, data, true);
  }

  /** Close this client once its queued writes are sent. */
  close() {
    this[LOOP]._close(this);
  }

  /**
   * Add this client to `channel` (a non-empty string; created on first use).
   * Channels live in tgate, across every worker process: whichever worker
   * publishes to it reaches this client. Subscribing twice is the same as once;
   * tgate drops the client from its channels when it disconnects.
   */
  subscribe(channel) {
    this[LOOP]._channel(this, 'subscribe', channel);
  }

  /** Remove this client from `channel`. */
  unsubscribe(channel) {
    this[LOOP]._channel(this, 'unsubscribe', channel);
  }

  toString() {
    return `client ${this.id} (${peerString(this.peer)})`;
  }
}

export class ServerLoop {
  /** Live clients by id, in connection order (a client is removed before clientDisconnected). */
  clients = new Map();
  /** The `hello` message, once received. */
  hello = null;
  /** The framing mode `hello` announced: 'raw' (the default), 'line', 'crlf', 'packet2', ... */
  framing = 'raw';
  /** This process's index in tgate's pool of workers (0 to workers - 1; 0 until `hello` says). */
  worker = 0;
  /** How many worker processes tgate runs for this handler (1 until `hello` says). */
  workers = 1;

  #pending = []; // commands not yet in a line: {op, id, ids, parts, n}
  #lines = []; // serialized lines of this turn
  #current = null; // the client whose data is being processed
  #deferredClose = null; // its close, which goes after its consumed
  #partial = []; // pieces of the incomplete trailing input line
  #inTurn = false;
  #running = false;
  #stdout = null;
  #stderr = process.stderr;
  #maxLine = MAX_LINE_BYTES;
  #blocked = false; // the last stdout.write() returned false
  #immediate = null;

  /**
   * @param hooks optional functions overriding the methods of the same name:
   *   clientConnected, processClientData, processFrame, clientEof,
   *   clientDisconnected, update, onError.
   */
  constructor(hooks = undefined) {
    if (hooks == null) return;
    for (const [key, fn] of Object.entries(hooks)) {
      if (!HOOKS.includes(key)) {
        throw new TypeError(`ServerLoop: unknown hook ${JSON.stringify(key)} (known: ${HOOKS.join(', ')})`);
      }
      if (typeof fn !== 'function') throw new TypeError(`ServerLoop: hook ${key} must be a function`);
      this[key] = fn;
    }
  }

  // ---- hooks: override these --------------------------------------------

  /**
   * A client connected. The return value becomes client.data. client.replayed
   * is true when the client is not new (its connect was replayed to this
   * restarted process): don't announce it again.
   */
  clientConnected(client) {
    return undefined;
  }

  /**
   * Handle the front of `buf` (all of this client's unconsumed bytes) and
   * return how many bytes were handled: an integer 0..buf.length, 0 meaning
   * "incomplete, wait for more". Called again while it returns > 0 and bytes
   * remain, with a view of the rest (Buffer.subarray, no copy: many small
   * messages cost work linear in their bytes). Must be synchronous.
   */
  processClientData(client, buf) {
    throw new Error('processClientData is not implemented: override it or pass it to the constructor');
  }

  /**
   * Framed modes: one whole frame from this client (without its delimiter or
   * length prefix). Nothing to return. It may be async: a rejected promise is
   * reported like a throw, which closes this client.
   */
  processFrame(client, frame) {
    throw new Error('processFrame is not implemented: override it or pass it to the constructor');
  }

  /**
   * Framed modes: the client half-closed (client.eof is true). The connection
   * stays open until it is closed: the default closes it, once the writes
   * queued before are sent.
   */
  clientEof(client) {
    client.close();
  }

  /** The client is gone (client.reason says why). Called exactly once. */
  clientDisconnected(client) {}

  /** Called on each tick (every update_time seconds). */
  update() {}

  /**
   * Handler code failed. `hook` names the hook that threw or returned an
   * invalid value; when it is clientConnected or processClientData the client
   * has been closed. Default: one line naming the client, then the stack, on stderr.
   */
  onError(err, client, hook) {
    const who = client ? String(client) : 'no client';
    const closing = client && CLOSING_HOOKS.has(hook) ? `; closing client ${client.id}` : '';
    const first = err instanceof Error ? `${err.name}: ${err.message}` : inspect(err);
    const stack = err instanceof Error && err.stack ? err.stack : inspect(err);
    this.#stderr.write(
      `tgate-handler: ${hook ?? 'handler'} failed for ${who}${closing}: ${first.split('\n')[0]}\n${stack}\n`,
    );
  }

  // ---- commands ------------------------------------------------------------

  /**
   * The same bytes to several clients, in one `write` line with `ids`. In a
   * framed mode they are one frame to each, or unframed with `{ raw: true }`.
   */
  broadcast(clients, data, { raw = false } = {}) {
    const iter = clients instanceof Map ? clients.values() : clients;
    if (iter == null || typeof iter[Symbol.iterator] !== 'function') {
      throw new TypeError('broadcast(clients, data): clients must be an iterable of Client or id');
    }
    const s = toWire(data);
    const seen = new Set();
    for (const c of iter) {
      const client =
        c instanceof Client ? c : typeof c === 'number' ? this.clients.get(c) : undefined;
      if (client === undefined && !(c instanceof Client) && typeof c !== 'number') {
        throw new TypeError(`broadcast: not a Client or id: ${inspect(c, { depth: 0 })}`);
      }
      if (client && !client.closed && client[LOOP] === this) seen.add(client.id);
    }
    if (seen.size === 0) return;
    this.#queueWrite({ op: 'write', ids: [...seen] }, s, raw);
  }

  /**
   * Send the bytes to every client subscribed to `channel` (see
   * client.subscribe()), whichever worker serves it, except `exclude` (a Client
   * or an id). tgate sends them as a write to each would (a string as UTF-8;
   * in a framed mode one frame to each, or unframed with `{ raw: true }`). A
   * channel nobody is subscribed to swallows them.
   */
  publish(channel, data, { exclude = undefined, raw = false } = {}) {
    checkChannel(channel, 'publish');
    let skip;
    if (exclude instanceof Client) skip = exclude.id;
    else if (Number.isInteger(exclude)) skip = exclude;
    else if (exclude != null) {
      throw new TypeError(`publish: exclude must be a Client or an id, not ${inspect(exclude, { depth: 0 })}`);
    }
    const s = toWire(data);
    const framed = this.framing !== 'raw';
    const coalesce = !framed || raw; // plain bytes, not a frame
    if (coalesce && s.length === 0) return; // an empty frame means something; empty bytes do not
    // Consecutive publishes of plain bytes to the same channel and exclude are
    // coalesced, as writes are.
    const last = this.#pending[this.#pending.length - 1];
    if (
      coalesce &&
      last &&
      last.op === 'publish' &&
      last.coalesce &&
      last.channel === channel &&
      last.exclude === skip
    ) {
      last.parts.push(s);
      this.#schedule();
      return;
    }
    const cmd = { op: 'publish', channel, parts: [s], coalesce };
    if (skip !== undefined) cmd.exclude = skip;
    if (framed && raw) cmd.raw = true;
    this.#pending.push(cmd);
    this.#schedule();
  }

  /** @internal use client.subscribe() or client.unsubscribe() */
  _channel(client, op, channel) {
    checkChannel(channel, op);
    if (client.closed || client[LOOP] !== this) return;
    this.#pending.push({ op, id: client.id, channel });
    this.#schedule();
  }

  /** @internal use client.write() or client.writeRaw() */
  _write(client, data, raw = false) {
    if (client.closed || client[LOOP] !== this) return;
    this.#queueWrite({ op: 'write', id: client.id }, toWire(data), raw);
  }

  /**
   * Queue a write. Consecutive writes of plain bytes to the same target are
   * coalesced; in a framed mode a frame is a write of its own (and may be
   * empty), and only raw writes carry `raw: true`.
   */
  #queueWrite(cmd, s, raw) {
    const framed = this.framing !== 'raw';
    if (!framed || raw) {
      if (s.length === 0) return;
      const last = this.#pending[this.#pending.length - 1];
      if (
        last &&
        last.op === 'write' &&
        last.coalesce &&
        (cmd.ids ? last.ids && sameIds(last.ids, cmd.ids) : !last.ids && last.id === cmd.id)
      ) {
        last.parts.push(s);
        this.#schedule();
        return;
      }
      cmd.coalesce = true;
      if (framed) cmd.raw = true;
    }
    cmd.parts = [s];
    this.#pending.push(cmd);
    this.#schedule();
  }

  /** @internal use client.close() */
  _close(client) {
    if (client.closed || client[LOOP] !== this) return;
    client.closed = true;
    const cmd = { op: 'close', id: client.id };
    // A close of the client being processed goes after its `consumed`.
    if (client === this.#current) this.#deferredClose = cmd;
    else {
      this.#pending.push(cmd);
      this.#schedule();
    }
  }

  // ---- the loop --------------------------------------------------------------

  /**
   * Serve: read tgate's messages from stdin until it ends, answer on stdout.
   * Resolves once stdin has ended and all output is flushed.
   */
  async run({
    stdin = process.stdin,
    stdout = process.stdout,
    stderr = process.stderr,
    maxLineBytes = MAX_LINE_BYTES,
    exitTimeout = stdin === process.stdin ? 1000 : null,
  } = {}) {
    if (this.#running) throw new Error('ServerLoop.run: already running');
    this.#running = true;
    this.#stdout = stdout;
    this.#stderr = stderr;
    this.#maxLine = maxLineBytes;
    // Protocol lines only on stdout: the console goes to stderr.
    if (stdout === process.stdout) redirectConsole(stderr);

    let outError = null;
    const onOutError = (err) => {
      outError ??= err;
      // Nobody reads our answers any more: stop reading questions.
      if (this.#running && typeof stdin.destroy === 'function') stdin.destroy(err);
    };
    stdout.on('error', onOutError);
    try {
      if (typeof stdin.on === 'function') {
        await this.#readStream(stdin, stdout, () => outError);
      } else {
        // Any async iterable of chunks.
        for await (const chunk of stdin) {
          this.#turn(toBuffer(chunk));
          if (outError) throw outError;
          // Backpressure: read no more input until tgate has taken our output.
          if (stdout.writableNeedDrain ?? this.#blocked) await waitDrain(stdout);
        }
      }
      // Lenient: a last line without its newline is still a line.
      if (this.#partial.length) this.#turn(Buffer.from('\n'));
      this.#flush();
      // Wait for our output to leave the stream (polled: no per-write callbacks).
      while (stdout.writableLength > 0 && !outError && !stdout.destroyed) {
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      if (outError) throw outError;
    } catch (err) {
      if (err?.code !== FRAMING_MISMATCH) throw err;
      if (stdin !== process.stdin) {
        this.#stderr.write(`tgate-handler: ${err.message}\n`);
        throw err;
      }
      // A real handler process: one line, then exit 1 (tgate logs the exit).
      process.exitCode = 1;
      if (typeof stdin.destroy === 'function') stdin.destroy();
      this.#stderr.write(`tgate-handler: ${err.message}; exiting\n`, () => process.exit(1));
      setTimeout(() => process.exit(1), 1000).unref();
      return new Promise(() => {}); // never settles: the process is exiting
    } finally {
      if (this.#immediate) clearImmediate(this.#immediate);
      this.#immediate = null;
      this.#running = false;
      if (stdout !== process.stdout) stdout.off('error', onOutError);
      // (process.stdout keeps the listener: a late EPIPE must not crash us.)
    }
    // Handler code may have left timers or sockets open; tgate expects the
    // process to exit promptly once stdin ends. The timer is unref'd: it never
    // keeps the process alive by itself.
    if (exitTimeout != null) setTimeout(() => process.exit(), exitTimeout).unref();
  }

  /**
   * Read a stream with 'data' events rather than `for await`, whose async
   * iterator costs a promise round trip per chunk: it shows in one client's
   * latency through tgate. While stdout needs draining, input waits in the
   * stream; after the drain, all of it is handled in one turn.
   */
  #readStream(stdin, stdout, outError) {
    return new Promise((resolve, reject) => {
      let finished = false;
      const done = (err) => {
        if (finished) return;
        finished = true;
        stdin.off('data', onData);
        stdin.off('end', onEnd);
        stdin.off('close', onEnd);
        stdin.off('error', done);
        if (err) reject(err);
        else resolve();
      };
      const onEnd = () => done(outError());
      // Handle a chunk; false when stdout must drain before we read more.
      const handle = (chunk) => {
        this.#turn(toBuffer(chunk));
        const err = outError();
        if (err) throw err;
        return !(stdout.writableNeedDrain ?? this.#blocked);
      };
      const wait = () => waitDrain(stdout).then(afterDrain, done);
      const onData = (chunk) => {
        try {
          if (!handle(chunk)) {
            stdin.off('data', onData);
            stdin.pause();
            wait();
          }
        } catch (err) {
          done(err);
        }
      };
      const afterDrain = () => {
        if (finished) return;
        try {
          let chunk;
          while ((chunk = stdin.read()) !== null) {
            if (!handle(chunk)) {
              wait();
              return;
            }
          }
        } catch (err) {
          done(err);
          return;
        }
        stdin.on('data', onData);
        stdin.resume();
      };
      stdin.on('data', onData);
      stdin.once('end', onEnd);
      stdin.once('close', onEnd);
      stdin.once('error', done);
    });
  }

  /** One stdin chunk: every complete line, then ONE stdout write. */
  #turn(chunk) {
    if (this.#immediate) {
      clearImmediate(this.#immediate);
      this.#immediate = null;
    }
    this.#inTurn = true;
    try {
      let start = 0;
      let nl = chunk.indexOf(NL); // new bytes only: the partial line was scanned already
      while (nl !== -1) {
        let line;
        if (this.#partial.length) {
          this.#partial.push(chunk.subarray(start, nl));
          line = Buffer.concat(this.#partial);
          this.#partial = [];
        } else {
          line = chunk.subarray(start, nl);
        }
        this.#line(line);
        start = nl + 1;
        nl = chunk.indexOf(NL, start);
      }
      if (start < chunk.length) this.#partial.push(start === 0 ? chunk : chunk.subarray(start));
    } finally {
      this.#inTurn = false;
    }
    this.#flush();
  }

  #line(bytes) {
    let m;
    try {
      const text = bytes.toString('utf8');
      if (text.trim() === '') return;
      m = JSON.parse(text);
    } catch (err) {
      this.#stderr.write(`tgate-handler: ignoring an input line that is not JSON: ${err.message}\n`);
      return;
    }
    if (m === null || typeof m !== 'object' || Array.isArray(m)) return;
    switch (m.op) {
      case 'data':
        return this.#onData(m);
      case 'frame':
        return this.#onFrame(m);
      case 'eof':
        return this.#onEof(m);
      case 'connect':
        return this.#onConnect(m);
      case 'disconnect':
        return this.#onDisconnect(m);
      case 'tick':
        return this.#guard(null, 'update', () => this.update());
      case 'hello':
        if (this.hello === null) {
          this.hello = m;
          if (typeof m.framing === 'string') this.framing = m.framing;
          if (Number.isInteger(m.workers) && m.workers >= 1) this.workers = m.workers;
          if (Number.isInteger(m.worker) && m.worker >= 0 && m.worker < this.workers) this.worker = m.worker;
          this.#checkFraming();
        }
        return;
      default:
        return; // unknown ops are for later versions
    }
  }

  /**
   * Throw (ending run()) if the hooks cannot serve this.framing: every client
   * would fail at run time, far from the cause. A loop with neither data hook
   * (a banner that reads nothing) or with both serves any framing.
   */
  #checkFraming() {
    const raw = this.processClientData !== ServerLoop.prototype.processClientData;
    const framed = this.processFrame !== ServerLoop.prototype.processFrame;
    const who = this.constructor === ServerLoop ? 'this handler' : this.constructor.name || 'this handler';
    let problem;
    if (this.framing === 'raw' && framed && !raw) {
      problem =
        `${who} defines processFrame but not processClientData, and tgate runs in raw mode ` +
        `(hello framing "raw"), where every client would fail: start tgate with --framing line ` +
        `(or another framing) or implement processClientData`;
    } else if (this.framing !== 'raw' && raw && !framed) {
      problem =
        `${who} defines processClientData but not processFrame, and tgate runs with ` +
        `--framing ${this.framing}, where every client would fail: start tgate with ` +
        `--framing raw or implement processFrame`;
    } else {
      return;
    }
    const err = new Error(problem);
    err.code = FRAMING_MISMATCH;
    throw err;
  }

  #onConnect(m) {
    if (typeof m.id !== 'number' || this.clients.has(m.id)) return;
    // Only a real true counts: the field is absent on a first connect.
    const client = new Client(this, m.id, m.peer, m.local, m.replay === true);
    this.clients.set(m.id, client);
    this.#guard(client, 'clientConnected', () => {
      client.data = this.clientConnected(client);
    });
  }

  #onData(m) {
    const id = m.id;
    if (typeof id !== 'number') return; // malformed: there is nobody to answer
    const client = this.clients.get(id);
    let n = 0;
    if (client === undefined) {
      this.#stderr.write(`tgate-handler: data for unknown client ${JSON.stringify(id)}; closing it\n`);
      this.#deferredClose = { op: 'close', id };
    } else {
      if (m.eof === true) client.eof = true;
      if (!client.closed) {
        const bytes = typeof m.data === 'string' ? Buffer.from(m.data, 'latin1') : EMPTY;
        const held = client[MIRROR];
        client[MIRROR] =
          held.length === 0 ? bytes : bytes.length === 0 ? held : Buffer.concat([held, bytes]);
        n = this.#process(client);
      }
      // After eof, unconsumed bytes are discarded by tgate; so are a closed client's.
      if (client.eof || client.closed) client[MIRROR] = EMPTY;
    }
    const cmds = this.#pending;
    this.#pending = [];
    cmds.push({ op: 'consumed', id, n });
    if (this.#deferredClose) {
      cmds.push(this.#deferredClose);
      this.#deferredClose = null;
    }
    this.#emit(cmds);
  }

  /** ServerLoop's loop over one client's mirror; returns the bytes consumed. */
  #process(client) {
    let buf = client[MIRROR];
    let total = 0;
    this.#current = client;
    try {
      while (buf.length > 0 && !client.closed) {
        let r;
        try {
          r = this.processClientData(client, buf);
        } catch (err) {
          this.#fail(err, client, 'processClientData');
          break;
        }
        if (!(Number.isInteger(r) && r >= 0 && r <= buf.length)) {
          this.#fail(badReturn(r, buf.length), client, 'processClientData');
          break;
        }
        if (r === 0) break;
        total += r;
        buf = buf.subarray(r);
      }
    } finally {
      this.#current = null;
    }
    client[MIRROR] = buf;
    return total;
  }

  #onFrame(m) {
    const client = typeof m.id === 'number' ? this.clients.get(m.id) : undefined;
    if (client === undefined) {
      this.#stderr.write(`tgate-handler: ignoring a frame for unknown client ${JSON.stringify(m.id)}\n`);
      return;
    }
    if (client.closed) return;
    const frame = typeof m.data === 'string' ? Buffer.from(m.data, 'latin1') : EMPTY;
    let r;
    try {
      r = this.processFrame(client, frame);
    } catch (err) {
      this.#fail(err, client, 'processFrame');
      return;
    }
    if (r !== null && typeof r === 'object' && typeof r.then === 'function') {
      r.then(undefined, (err) => this.#fail(err, client, 'processFrame'));
    }
  }

  #onEof(m) {
    const client = typeof m.id === 'number' ? this.clients.get(m.id) : undefined;
    if (client === undefined) {
      this.#stderr.write(`tgate-handler: ignoring an eof for unknown client ${JSON.stringify(m.id)}\n`);
      return;
    }
    client.eof = true;
    if (client.closed) return;
    try {
      this.clientEof(client);
    } catch (err) {
      this.#fail(err, client, 'clientEof');
    }
  }

  #onDisconnect(m) {
    const client = this.clients.get(m.id);
    if (client === undefined) return;
    this.clients.delete(m.id);
    client.closed = true;
    client.reason = typeof m.reason === 'string' ? m.reason : 'reset';
    client[MIRROR] = EMPTY;
    this.#guard(client, 'clientDisconnected', () => this.clientDisconnected(client));
  }

  /** Run handler code; report an exception, and for clientConnected close the client. */
  #guard(client, hook, fn) {
    try {
      fn();
    } catch (err) {
      if (hook === 'clientConnected') this.#fail(err, client, hook);
      else this.#report(err, client, hook);
    }
  }

  #fail(err, client, hook) {
    this.#report(err, client, hook);
    this._close(client);
  }

  #report(err, client, hook) {
    try {
      this.onError(err, client, hook);
    } catch (err2) {
      this.#stderr.write(
        `tgate-handler: onError failed too: ${err2 instanceof Error ? err2.stack : inspect(err2)}\n`,
      );
    }
  }

  // ---- output --------------------------------------------------------------

  /** Commands not tied to a data message (connect, tick, disconnect, async code) close the turn. */
  #flush() {
    if (this.#pending.length) {
      const cmds = this.#pending;
      this.#pending = [];
      this.#emit(cmds);
    }
    if (this.#lines.length === 0 || this.#stdout === null) return;
    const out = this.#lines.join('\n') + '\n';
    this.#lines = [];
    // No completion callback: one costs the event loop an extra turn per
    // write, measured as ~13 µs more per request through tgate (closed-1 p50
    // 120 -> 107 µs). run() waits for the stream's buffer to empty instead.
    this.#blocked = !this.#stdout.write(out);
  }

  /** Writes from code running outside a turn (timers, promises) go out once per event-loop turn. */
  #schedule() {
    if (this.#inTurn || !this.#running || this.#immediate) return;
    this.#immediate = setImmediate(() => {
      this.#immediate = null;
      if (this.#running && !this.#inTurn) this.#flush();
    });
  }

  /** Serialize one atomic group of commands as one line (an object, or an array of them). */
  #emit(cmds) {
    const parts = cmds.map(serialize);
    const line = parts.length === 1 ? parts[0] : `[${parts.join(',')}]`;
    // JSON of latin-1 strings is at most 2 UTF-8 bytes per UTF-16 unit.
    if (line.length * 2 < this.#maxLine || Buffer.byteLength(line) < this.#maxLine) {
      this.#lines.push(line);
    } else {
      this.#splitLine(cmds);
    }
  }

  /**
   * A group too long for one line (tgate's limit is 16 MiB): split it into
   * lines under the limit, cutting oversized writes into pieces, `consumed`
   * still last. Only such huge groups lose their atomicity.
   */
  #splitLine(cmds) {
    const max = this.#maxLine - 3; // "[", "]", "\n"
    const items = [];
    for (let cmd of cmds) {
      const s = serialize(cmd);
      const b = Buffer.byteLength(s);
      if (b <= max || (cmd.op !== 'write' && cmd.op !== 'publish')) {
        items.push([s, b]);
        continue;
      }
      let data = cmd.parts.join('');
      if (this.framing !== 'raw' && !cmd.raw) {
        // Pieces of a frame would be frames of their own: frame it here and
        // send the pieces unframed.
        const framed = frameWire(this.framing, data);
        if (framed === null) {
          this.#stderr.write(
            `tgate-handler: a frame of ${data.length} bytes cannot be sent in framing ${JSON.stringify(this.framing)}; dropped\n`,
          );
          continue;
        }
        data = framed;
        cmd = { ...cmd, raw: true };
      }
      const overhead = Buffer.byteLength(serialize({ ...cmd, parts: [''] }));
      const step = Math.floor((max - overhead) / 6); // "\u0000" is 6 bytes
      if (step < 1) throw new RangeError('tgate-handler: broadcast id list too long for one line');
      for (let i = 0; i < data.length; i += step) {
        const piece = serialize({ ...cmd, parts: [data.slice(i, i + step)] });
        items.push([piece, Buffer.byteLength(piece)]);
      }
    }
    let group = [];
    let size = 0;
    const close = () => {
      this.#lines.push(group.length === 1 ? group[0] : `[${group.join(',')}]`);
      group = [];
      size = 0;
    };
    for (const [s, b] of items) {
      if (group.length && size + b + 1 > max) close();
      group.push(s);
      size += b + 1;
    }
    if (group.length) close();
  }
}

function badReturn(r, len) {
  const what =
    r instanceof Promise || (r !== null && typeof r === 'object' && typeof r.then === 'function')
      ? 'a Promise (processClientData must be synchronous)'
      : `${inspect(r, { depth: 0 })} (${typeof r})`;
  return new TypeError(
    `processClientData returned ${what}; it must return an integer from 0 to ${len} (bytes handled, 0 = wait for more)`,
  );
}

function waitDrain(stream) {
  return new Promise((resolve, reject) => {
    const done = (err) => {
      stream.off('drain', onDrain);
      stream.off('error', onError);
      stream.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onError = (err) => done(err);
    const onClose = () => done(new Error('tgate-handler: stdout closed'));
    stream.on('drain', onDrain);
    stream.on('error', onError);
    stream.on('close', onClose);
  });
}
