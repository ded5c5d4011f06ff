// An RFC 8441 WebSocket client: HTTP/2 (h2c, prior knowledge) extended CONNECT with
// `:protocol: websocket`, using node's built-in http2 module (no npm packages). Sends one
// masked text frame, prints the first frame it gets back as JSON, then closes.
//   node tests/ws_h2_client.js http://127.0.0.1:PORT /ws/echo MESSAGE
const http2 = require("node:http2");
const crypto = require("node:crypto");
const [url, path, message] = process.argv.slice(2);
const timer = setTimeout(() => { console.log(JSON.stringify({ error: "timeout" })); process.exit(2); }, 8000);
const session = http2.connect(url);
session.on("error", (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
session.on("remoteSettings", (settings) => {
  if (!settings.enableConnectProtocol) {
    console.log(JSON.stringify({ error: "server did not send SETTINGS_ENABLE_CONNECT_PROTOCOL" }));
    process.exit(1);
  }
  const stream = session.request({
    ":method": "CONNECT", ":protocol": "websocket", ":scheme": "http", ":path": path,
    "sec-websocket-version": "13",
  });
  let status = 0;
  stream.on("error", (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
  stream.on("close", () => { console.log(JSON.stringify({ error: "stream closed", status, code: stream.rstCode })); process.exit(1); });
  stream.on("response", (headers) => {
    status = headers[":status"];
    const payload = Buffer.from(message);
    const mask = crypto.randomBytes(4);
    const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
    stream.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]));  // FIN + text, masked
  });
  let buf = Buffer.alloc(0);
  stream.on("data", (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    if (buf.length >= 2 && buf.length >= 2 + (buf[1] & 0x7f)) {
      const text = buf.subarray(2, 2 + (buf[1] & 0x7f)).toString();
      console.log(JSON.stringify({ status, opcode: buf[0] & 0x0f, text }));
      clearTimeout(timer);
      stream.close();
      session.close();
    }
  });
});
