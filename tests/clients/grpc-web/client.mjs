// A real gRPC-Web client (Connect-ES's gRPC-Web transport, as a browser app would use it), run by
// tests/test_e2e_grpc_web.py:   node client.mjs BASE_URL HTTP_VERSION DESCRIPTOR_SET
// It calls the Greeter service through Envoy and prints one JSON object: what each call returned
// (messages, response headers, trailers) or the error it raised (Connect code, message).
// Messages come from the descriptor set at run time (no generated code).
import { readFileSync } from "node:fs";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

const [baseUrl, httpVersion, descriptorSet] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptorSet)));
const Greeter = registry.getService("meshgate.devtools.Greeter");
const client = createClient(Greeter, createGrpcWebTransport({ baseUrl, httpVersion }));

const plain = (message) => ({ message: message.message, upstream: message.upstream, metadata: message.metadata });
const headers = (h) => Object.fromEntries([...h.entries()].filter(([k]) => k.startsWith("x-") || k.startsWith("grpc-") || k === "content-type"));

async function call(fn) {
  const seen = { header: {}, trailer: {} };
  const options = {
    onHeader: (h) => { seen.header = headers(h); },
    onTrailer: (t) => { seen.trailer = headers(t); },
  };
  try {
    const result = await fn(options);
    return { ok: true, result, ...seen };
  } catch (err) {
    const e = ConnectError.from(err);
    return { ok: false, code: Code[e.code], message: e.rawMessage, metadata: headers(e.metadata), ...seen };
  }
}

const out = {};
out.unary = await call((o) => client.sayHello({ name: "web", greeting: "Hi" },
  { ...o, headers: { "x-client": "connect-es" } }).then(plain));
out.stream = await call(async (o) => {
  const replies = [];
  for await (const reply of client.streamHellos(create(registry.getMessage("meshgate.devtools.HelloRequest"), { name: "s", count: 4 }), o)) {
    replies.push(plain(reply));
  }
  return replies;
});
out.error = await call((o) => client.fail({ code: Code.PermissionDenied, message: "not for you" }, o).then(plain));
// A deadline the client sets (it sends grpc-timeout and gives up itself at the deadline).
out.deadline = await call((o) => client.sleep({ ms: 3000 }, { ...o, timeoutMs: 300 }).then(plain));
// The same deadline sent only as the grpc-timeout header, so that it is Envoy (the route's
// max_stream_duration.grpc_timeout_header_max) that ends the call, and we see what Envoy answers.
out.envoyDeadline = await call((o) => client.sleep({ ms: 3000 }, { ...o, headers: { "grpc-timeout": "300m" } }).then(plain));
process.stdout.write(JSON.stringify(out) + "\n");
