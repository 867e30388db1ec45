// miniredis: an in-memory Redis (RESP2) server as a tgate handler.
//
//   tgate --handler "node examples/miniredis.js" --port 6380
//   redis-cli -p 6380 SET greeting hello
//
// Real Redis clients work against it: redis-cli (one-shot, interactive and
// --pipe), redis-benchmark, redis-py, ... It speaks RESP2 (multibulk arrays,
// as every client library sends) and inline commands (what you type into
// `nc`, and what redis-benchmark's PING_INLINE sends), pipelined or not.
//
// Commands: PING ECHO SET (EX PX EXAT PXAT NX XX KEEPTTL GET) GET DEL EXISTS
// INCR DECR INCRBY DECRBY MGET MSET EXPIRE PEXPIRE (NX XX GT LT) TTL PTTL
// PERSIST TYPE KEYS DBSIZE FLUSHDB FLUSHALL SELECT(0) QUIT, a few list
// commands (LPUSH RPUSH LPOP RPOP LLEN LRANGE, enough to get WRONGTYPE), and
// for client handshakes COMMAND (always an empty array: redis-cli's
// interactive mode sends `COMMAND DOCS` on connect and falls back to its
// built-in help), CONFIG GET (redis-benchmark asks `CONFIG GET save` and
// `appendonly`) and CLIENT SETNAME/GETNAME/SETINFO/ID (redis-py sends
// `CLIENT SETINFO` on connect) and HELLO (RESP2 only: `HELLO 3` gets
// `-NOPROTO`, so redis-py 8, which asks for RESP3 by default, needs
// `protocol=2`). Anything else gets Redis 7's
// `-ERR unknown command '...', with args beginning with: ...`; arity, syntax,
// integer and type errors are phrased as Redis phrases them.
//
// Binary-safe: keys and values are Buffers end to end (a key is looked up by
// its latin-1 string, which is one code point per byte, so never lossy).
// Expired keys are removed lazily (on access) and on every tick (update()).
//
// Client ids show, as in Redis, in the replies to HELLO and CLIENT ID. So
// `tgate check-handler` fails its many-clients scenario on this handler: its
// probe starts with the line `hello` (a HELLO here) and the checker assumes
// replies that do not depend on the client id.
//
// Limit: tgate holds at most --max-bufsize (default 65536) unconsumed bytes
// per client, so one command (with its values) must fit in that. A command
// that cannot gets `-ERR Protocol error: ...` and the connection is closed,
// like Redis does for its own limits, instead of tgate's silent `overflow`.
import { Buffer } from 'node:buffer';
import { ServerLoop } from '../adapters/node/index.js';

const CR = 0x0d;
const LF = 0x0a;
const INLINE_MAX = 64 * 1024; // Redis's PROTO_INLINE_MAX_SIZE
const MULTIBULK_MAX = 1024 * 1024; // Redis rejects larger multibulk counts
const INT64_MAX = 2n ** 63n - 1n;
const INT64_MIN = -(2n ** 63n);

// ---- replies ---------------------------------------------------------------

const OK = Buffer.from('+OK\r\n');
const PONG = Buffer.from('+PONG\r\n');
const NIL = Buffer.from('$-1\r\n');
const EMPTY_ARRAY = Buffer.from('*0\r\n');
const WRONGTYPE = Buffer.from('-WRONGTYPE Operation against a key holding the wrong kind of value\r\n');
const NOT_INTEGER = err('value is not an integer or out of range');
const SYNTAX = err('syntax error');

function err(msg) {
  return Buffer.from(`-ERR ${msg}\r\n`);
}
function int(n) {
  return Buffer.from(`:${n}\r\n`);
}
function bulk(buf) {
  if (buf == null) return NIL;
  return Buffer.concat([Buffer.from(`$${buf.length}\r\n`), buf, Buffer.from('\r\n')]);
}
function array(items) {
  // items: Buffers (bulk strings) or null (nil)
  return Buffer.concat([Buffer.from(`*${items.length}\r\n`), ...items.map(bulk)]);
}
function arity(name) {
  return err(`wrong number of arguments for '${name}' command`);
}

// ---- numbers, as Redis's string2ll parses them -----------------------------

/** A Buffer as a signed 64-bit integer (BigInt), or null: no spaces, no '+', no leading zeros. */
function parseInt64(buf) {
  const s = buf.toString('latin1');
  if (!/^(0|-?[1-9][0-9]{0,19})$/.test(s)) return null;
  const n = BigInt(s);
  return n < INT64_MIN || n > INT64_MAX ? null : n;
}

// ---- glob patterns, a port of Redis's stringmatchlen() ---------------------

/** Does `str` (Buffer) match the Redis glob `pat` (Buffer)? */
function globMatch(pat, str) {
  const skip = { longer: false };
  return match(pat, 0, str, 0, skip);
}

function match(pat, p, str, s, skip) {
  // Reading past the end of a Buffer yields undefined, which plays the part
  // of the C code's NUL terminator (it equals no byte).
  while (p < pat.length && s < str.length) {
    switch (pat[p]) {
      case 0x2a: {
        // '*'
        while (pat[p + 1] === 0x2a) p++;
        if (p === pat.length - 1) return true;
        while (s < str.length) {
          if (match(pat, p + 1, str, s, skip)) return true;
          if (skip.longer) return false;
          s++;
        }
        // No match for the rest of the pattern anywhere in the rest of the
        // string: a longer match for an earlier '*' cannot help either.
        skip.longer = true;
        return false;
      }
      case 0x3f: // '?'
        s++;
        break;
      case 0x5b: {
        // '[' ... ']', with '^' negation, ranges and backslash escapes
        p++;
        const not = pat[p] === 0x5e;
        if (not) p++;
        let matched = false;
        for (;;) {
          if (pat[p] === 0x5c && pat.length - p >= 2) {
            p++;
            if (pat[p] === str[s]) matched = true;
          } else if (pat[p] === 0x5d) {
            break;
          } else if (p >= pat.length) {
            p--; // unterminated class: the pattern ends here
            break;
          } else if (pat.length - p >= 3 && pat[p + 1] === 0x2d) {
            let lo = pat[p];
            let hi = pat[p + 2];
            if (lo > hi) [lo, hi] = [hi, lo];
            p += 2;
            if (str[s] >= lo && str[s] <= hi) matched = true;
          } else if (pat[p] === str[s]) {
            matched = true;
          }
          p++;
        }
        if (not) matched = !matched;
        if (!matched) return false;
        s++;
        break;
      }
      case 0x5c: // '\\': the next byte literally
        if (pat.length - p >= 2) p++;
      // falls through
      default:
        if (pat[p] !== str[s]) return false;
        s++;
        break;
    }
    p++;
    if (s === str.length) {
      while (pat[p] === 0x2a) p++;
      break;
    }
  }
  return p >= pat.length && s === str.length;
}

// ---- request parsing -------------------------------------------------------

class ProtocolError extends Error {}

/**
 * Parse one command from the front of `buf`.
 * Returns null when incomplete, else [bytesUsed, args] (args may be empty:
 * a blank inline line or `*0`, which Redis silently skips).
 * Throws ProtocolError for input Redis would reject (and then close).
 */
function parseCommand(buf, maxBytes) {
  return buf[0] === 0x2a ? parseMultibulk(buf, maxBytes) : parseInline(buf, maxBytes);
}

function parseMultibulk(buf, maxBytes) {
  let nl = buf.indexOf(CR);
  if (nl === -1 || nl + 1 >= buf.length) {
    if (buf.length > INLINE_MAX) throw new ProtocolError('too big mbulk count string');
    return null;
  }
  const count = parseInt64(buf.subarray(1, nl));
  if (count === null || count > MULTIBULK_MAX) throw new ProtocolError('invalid multibulk length');
  let pos = nl + 2;
  if (count <= 0) return [pos, []];
  const args = [];
  for (let i = 0; i < count; i++) {
    if (pos >= buf.length) return null;
    nl = buf.indexOf(CR, pos);
    if (nl === -1 || nl + 1 >= buf.length) {
      if (buf.length - pos > INLINE_MAX) throw new ProtocolError('too big bulk count string');
      return null;
    }
    if (buf[pos] !== 0x24) {
      throw new ProtocolError(`expected '$', got '${String.fromCharCode(buf[pos])}'`);
    }
    const len = parseInt64(buf.subarray(pos + 1, nl));
    if (len === null || len < 0n) throw new ProtocolError('invalid bulk length');
    const start = nl + 2;
    const end = start + Number(len);
    if (end + 2 > maxBytes) {
      // It can never be complete in tgate's buffer: say so rather than overflow.
      throw new ProtocolError(`command larger than the gateway's buffer (${maxBytes} bytes)`);
    }
    if (end + 2 > buf.length) return null;
    args.push(Buffer.from(buf.subarray(start, end))); // a copy: the mirror moves on
    pos = end + 2; // like Redis, the CRLF after the payload is not checked
  }
  return [pos, args];
}

function parseInline(buf, maxBytes) {
  const nl = buf.indexOf(LF);
  if (nl === -1) {
    if (buf.length >= Math.min(INLINE_MAX, maxBytes)) throw new ProtocolError('too big inline request');
    return null;
  }
  const end = nl > 0 && buf[nl - 1] === CR ? nl - 1 : nl;
  const args = splitArgs(buf.subarray(0, end));
  if (args === null) throw new ProtocolError('unbalanced quotes in request');
  return [nl + 1, args];
}

const isSpace = (c) => c === 0x20 || (c >= 0x09 && c <= 0x0d);
const isHex = (c) => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);
const ESCAPES = { 0x6e: 0x0a, 0x72: 0x0d, 0x74: 0x09, 0x62: 0x08, 0x61: 0x07 };

/** Redis's sdssplitargs(): words, "double quoted" with escapes, 'single quoted'. null on bad quotes. */
function splitArgs(line) {
  const args = [];
  let p = 0;
  const n = line.length;
  for (;;) {
    while (p < n && isSpace(line[p])) p++;
    if (p >= n) return args;
    const cur = [];
    let inq = false;
    let insq = false;
    for (let done = false; !done; ) {
      const c = line[p];
      if (inq) {
        if (c === undefined) return null; // unterminated quotes
        if (c === 0x5c && line[p + 1] === 0x78 && isHex(line[p + 2]) && isHex(line[p + 3])) {
          cur.push(parseInt(String.fromCharCode(line[p + 2], line[p + 3]), 16));
          p += 3;
        } else if (c === 0x5c && p + 1 < n) {
          p++;
          cur.push(ESCAPES[line[p]] ?? line[p]);
        } else if (c === 0x22) {
          // the closing quote must be followed by a space or nothing
          if (p + 1 < n && !isSpace(line[p + 1])) return null;
          done = true;
        } else {
          cur.push(c);
        }
      } else if (insq) {
        if (c === undefined) return null;
        if (c === 0x5c && line[p + 1] === 0x27) {
          p++;
          cur.push(0x27);
        } else if (c === 0x27) {
          if (p + 1 < n && !isSpace(line[p + 1])) return null;
          done = true;
        } else {
          cur.push(c);
        }
      } else if (c === undefined || isSpace(c)) {
        done = true;
      } else if (c === 0x22) {
        inq = true;
      } else if (c === 0x27) {
        insq = true;
      } else {
        cur.push(c);
      }
      if (p < n) p++;
    }
    args.push(Buffer.from(cur));
  }
}

// ---- the database ----------------------------------------------------------

/** One Redis database: key (latin-1 string of its bytes) -> {type, value, expireAt}. */
class Db {
  entries = new Map();
  expiring = new Set(); // keys with an expireAt, for the active expiry on ticks

  static key(buf) {
    return buf.toString('latin1');
  }

  /** The live entry for a key Buffer, deleting it first if it has expired. */
  get(keyBuf, now = Date.now()) {
    const k = Db.key(keyBuf);
    const e = this.entries.get(k);
    if (e === undefined) return undefined;
    if (e.expireAt !== null && e.expireAt <= now) {
      this.delete(k);
      return undefined;
    }
    return e;
  }

  set(keyBuf, entry) {
    const k = Db.key(keyBuf);
    this.entries.set(k, entry);
    if (entry.expireAt !== null) this.expiring.add(k);
    else this.expiring.delete(k);
  }

  setExpire(keyBuf, entry, expireAt) {
    entry.expireAt = expireAt;
    const k = Db.key(keyBuf);
    if (expireAt !== null) this.expiring.add(k);
    else this.expiring.delete(k);
  }

  delete(k) {
    this.expiring.delete(k);
    return this.entries.delete(k);
  }

  /** Active expiry: drop every key whose time has come. */
  purge(now = Date.now()) {
    for (const k of this.expiring) {
      const e = this.entries.get(k);
      if (e === undefined || (e.expireAt !== null && e.expireAt <= now)) this.delete(k);
    }
  }

  clear() {
    this.entries.clear();
    this.expiring.clear();
  }
}

function stringEntry(value, expireAt = null) {
  return { type: 'string', value, expireAt };
}

// ---- commands --------------------------------------------------------------

// name -> [arity (Redis convention: n = exactly n args incl. the name, -n = at least n), fn]
const COMMANDS = new Map();
function command(name, ar, fn) {
  COMMANDS.set(name, [ar, fn]);
}

command('ping', -1, (ctx, a) => {
  if (a.length > 2) return arity('ping');
  return a.length === 2 ? bulk(a[1]) : PONG;
});
command('echo', 2, (ctx, a) => bulk(a[1]));
command('quit', -1, (ctx) => {
  ctx.quit = true;
  return OK;
});
command('select', 2, (ctx, a) => {
  const n = parseInt64(a[1]);
  if (n === null) return NOT_INTEGER;
  return n === 0n ? OK : err('DB index is out of range');
});
command('command', -1, () => EMPTY_ARRAY);

command('get', 2, (ctx, a) => {
  const e = ctx.db.get(a[1]);
  if (e === undefined) return NIL;
  return e.type === 'string' ? bulk(e.value) : WRONGTYPE;
});

command('set', -3, (ctx, a) => {
  let nx = false;
  let xx = false;
  let get = false;
  let keepttl = false;
  let expire = null; // [option, value]
  for (let i = 3; i < a.length; i++) {
    const opt = a[i].toString('latin1').toUpperCase();
    const hasNext = i + 1 < a.length;
    if (opt === 'NX' && !xx) nx = true;
    else if (opt === 'XX' && !nx) xx = true;
    else if (opt === 'GET') get = true;
    else if (opt === 'KEEPTTL' && expire === null) keepttl = true;
    else if (['EX', 'PX', 'EXAT', 'PXAT'].includes(opt) && expire === null && !keepttl && hasNext) {
      expire = [opt, a[++i]];
    } else return SYNTAX;
  }
  const now = Date.now();
  let expireAt = null;
  if (expire !== null) {
    const n = parseInt64(expire[1]);
    if (n === null) return NOT_INTEGER;
    const [opt] = expire;
    const ms = opt === 'EX' || opt === 'EXAT' ? n * 1000n : n;
    const at = opt === 'EX' || opt === 'PX' ? ms + BigInt(now) : ms;
    if (n <= 0n || ms > INT64_MAX || at > INT64_MAX) return err("invalid expire time in 'set' command");
    expireAt = Number(at);
  }
  const old = ctx.db.get(a[1], now);
  if (get && old !== undefined && old.type !== 'string') return WRONGTYPE;
  const reply = get ? bulk(old?.value) : OK;
  if ((nx && old !== undefined) || (xx && old === undefined)) return get ? reply : NIL;
  if (keepttl && old !== undefined) expireAt = old.expireAt;
  ctx.db.set(a[1], stringEntry(a[2], expireAt));
  return reply;
});

command('mget', -2, (ctx, a) => {
  const now = Date.now();
  return array(
    a.slice(1).map((k) => {
      const e = ctx.db.get(k, now);
      return e !== undefined && e.type === 'string' ? e.value : null;
    }),
  );
});

command('mset', -3, (ctx, a) => {
  if (a.length % 2 !== 1) return arity('mset');
  for (let i = 1; i < a.length; i += 2) ctx.db.set(a[i], stringEntry(a[i + 1]));
  return OK;
});

command('del', -2, (ctx, a) => {
  let n = 0;
  for (const k of a.slice(1)) if (ctx.db.get(k) !== undefined && ctx.db.delete(Db.key(k))) n++;
  return int(n);
});

command('exists', -2, (ctx, a) => {
  const now = Date.now();
  return int(a.slice(1).filter((k) => ctx.db.get(k, now) !== undefined).length);
});

function incrBy(ctx, key, by) {
  const e = ctx.db.get(key);
  let cur = 0n;
  if (e !== undefined) {
    if (e.type !== 'string') return WRONGTYPE;
    cur = parseInt64(e.value);
    if (cur === null) return NOT_INTEGER;
  }
  const next = cur + by;
  if (next > INT64_MAX || next < INT64_MIN) return err('increment or decrement would overflow');
  const value = Buffer.from(next.toString(), 'latin1');
  if (e !== undefined) e.value = value; // keeps its TTL, as in Redis
  else ctx.db.set(key, stringEntry(value));
  return int(next);
}
command('incr', 2, (ctx, a) => incrBy(ctx, a[1], 1n));
command('decr', 2, (ctx, a) => incrBy(ctx, a[1], -1n));
command('incrby', 3, (ctx, a) => {
  const by = parseInt64(a[2]);
  return by === null ? NOT_INTEGER : incrBy(ctx, a[1], by);
});
command('decrby', 3, (ctx, a) => {
  const by = parseInt64(a[2]);
  if (by === null) return NOT_INTEGER;
  if (by === INT64_MIN) return err('decrement would overflow');
  return incrBy(ctx, a[1], -by);
});

function expireCommand(name, unitMs) {
  return (ctx, a) => {
    let nx = false;
    let xx = false;
    let gt = false;
    let lt = false;
    for (const o of a.slice(3)) {
      const opt = o.toString('latin1').toUpperCase();
      if (opt === 'NX') nx = true;
      else if (opt === 'XX') xx = true;
      else if (opt === 'GT') gt = true;
      else if (opt === 'LT') lt = true;
      else return err(`Unsupported option ${o.toString('latin1')}`);
    }
    if (nx && (xx || gt || lt)) {
      return err('NX and XX, GT or LT options at the same time are not compatible');
    }
    if (gt && lt) return err('GT and LT options at the same time are not compatible');
    const n = parseInt64(a[2]);
    if (n === null) return NOT_INTEGER;
    const now = Date.now();
    const at = n * BigInt(unitMs) + BigInt(now);
    if (n * BigInt(unitMs) > INT64_MAX || at > INT64_MAX || at < INT64_MIN) {
      return err(`invalid expire time in '${name}' command`);
    }
    const e = ctx.db.get(a[1], now);
    if (e === undefined) return int(0);
    const cur = e.expireAt; // null: persistent, i.e. an infinite TTL for GT/LT
    if (nx && cur !== null) return int(0);
    if (xx && cur === null) return int(0);
    if (gt && (cur === null || Number(at) <= cur)) return int(0);
    if (lt && cur !== null && Number(at) >= cur) return int(0);
    if (at <= BigInt(now)) ctx.db.delete(Db.key(a[1]));
    else ctx.db.setExpire(a[1], e, Number(at));
    return int(1);
  };
}
command('expire', -3, expireCommand('expire', 1000));
command('pexpire', -3, expireCommand('pexpire', 1));

function ttlCommand(ms) {
  return (ctx, a) => {
    const now = Date.now();
    const e = ctx.db.get(a[1], now);
    if (e === undefined) return int(-2);
    if (e.expireAt === null) return int(-1);
    const left = e.expireAt - now;
    return int(ms ? left : Math.floor((left + 500) / 1000));
  };
}
command('ttl', 2, ttlCommand(false));
command('pttl', 2, ttlCommand(true));
command('persist', 2, (ctx, a) => {
  const e = ctx.db.get(a[1]);
  if (e === undefined || e.expireAt === null) return int(0);
  ctx.db.setExpire(a[1], e, null);
  return int(1);
});
command('type', 2, (ctx, a) => {
  const e = ctx.db.get(a[1]);
  return Buffer.from(`+${e === undefined ? 'none' : e.type}\r\n`);
});

command('keys', 2, (ctx, a) => {
  const now = Date.now();
  const out = [];
  const all = a[1].length === 1 && a[1][0] === 0x2a;
  for (const k of [...ctx.db.entries.keys()]) {
    const kb = Buffer.from(k, 'latin1');
    if ((all || globMatch(a[1], kb)) && ctx.db.get(kb, now) !== undefined) out.push(kb);
  }
  return array(out);
});
command('dbsize', 1, (ctx) => {
  ctx.db.purge();
  return int(ctx.db.entries.size);
});
function flush(ctx, a) {
  if (a.length > 2) return SYNTAX;
  if (a.length === 2 && !['ASYNC', 'SYNC'].includes(a[1].toString('latin1').toUpperCase())) return SYNTAX;
  ctx.db.clear();
  return OK;
}
command('flushdb', -1, flush);
command('flushall', -1, flush);

// Lists: just enough for WRONGTYPE to be a real thing.
function listOf(ctx, key, create) {
  const e = ctx.db.get(key);
  if (e === undefined) {
    if (!create) return null;
    const entry = { type: 'list', value: [], expireAt: null };
    ctx.db.set(key, entry);
    return entry;
  }
  return e.type === 'list' ? e : WRONGTYPE;
}
function push(left) {
  return (ctx, a) => {
    const l = listOf(ctx, a[1], true);
    if (l === WRONGTYPE) return l;
    for (const v of a.slice(2)) left ? l.value.unshift(v) : l.value.push(v);
    return int(l.value.length);
  };
}
function pop(left) {
  return (ctx, a) => {
    if (a.length > 2) return err('count is not supported by miniredis');
    const l = listOf(ctx, a[1], false);
    if (l === null || l === WRONGTYPE) return l ?? NIL;
    const v = left ? l.value.shift() : l.value.pop();
    if (l.value.length === 0) ctx.db.delete(Db.key(a[1]));
    return bulk(v);
  };
}
command('lpush', -3, push(true));
command('rpush', -3, push(false));
command('lpop', -2, pop(true));
command('rpop', -2, pop(false));
command('llen', 2, (ctx, a) => {
  const l = listOf(ctx, a[1], false);
  return l === null ? int(0) : l === WRONGTYPE ? l : int(l.value.length);
});
command('lrange', 4, (ctx, a) => {
  let start = parseInt64(a[2]);
  let stop = parseInt64(a[3]);
  if (start === null || stop === null) return NOT_INTEGER;
  const l = listOf(ctx, a[1], false);
  if (l === null) return EMPTY_ARRAY;
  if (l === WRONGTYPE) return l;
  const len = BigInt(l.value.length);
  if (start < 0n) start += len;
  if (stop < 0n) stop += len;
  if (start < 0n) start = 0n;
  if (stop >= len) stop = len - 1n;
  if (start > stop) return EMPTY_ARRAY;
  return array(l.value.slice(Number(start), Number(stop) + 1));
});

// Handshakes of real clients.
const CONFIG = new Map([
  ['save', ''],
  ['appendonly', 'no'],
  ['databases', '1'],
  ['maxmemory', '0'],
]);
command('config', -2, (ctx, a) => {
  const sub = a[1].toString('latin1').toLowerCase();
  if (sub !== 'get') {
    return err(`unknown subcommand '${a[1].toString('latin1')}'. Try CONFIG HELP.`);
  }
  if (a.length < 3) return arity('config|get');
  const out = [];
  for (const [k, v] of CONFIG) {
    if (a.slice(2).some((p) => globMatch(p, Buffer.from(k)))) out.push(Buffer.from(k), Buffer.from(v));
  }
  return array(out);
});
command('client', -2, (ctx, a) => {
  const sub = a[1].toString('latin1').toLowerCase();
  if (sub === 'setinfo') return a.length === 4 ? OK : arity('client|setinfo');
  if (sub === 'setname') {
    if (a.length !== 3) return arity('client|setname');
    ctx.client.data.name = a[2].length ? a[2] : null;
    return OK;
  }
  if (sub === 'getname') return a.length === 2 ? bulk(ctx.client.data.name) : arity('client|getname');
  if (sub === 'id') return a.length === 2 ? int(ctx.client.id) : arity('client|id');
  return err(`unknown subcommand '${a[1].toString('latin1')}'. Try CLIENT HELP.`);
});

// RESP2 only: HELLO 3 gets the answer of a server without RESP3. (redis-py 8
// asks for RESP3 by default: give it protocol=2.)
command('hello', -1, (ctx, a) => {
  let i = 1;
  if (a.length > 1) {
    const v = parseInt64(a[1]);
    if (v === null) return err('Protocol version is not an integer or out of range');
    if (v !== 2n) return Buffer.from('-NOPROTO unsupported protocol version\r\n');
    i = 2;
  }
  let name;
  for (; i < a.length; i++) {
    const opt = a[i].toString('latin1').toUpperCase();
    const left = a.length - i - 1;
    if (opt === 'AUTH' && left >= 2) i += 2; // no users here: like Redis's nopass default user
    else if (opt === 'SETNAME' && left >= 1) name = a[++i];
    else return err(`Syntax error in HELLO option '${a[i].toString('latin1')}'`);
  }
  if (name !== undefined) ctx.client.data.name = name.length ? name : null;
  const b = (x) => bulk(Buffer.from(x));
  const fields = [
    [b('server'), b('redis')],
    [b('version'), b('7.0.0')],
    [b('proto'), int(2)],
    [b('id'), int(ctx.client.id)],
    [b('mode'), b('standalone')],
    [b('role'), b('master')],
    [b('modules'), EMPTY_ARRAY],
  ];
  return Buffer.concat([Buffer.from(`*${fields.length * 2}\r\n`), ...fields.flat()]);
});

/** Redis 7's reply for an unknown command (CR and LF in it become spaces). */
function unknownCommand(args) {
  let rest = '';
  for (let i = 1; i < args.length && rest.length < 128; i++) {
    rest += `'${args[i].toString('latin1').slice(0, 128 - rest.length)}' `;
  }
  const msg = `unknown command '${args[0].toString('latin1').slice(0, 128)}', with args beginning with: ${rest}`;
  return Buffer.from(`-ERR ${msg.replace(/[\r\n]/g, ' ')}\r\n`, 'latin1');
}

/** Run one command (args: Buffers, the name first); returns the reply. */
function execute(ctx, args) {
  const name = args[0].toString('latin1').toLowerCase();
  const cmd = COMMANDS.get(name);
  if (cmd === undefined) return unknownCommand(args);
  const [ar, fn] = cmd;
  if ((ar > 0 && args.length !== ar) || args.length < -ar) return arity(name);
  return fn(ctx, args);
}

// ---- the handler -----------------------------------------------------------

class MiniRedis extends ServerLoop {
  db = new Db();

  clientConnected() {
    return { name: null };
  }

  processClientData(client, buf) {
    const maxBytes = this.hello?.max_bufsize ?? 65536;
    let parsed;
    try {
      parsed = parseCommand(buf, maxBytes);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      client.write(err(`Protocol error: ${e.message}`));
      client.close(); // as Redis does: reply, then close
      return buf.length;
    }
    if (parsed === null) return 0; // incomplete: wait for more bytes
    const [used, args] = parsed;
    if (args.length === 0) return used; // blank line or *0: nothing to do
    const ctx = { db: this.db, client, quit: false };
    client.write(execute(ctx, args));
    if (ctx.quit) client.close(); // after its +OK; later pipelined commands are dropped
    return used;
  }

  update() {
    this.db.purge();
  }
}

await new MiniRedis().run();
