// Line chat: every complete line a client sends goes to all the other clients.
//
//   on connect:     others get  "* {id} joined\n"  (not again when tgate replays
//                                the connect to a restarted handler: client.replayed)
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
// The other clients are reached through a tgate channel, not a list of
// clients: each client is subscribed to "chat" when it connects, and every
// message is published to "chat" excluding its author (tgate removes a client
// from its channels when it disconnects). So it works unchanged with
// tgate --workers N, where each handler process serves only some of the
// clients: a message published by one worker reaches the clients of all.
//
//   tgate --listen 127.0.0.1:7000 -- node examples/chat.js
import { Buffer } from 'node:buffer';
import { ServerLoop } from '../adapters/node/index.js';

const CHANNEL = 'chat';

class Chat extends ServerLoop {
  /**
   * One line to every client in the chat but `exclude`, whichever worker
   * serves them: in a framed mode each write is a line (tgate ends it).
   */
  say(line, exclude = undefined) {
    const bytes = this.framing === 'raw' ? Buffer.concat([line, Buffer.from('\n')]) : line;
    this.publish(CHANNEL, bytes, { exclude });
  }

  clientConnected(client) {
    client.subscribe(CHANNEL);
    // A restarted handler: the room already saw this client join.
    if (!client.replayed) this.say(Buffer.from(`* ${client.id} joined`), client);
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
    this.say(Buffer.concat([Buffer.from(`${client.id}: `), frame]), client);
  }

  clientDisconnected(client) {
    // tgate has already taken the client out of the channel.
    this.say(Buffer.from(`* ${client.id} left`));
  }
}

/** The line without one trailing "\r". */
function withoutCR(line) {
  return line.length > 0 && line[line.length - 1] === 0x0d ? line.subarray(0, -1) : line;
}

await new Chat().run();
