#!/usr/bin/env node
// A Node.js client of the llmcore gRPC API (proto/llmcore/v1/llmcore.proto):
// streams one generation and prints the text as it arrives.
//
//   cd tests/grpc/node && npm ci
//   node client.js --target localhost:50051 --prompt "The capital of France is" --max-tokens 16
//
// Options:
//   --target HOST:PORT   server address (default localhost:50051)
//   --prompt TEXT        the prompt (default "Hello, my name is")
//   --max-tokens N       default 16
//   --temperature T      default 0 (greedy)
//   --api-key KEY        sent as "authorization: Bearer KEY" (default: $LLMCORE_API_KEY)
//   --tls-ca FILE        use TLS, trusting this CA certificate
//   --timeout S          deadline in seconds (default 120)
//   --json               print one JSON object at the end instead of the text as it streams
//   --expect-text TEXT   exit 1 unless the generated text is exactly TEXT (tests)
//   --proto FILE         path of llmcore.proto (default: the repository's)

'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function parseArgs(argv) {
  const opts = {
    target: 'localhost:50051',
    prompt: 'Hello, my name is',
    maxTokens: 16,
    temperature: 0,
    apiKey: process.env.LLMCORE_API_KEY || '',
    tlsCa: null,
    timeout: 120,
    json: false,
    expectText: null,
    proto: path.resolve(__dirname, '..', '..', '..', 'proto', 'llmcore', 'v1', 'llmcore.proto'),
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--target': opts.target = next(); break;
      case '--prompt': opts.prompt = next(); break;
      case '--max-tokens': opts.maxTokens = parseInt(next(), 10); break;
      case '--temperature': opts.temperature = parseFloat(next()); break;
      case '--api-key': opts.apiKey = next(); break;
      case '--tls-ca': opts.tlsCa = next(); break;
      case '--timeout': opts.timeout = parseFloat(next()); break;
      case '--json': opts.json = true; break;
      case '--expect-text': opts.expectText = next(); break;
      case '--proto': opts.proto = next(); break;
      default: throw new Error(`unknown option ${a}`);
    }
  }
  return opts;
}

function loadService(protoFile) {
  const def = protoLoader.loadSync(protoFile, {
    keepCase: true, // field names as in the .proto (token_ids, finish_reason)
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def).llmcore.v1;
}

function main() {
  const opts = parseArgs(process.argv);
  const v1 = loadService(opts.proto);
  const creds = opts.tlsCa
    ? grpc.credentials.createSsl(fs.readFileSync(opts.tlsCa))
    : grpc.credentials.createInsecure();
  const client = new v1.Generation(opts.target, creds);

  const metadata = new grpc.Metadata();
  if (opts.apiKey) metadata.add('authorization', `Bearer ${opts.apiKey}`);
  const request = {
    text: opts.prompt,
    sampling_params: { temperature: opts.temperature, max_tokens: opts.maxTokens },
  };
  const deadline = new Date(Date.now() + opts.timeout * 1000);

  let text = '';
  const tokenIds = [];
  let finishReason = null;
  let usage = null;
  let messages = 0;
  const call = client.Generate(request, metadata, { deadline });
  call.on('data', (msg) => {
    messages += 1;
    for (const chunk of msg.outputs) {
      text += chunk.text;
      tokenIds.push(...chunk.token_ids);
      if (chunk.finish_reason !== 'FINISH_REASON_UNSPECIFIED') finishReason = chunk.finish_reason;
      if (!opts.json) process.stdout.write(chunk.text);
    }
    if (msg.finished) usage = msg.usage;
  });
  call.on('error', (err) => {
    console.error(`\nRPC failed: ${grpc.status[err.code]} (${err.code}): ${err.details}`);
    process.exit(2);
  });
  call.on('end', () => {
    client.close();
    if (opts.json) {
      console.log(JSON.stringify({ text, token_ids: tokenIds, finish_reason: finishReason, usage, messages }));
    } else {
      console.log(`\n[${finishReason}; ${usage ? usage.completion_tokens : '?'} tokens in ${messages} messages]`);
    }
    if (usage === null) {
      console.error('the stream ended without a finished message');
      process.exit(1);
    }
    if (opts.expectText !== null && text !== opts.expectText) {
      console.error(`text mismatch:\n  got:      ${JSON.stringify(text)}\n  expected: ${JSON.stringify(opts.expectText)}`);
      process.exit(1);
    }
  });
}

try {
  main();
} catch (e) {
  console.error(e.message);
  process.exit(2);
}
