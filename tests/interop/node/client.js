// A client written from the .proto files alone: list, create, act, adapt, act, delete, and one
// malformed request. Prints one JSON line the Python test checks.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "../../../proto");
const def = protoLoader.loadSync("metarl/v1/policy_service.proto", {
  includeDirs: [PROTO_ROOT], keepCase: false, longs: Number, enums: String, defaults: true,
});
const v1 = grpc.loadPackageDefinition(def).metarl.v1;
const client = new v1.PolicyService(process.argv[2], grpc.credentials.createInsecure());
const call = (method, req) => new Promise((resolve, reject) =>
  client[method](req, { deadline: Date.now() + 20000 }, (err, resp) => (err ? reject(err) : resolve(resp))));

const f32 = (values, shape) => ({
  dtype: "DTYPE_FLOAT32", shape, data: Buffer.from(new Float32Array(values).buffer),
});
const i64 = (values, shape) => ({
  dtype: "DTYPE_INT64", shape, data: Buffer.from(new BigInt64Array(values.map(BigInt)).buffer),
});

(async () => {
  const { policies } = await call("listPolicies", {});
  const policy = policies.find((p) => p.name === "cartpole-family");
  const { session } = await call("createSession", { policy: policy.name, seed: 7 });
  const obs = [0.01, -0.02, 0.03, 0.0];
  const act1 = await call("act", { sessionId: session.id, observations: f32(obs, [4]), deterministic: true });
  const T = 5;
  const episode = {
    observations: f32(Array.from({ length: T * 4 }, (_, i) => ((i % 7) - 3) * 0.01), [T, 4]),
    actions: i64([0, 1, 1, 0, 1], [T]),
    rewards: f32([1, 1, 1, 1, 1], [T]),
    terminated: true,
  };
  const adapted = await call("adapt", { sessionId: session.id, episodes: [episode] });
  const act2 = await call("act", { sessionId: session.id, observations: f32(obs, [4]), deterministic: true });
  let badCode = null;
  try {
    await call("act", { sessionId: session.id, observations: f32([1, 2, 3], [3]) });
  } catch (err) {
    badCode = err.code;
  }
  await call("deleteSession", { sessionId: session.id });
  const decode = (t) => Array.from(new BigInt64Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.length))).map(Number);
  console.log(JSON.stringify({
    policy: policy.name,
    observationShape: policy.observationSpace.box.shape,
    actionN: policy.actionSpace.discrete.n,
    sessionVersion: session.version,
    action1: decode(act1.actions),
    action2: decode(act2.actions),
    adaptSteps: adapted.stats.steps,
    transitions: adapted.stats.transitions,
    badCode,
  }));
  client.close();
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
