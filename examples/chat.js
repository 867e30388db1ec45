// Line chat: every complete line a client sends goes to all the other clients.
//
//   on connect:     others get  "* {id} joined\n"
//   on a line:      others get  "{id}: {line}\n"   (line without its "\n" and one trailing "\r")
//   on disconnect:  others get  "* {id} left\n"
//
// A partial line waits for more bytes (and is dropped if the client half-closes
// before finishing it). Line bytes are passed through untouched (no decoding).
//
//   tgate --listen 127.0.0.1:7000 -- node examples/chat.js
import { Buffer } from 'node:buffer';
import { ServerLoop } from '../adapters/node/index.js';

class Chat extends ServerLoop {
  /** Every connected client except `client` (closed ones are skipped by broadcast). */
  others(client) {
    return [...this.clients.values()].filter((c) => c !== client);
  }

  clientConnected(client) {
    this.broadcast(this.others(client), `* ${client.id} joined\n`);
  }

  processClientData(client, buf) {
    const nl = buf.indexOf(0x0a);
    if (nl === -1) return 0; // incomplete line: wait for more bytes
    const end = nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl;
    const msg = Buffer.concat([Buffer.from(`${client.id}: `), buf.subarray(0, end), Buffer.from('\n')]);
    this.broadcast(this.others(client), msg);
    return nl + 1; // the line and its "\n"; the loop calls again for the next one
  }

  clientDisconnected(client) {
    // `client` has already left this.clients.
    this.broadcast(this.clients, `* ${client.id} left\n`);
  }
}

await new Chat().run();
