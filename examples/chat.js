// Line chat: every complete line a client sends goes to all the other clients.
//
//   on connect:     others get  "* {id} joined\n"
//   on a line:      others get  "{id}: {line}\n"   (line without its "\n" and one trailing "\r")
//   on disconnect:  others get  "* {id} left\n"
//
// A partial line waits for more bytes; an unterminated last line at end of
// input is still a line (without one trailing "\r"), as tgate's --framing line
// delivers it. A client that half-closes is closed once its last line went
// out. Line bytes are passed through untouched (no decoding). The bytes are
// the same as examples/chat.py's, under --framing raw (the handler splits the
// lines) and under --framing line (tgate does, and ends each write with "\n").
//
//   tgate --listen 127.0.0.1:7000 -- node examples/chat.js
import { Buffer } from 'node:buffer';
import { ServerLoop } from '../adapters/node/index.js';

class Chat extends ServerLoop {
  /** Every connected client except `client` (closed ones are skipped by broadcast). */
  others(client) {
    return [...this.clients.values()].filter((c) => c !== client);
  }

  /** One line to these clients: in a framed mode each write is a line (tgate ends it). */
  say(to, line) {
    this.broadcast(to, this.framing === 'raw' ? Buffer.concat([line, Buffer.from('\n')]) : line);
  }

  clientConnected(client) {
    this.say(this.others(client), Buffer.from(`* ${client.id} joined`));
  }

  // --framing raw: find the lines in the bytes.
  processClientData(client, buf) {
    const nl = buf.indexOf(0x0a);
    if (nl !== -1) {
      this.processFrame(client, withoutCR(buf.subarray(0, nl)));
      return nl + 1; // the line and its "\n"; the loop calls again for the next one
    }
    if (client.eof) {
      this.processFrame(client, withoutCR(buf)); // an unterminated last line
      return buf.length;
    }
    return 0; // incomplete line: wait for more bytes
  }

  // --framing line: tgate found the line.
  processFrame(client, frame) {
    this.say(this.others(client), Buffer.concat([Buffer.from(`${client.id}: `), frame]));
  }

  clientDisconnected(client) {
    // `client` has already left this.clients.
    this.say(this.clients, Buffer.from(`* ${client.id} left`));
  }
}

/** The line without one trailing "\r". */
function withoutCR(line) {
  return line.length > 0 && line[line.length - 1] === 0x0d ? line.subarray(0, -1) : line;
}

await new Chat().run();
