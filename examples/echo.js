// Echo server: every byte a client sends comes straight back.
//
//   tgate --listen 127.0.0.1:7000 -- node examples/echo.js
import { ServerLoop } from '../adapters/node/index.js';

class Echo extends ServerLoop {
  processClientData(client, buf) {
    client.write(buf);
    return buf.length; // everything handled
  }
}

await new Echo().run();
