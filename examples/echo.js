// Echo server: every byte a client sends comes straight back.
//
//   tgate --listen 127.0.0.1:7000 -- node examples/echo.js
//
// It works in every --framing mode: in raw mode (the default) it echoes bytes
// as they come; in a framed mode it sends each frame back as one frame
// (--framing line: each line, with tgate's "\n"; a client's half-close closes
// it once its echoes are out).
import { ServerLoop } from '../adapters/node/index.js';

class Echo extends ServerLoop {
  processClientData(client, buf) {
    client.write(buf);
    return buf.length; // everything handled
  }

  processFrame(client, frame) {
    client.write(frame); // one frame back: tgate frames it again
  }
}

await new Echo().run();
