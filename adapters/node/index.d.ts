// Hand-written types for tgate-handler (index.js): the Node adapter for
// tgate's handler protocol, version 1 (docs/protocol.md).

/// <reference types="node" />

import type { Buffer } from 'node:buffer';
import type { Readable, Writable } from 'node:stream';

/** Bytes for a client: Buffer/Uint8Array/ArrayBuffer as is, a string as its UTF-8 bytes. */
export type Bytes = Buffer | Uint8Array | ArrayBufferView | ArrayBuffer | string;

/** `[host, port]` as tgate reports it. */
export type Address = [host: string, port: number];

/**
 * Disconnect reasons of protocol v1. Treat a reason you do not know like `reset`
 * (later versions may add some).
 */
export type DisconnectReason =
  | 'eof'
  | 'reset'
  | 'overflow'
  | 'closed'
  | 'shutdown'
  | 'error'
  | 'quarantined'
  | 'slow'
  | 'idle'
  | 'malformed'
  | (string & {});

/** tgate's --framing modes (later versions may add some). */
export type Framing = 'raw' | 'line' | 'crlf' | 'packet2' | 'packet4' | 'netstring' | (string & {});

/** The first message tgate sends. */
export interface Hello {
  op: 'hello';
  protocol: number;
  tgate: string;
  framing: Framing;
  bufsize: number;
  max_bufsize: number;
  /** Seconds between ticks (calls to update()). */
  update_time: number;
  /** This process's index in the pool of workers (`tgate --workers N`): 0 to N-1. Absent from older tgate. */
  worker?: number;
  /** The pool's size, N. Absent from older tgate. */
  workers?: number;
  [field: string]: unknown;
}

/** One TCP client. Created by the loop when tgate sends `connect`; do not construct. */
export class Client<State = unknown> {
  private constructor();
  /** Positive integer, never reused while tgate runs. */
  readonly id: number;
  /** Remote address. */
  readonly peer: Address;
  /** Local (listening) address. */
  readonly local: Address;
  /** What clientConnected() returned: your per-client state. */
  data: State;
  /**
   * True once the client has half-closed: the bytes being processed are its
   * last (framed modes: set before clientEof()).
   */
  readonly eof: boolean;
  /** Why the client went away; set just before clientDisconnected(). */
  readonly reason: DisconnectReason | undefined;
  /** True once close() was called or the client disconnected; write() is then ignored. */
  readonly closed: boolean;
  /**
   * True when tgate replayed this client's `connect` (`"replay": true`) to a
   * restarted handler process: the client was already connected to an earlier
   * one (don't announce it again). Set before clientConnected().
   */
  readonly replayed: boolean;
  /**
   * Queue bytes for this client. Ignored once the client is closed or gone. In
   * a framed mode the bytes are one frame (tgate frames them; an empty write is
   * an empty frame).
   */
  write(data: Bytes): void;
  /** Queue bytes that tgate sends unframed (`"raw": true`). In raw mode, the same as write(). */
  writeRaw(data: Bytes): void;
  /** Close the client once its queued writes are sent (a `disconnect` with reason `closed` follows). */
  close(): void;
  /**
   * Add the client to a channel (a non-empty string; created on first use).
   * Channels live in tgate, across every worker process: whichever worker
   * publishes to the channel reaches this client. Subscribing twice is the
   * same as once; tgate drops the client from its channels when it
   * disconnects. Ignored once the client is closed or gone.
   */
  subscribe(channel: string): void;
  /** Remove the client from a channel. Ignored once the client is closed or gone. */
  unsubscribe(channel: string): void;
  /** `client 3 (127.0.0.1:40312)` */
  toString(): string;
}

/** Options of ServerLoop.publish(). */
export interface PublishOptions<State = unknown> {
  /** A client (or client id) that does not get the bytes, e.g. their author. */
  exclude?: Client<State> | number | null;
  /** Framed modes: send the bytes unframed (`"raw": true`). Meaningless in raw mode. */
  raw?: boolean;
}

/** Names of the handler code hooks, as passed to onError(). */
export type HookName =
  | 'clientConnected'
  | 'processClientData'
  | 'processFrame'
  | 'clientEof'
  | 'clientDisconnected'
  | 'update';

/** The hooks; any subset may be passed to the ServerLoop constructor. */
export interface Hooks<State = unknown> {
  /**
   * A client connected (it is already in `clients`). The return value becomes
   * client.data. Throwing closes the client. client.replayed is true when its
   * connect was replayed to a restarted handler process.
   */
  clientConnected?(this: ServerLoop<State>, client: Client<State>): State;
  /**
   * Handle the front of `buf`, ALL of this client's unconsumed bytes, and return
   * how many bytes were handled: an integer from 0 to buf.length (0 = incomplete,
   * wait for more bytes). Called again while it returns > 0 and bytes remain,
   * with a view of the rest (Buffer.subarray, not a copy). Must be synchronous. Throwing or returning anything else reports the error
   * through onError() and closes this client only.
   */
  processClientData?(this: ServerLoop<State>, client: Client<State>, buf: Buffer): number;
  /**
   * Framed modes (`tgate --framing line|crlf|packet2|packet4|netstring`): one
   * whole frame, without its delimiter or length prefix. No reply, no byte
   * counting. Throwing (or a rejected promise) reports the error through
   * onError() and closes this client only.
   */
  processFrame?(this: ServerLoop<State>, client: Client<State>, frame: Buffer): void | Promise<void>;
  /**
   * Framed modes: the client half-closed after its last frame (client.eof is
   * true). The connection stays open until closed; the default calls
   * client.close(), which tgate carries out once the writes queued before it
   * are sent. Throwing closes the client.
   */
  clientEof?(this: ServerLoop<State>, client: Client<State>): void;
  /** The client is gone (client.reason says why; it has left `clients`). Called exactly once. */
  clientDisconnected?(this: ServerLoop<State>, client: Client<State>): void;
  /** Called on each `tick` (every hello.update_time seconds). */
  update?(this: ServerLoop<State>): void;
  /**
   * Handler code failed. When `hook` is clientConnected, processClientData,
   * processFrame or clientEof the client has been closed. Default: one line naming the client, then the stack, on stderr.
   */
  onError?(this: ServerLoop<State>, err: unknown, client: Client<State> | null, hook: HookName): void;
}

export interface RunOptions {
  /** Where tgate's messages come from. Default: process.stdin. */
  stdin?: Readable | AsyncIterable<Buffer | Uint8Array | string>;
  /** Where the answers go. Default: process.stdout. */
  stdout?: Writable;
  /** Where errors are reported (and, with the real stdout, the console goes). Default: process.stderr. */
  stderr?: Writable;
  /** Longest output line; longer groups are split (losing atomicity). Default: 16 MiB, tgate's limit. */
  maxLineBytes?: number;
  /**
   * Once stdin has ended and output is flushed, call process.exit() after this
   * many ms if handler code left timers or sockets keeping the process alive
   * (the timer is unref'd and never delays a natural exit). `null` disables it.
   * Default: 1000 when stdin is process.stdin, else null.
   */
  exitTimeout?: number | null;
}

/**
 * Haxe's neko.net.ServerLoop over tgate's pipe. Subclass it and override the
 * hooks, or pass them to the constructor.
 *
 * Every `data` message gets exactly one `consumed` reply, in one line (a JSON
 * array) with the writes, broadcasts, closes, subscribes and publishes
 * produced while handling it, so that tgate applies them atomically. All the
 * output of one stdin chunk goes out in one stdout write.
 *
 * In a framed mode (`framing` is not 'raw') tgate sends `frame` and `eof`
 * messages instead of `data`: override processFrame() (and, if needed,
 * clientEof()); no `consumed` is sent, and each write() is one frame.
 *
 * **Stdout carries protocol lines only.** When run() uses the real
 * process.stdout, it routes the global console (log, info, debug, warn, dir,
 * table, ...) to stderr for the rest of the process, so a stray console.log
 * cannot corrupt the stream. Writing to process.stdout directly is not caught.
 */
export class ServerLoop<State = unknown> {
  constructor(hooks?: Hooks<State>);
  /** Live clients by id, in connection order. Do not modify. */
  readonly clients: Map<number, Client<State>>;
  /** tgate's `hello` message, once received. */
  readonly hello: Hello | null;
  /** The framing mode from `hello` ('raw' until then). */
  readonly framing: Framing;
  /** This process's index in tgate's pool of workers, 0 to workers - 1 (0 until `hello` says). */
  readonly worker: number;
  /**
   * How many worker processes tgate runs for this handler (1 until `hello`
   * says). With more than one, `clients` holds only this process's clients:
   * reach the others through channels.
   */
  readonly workers: number;

  clientConnected(client: Client<State>): State;
  processClientData(client: Client<State>, buf: Buffer): number;
  processFrame(client: Client<State>, frame: Buffer): void | Promise<void>;
  clientEof(client: Client<State>): void;
  clientDisconnected(client: Client<State>): void;
  update(): void;
  onError(err: unknown, client: Client<State> | null, hook: HookName): void;

  /**
   * Send the same bytes to several clients in one `write` line with `ids`.
   * Closed, gone and duplicate clients are skipped; a Map (e.g. `this.clients`)
   * is iterated by its values. In a framed mode the bytes are one frame to
   * each client, or sent unframed with `{ raw: true }`.
   */
  broadcast(
    clients: Iterable<Client<State> | number> | Map<number, Client<State>>,
    data: Bytes,
    options?: { raw?: boolean },
  ): void;

  /**
   * Send the bytes to every client subscribed to `channel` (see
   * Client.subscribe()), whichever worker process serves it, except
   * `options.exclude`. tgate sends them as a write to each would: in a framed
   * mode they are one frame to each client, or sent unframed with
   * `{ raw: true }`. A channel nobody is subscribed to swallows them.
   */
  publish(channel: string, data: Bytes, options?: PublishOptions<State>): void;

  /**
   * Serve until stdin ends. Resolves once all output is flushed; rejects if
   * stdin or stdout fails (e.g. EPIPE when tgate is gone).
   *
   * If the hooks cannot serve the framing tgate announces in `hello`
   * (processFrame but not processClientData while tgate runs in raw mode, or
   * processClientData but not processFrame in a framed mode), every client
   * would fail: it writes one line saying so to stderr and, when serving
   * process.stdin, exits the process with status 1; with another stdin it
   * rejects with an Error whose `code` is `'TGATE_FRAMING_MISMATCH'`.
   */
  run(options?: RunOptions): Promise<void>;

  /** @internal */
  _write(client: Client<State>, data: Bytes, raw?: boolean): void;
  /** @internal */
  _close(client: Client<State>): void;
  /** @internal */
  _channel(client: Client<State>, op: 'subscribe' | 'unsubscribe', channel: string): void;
}
