#!/usr/bin/env node
/**
 * Streams a CSV through one rnnstream session and prints y_t as JSON lines.
 *
 *   node stream-csv.js --address localhost:50051 --model seattle-temp --csv temps.csv
 *
 * One line per step on stdout: {"step": 0, "y": [47.93]}. The session id is made here
 * (128 random bits) and the session is created under it; every stream sends it as the
 * metadata x-rnnstream-session, so a load balancer routes all of them to the server that
 * holds the session. When a stream drops, the client opens a new connection, resumes the
 * session by id and resends every Steps message that was not answered (the server does
 * not apply a step twice: it answers steps below Opened.next_step from its replay cache).
 * --drop-after N cancels the first stream after N answers, to show exactly that.
 */
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The contract, loaded from the repository as it is (not a copy).
const PROTO = path.resolve(__dirname, '..', '..', 'proto', 'rnnstream', 'v1', 'rnnstream.proto');
const SESSION_ID_RULE = '16 to 128 characters of [A-Za-z0-9_-]';
const SESSION_ID = /^[A-Za-z0-9_-]{16,128}$/;
const ROUTING_KEY = 'x-rnnstream-session';
const MAX_RETRIES = 5;
const BACKOFF_FIRST_S = 0.1;
const BACKOFF_MAX_S = 5;

const USAGE = `usage: node stream-csv.js --csv FILE [options]

  --address HOST:PORT  server (default localhost:50051)
  --model NAME         model (default: the server's default model)
  --version V          model version (default: the latest)
  --csv FILE           input CSV with a header row (plain: no quoted fields)
  --column NAME        input column; repeat in the model's feature order (default: the
                       columns named like the model's features, else every column when
                       the file has exactly n_features of them)
  --chunk N            steps per Steps message (default 64)
  --window N           Steps messages in flight, unanswered (default 1; keep chunk *
                       window at or below the server's --replay-steps, 64 by default)
  --session-id ID      create or resume this session (${SESSION_ID_RULE});
                       default: a new random id
  --drop-after N       cancel the first stream after N answers, then resume (a demo)`;

/** A failure that ends the program with a message and exit code 1 (no stack trace). */
class ClientError extends Error {}

/** The command line as options; exits with the usage on --help or a bad flag. */
function parseOptions(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        address: { type: 'string', default: 'localhost:50051' },
        model: { type: 'string', default: '' },
        version: { type: 'string', default: '' },
        csv: { type: 'string' },
        column: { type: 'string', multiple: true, default: [] },
        chunk: { type: 'string', default: '64' },
        window: { type: 'string', default: '1' },
        'session-id': { type: 'string' },
        'drop-after': { type: 'string', default: '0' },
        help: { type: 'boolean', default: false },
      },
    }));
  } catch (err) {
    throw new ClientError(`${err.message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (!values.csv) throw new ClientError(`--csv is required\n${USAGE}`);
  const sessionId = values['session-id'] ?? crypto.randomBytes(16).toString('base64url');
  if (!SESSION_ID.test(sessionId)) {
    throw new ClientError(`--session-id must be ${SESSION_ID_RULE}, got ${JSON.stringify(sessionId)}`);
  }
  return {
    address: values.address,
    model: values.model,
    version: values.version,
    csv: values.csv,
    columns: values.column,
    chunk: positive(values.chunk, '--chunk'),
    window: positive(values.window, '--window'),
    sessionId,
    dropAfter: count(values['drop-after'], '--drop-after'),
  };
}

function positive(text, flag) {
  const n = count(text, flag);
  if (n < 1) throw new ClientError(`${flag} must be at least 1, got ${text}`);
  return n;
}

function count(text, flag) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new ClientError(`${flag} must be a whole number, got ${text}`);
  return n;
}

/** The CSV as its header and its rows of strings (blank lines skipped). */
function readCsv(file) {
  const lines = fs.readFileSync(file, 'utf8').split(/\r?\n/);
  const header = lines[0].split(',').map((name) => name.trim());
  const rows = [];
  lines.slice(1).forEach((line, i) => {
    if (line.trim() !== '') rows.push({ line: i + 2, cells: line.split(',') });
  });
  return { header, rows };
}

/** Indices of the input columns in the header, by the same rule as `rnnstream stream`. */
function inputColumns(header, wanted, model) {
  if (wanted.length > 0) {
    const missing = wanted.filter((name) => !header.includes(name));
    if (missing.length > 0) {
      throw new ClientError(`column ${missing.join(', ')} is not in the CSV header (${header.join(', ')})`);
    }
    if (wanted.length !== model.n_features) {
      throw new ClientError(
        `model ${model.name} takes ${model.n_features} features (${model.feature_names.join(', ') || 'unnamed'}), got ${wanted.length} --column`,
      );
    }
    return wanted.map((name) => header.indexOf(name));
  }
  const names = model.feature_names;
  if (names.length === model.n_features && names.every((name) => header.includes(name))) {
    return names.map((name) => header.indexOf(name));
  }
  if (header.length === model.n_features) return header.map((_, i) => i);
  throw new ClientError(
    `cannot tell which of the CSV's columns (${header.join(', ')}) are the model's ${model.n_features} features; pass --column for each, in order`,
  );
}

/** The CSV's rows as Steps chunks: {start, n, x} with x row-major [n, n_features]. */
function chunksOf(csv, columns, chunkSize, file) {
  const chunks = [];
  for (let i = 0; i < csv.rows.length; i += chunkSize) {
    const rows = csv.rows.slice(i, i + chunkSize);
    const x = [];
    for (const row of rows) {
      for (const c of columns) {
        const value = Number.parseFloat(row.cells[c]);
        if (Number.isNaN(value)) {
          throw new ClientError(`${file}:${row.line}: ${JSON.stringify(row.cells[c] ?? '')} is not a number`);
        }
        x.push(value);
      }
    }
    chunks.push({ start: i, n: rows.length, x });
  }
  return chunks;
}

/** The Predictor service's client class, from the .proto. */
function loadPredictor() {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, // field names as in the .proto: session_id, next_step
    longs: Number, // uint64 step indices as numbers (exact up to 2^53)
    enums: String,
    defaults: true,
    oneofs: true, // a message says which of its oneof fields is set in `kind`
  });
  return grpc.loadPackageDefinition(definition).rnnstream.v1.Predictor;
}

function log(message) {
  process.stderr.write(`${message}\n`);
}

/** An error carrying a gRPC status code, as grpc-js' own call errors do. */
function statusError(code, details) {
  return Object.assign(new Error(details), { code, details });
}

/**
 * Where the session stands, across streams: what was answered, what comes next.
 * `answered` counts the chunks whose Outputs arrived; every later chunk is (re)sent on
 * the current stream.
 */
class SessionState {
  constructor(options, csv) {
    this.options = options;
    this.csv = csv;
    this.id = options.sessionId;
    this.opened = false;
    this.model = null;
    this.chunks = [];
    this.answered = 0;
    this.sentUpTo = 0; // steps below this were written on some stream
    this.final = null;
    this.dropped = false;
  }

  /** The first Opened: the model is known, so the CSV's columns can be picked. */
  onFirstOpened(opened) {
    this.opened = true;
    this.model = opened.model;
    const columns = inputColumns(this.csv.header, this.options.columns, this.model);
    this.chunks = chunksOf(this.csv, columns, this.options.chunk, this.options.csv);
    log(`opened session ${opened.session_id} (model ${this.model.name}/${this.model.version})`);
  }

  /** Print the outputs of the oldest unanswered chunk as JSON lines. */
  onOutputs(outputs) {
    const chunk = this.chunks[this.answered];
    const width = this.model.n_outputs;
    if (chunk === undefined || outputs.start !== chunk.start || outputs.y.length !== chunk.n * width) {
      throw new ClientError(
        `unexpected Outputs at step ${outputs.start} (${outputs.y.length} values); ` +
          (chunk === undefined
            ? 'none were due'
            : `expected steps ${chunk.start}..${chunk.start + chunk.n - 1} (outputs lost with a ` +
              "connection are answered from the server's replay cache: keep --chunk x --window " +
              'at or below its --replay-steps)'),
      );
    }
    const lines = [];
    for (let i = 0; i < chunk.n; i += 1) {
      lines.push(JSON.stringify({ step: chunk.start + i, y: outputs.y.slice(i * width, (i + 1) * width) }));
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    this.answered += 1;
  }
}

/**
 * One stream: Open (create the first time, resume after), then Steps within the window,
 * then End{close}. Resolves once the Final arrived; rejects with the stream's error.
 */
function runStream(client, state) {
  return new Promise((resolve, reject) => {
    const metadata = new grpc.Metadata();
    metadata.set(ROUTING_KEY, state.id);
    const call = client.Stream(metadata);
    let settled = false;
    let dropping = false;
    let next = state.answered; // the next chunk to write on this stream
    let answersHere = 0;
    let endSent = false;
    const settle = (err) => {
      if (settled) return;
      settled = true;
      if (err) {
        call.cancel();
        reject(err);
      } else {
        resolve();
      }
    };
    const pump = () => {
      const { chunks, options } = state;
      while (next < chunks.length && next - state.answered < options.window) {
        const chunk = chunks[next];
        call.write({ steps: { start: chunk.start, x: chunk.x } });
        state.sentUpTo = Math.max(state.sentUpTo, chunk.start + chunk.n);
        next += 1;
      }
      if (state.answered === chunks.length && !endSent) {
        call.write({ end: { close: true } }); // the session ends with this sequence
        endSent = true;
      }
    };
    const onMessage = (message) => {
      if (message.kind === 'opened') {
        const opened = message.opened;
        if (!state.opened) {
          state.onFirstOpened(opened);
        } else {
          if (opened.next_step > state.sentUpTo) {
            throw new ClientError(
              `session ${state.id} is at step ${opened.next_step}, but this client only sent steps up to ${state.sentUpTo - 1}: another client streamed to it`,
            );
          }
          const from = state.answered < state.chunks.length ? state.chunks[state.answered].start : state.sentUpTo;
          log(`resumed session ${state.id} at next_step ${opened.next_step}; resending from step ${from}`);
        }
        pump();
      } else if (message.kind === 'outputs') {
        state.onOutputs(message.outputs);
        answersHere += 1;
        if (state.options.dropAfter > 0 && !state.dropped && answersHere === state.options.dropAfter) {
          state.dropped = true;
          dropping = true;
          log(`dropping the stream after ${answersHere} answers (--drop-after)`);
          call.cancel(); // as a broken connection would: the call fails with CANCELLED
          return;
        }
        pump();
      } else if (message.kind === 'final') {
        state.final = message.final;
        call.end();
      } else if (message.kind === 'ended') {
        const { reason, message: why } = message.ended;
        if (reason === 'END_REASON_DRAINING') {
          settle(statusError(grpc.status.UNAVAILABLE, `the server is draining: ${why}`));
        } else {
          settle(new ClientError(`session ${state.id} ended (${reason}): ${why}`));
        }
      }
    };
    call.on('data', (message) => {
      if (settled || dropping) return; // answers after a drop never arrived, as far as we know
      try {
        onMessage(message);
      } catch (err) {
        settle(err);
      }
    });
    call.on('error', (err) => settle(err));
    call.on('end', () => {
      if (state.final !== null) settle();
      else settle(statusError(grpc.status.UNAVAILABLE, 'the server ended the stream before its Final'));
    });
    call.write({
      open: {
        model: state.options.model,
        version: state.options.version,
        session_id: state.id,
        // Create only until the first Opened: a session that ended later is not made
        // again behind the caller's back, its resume fails with NOT_FOUND instead.
        create: !state.opened,
        return_sequences: true, // y_t after every step
      },
    });
  });
}

/** Whether a failed stream is worth a reconnect. */
function isRetryable(err) {
  return err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.CANCELLED;
}

function sleep(seconds) {
  return new Promise((done) => setTimeout(done, seconds * 1000));
}

/** Stream the whole CSV, reconnecting after drops; resolves with the Final. */
async function streamCsv(options) {
  const csv = readCsv(options.csv);
  const Predictor = loadPredictor();
  const state = new SessionState(options, csv);
  let failures = 0;
  let bound = BACKOFF_FIRST_S;
  for (;;) {
    const client = new Predictor(options.address, grpc.credentials.createInsecure());
    const answeredBefore = state.answered;
    try {
      await runStream(client, state);
      return state.final;
    } catch (err) {
      if (err instanceof ClientError || !isRetryable(err)) throw err;
      if (state.answered > answeredBefore) {
        failures = 0; // progress since the last failure: a fresh retry budget
        bound = BACKOFF_FIRST_S;
      }
      failures += 1;
      if (failures > MAX_RETRIES) throw err;
      const wait = state.dropped && failures === 1 ? 0 : Math.random() * bound;
      bound = Math.min(bound * 2, BACKOFF_MAX_S);
      log(`stream failed (${grpc.status[err.code]}: ${err.details ?? err.message}); reconnecting`);
      await sleep(wait);
    } finally {
      client.close();
    }
  }
}

async function main() {
  try {
    const options = parseOptions(process.argv.slice(2));
    const final = await streamCsv(options);
    log(`session ${options.sessionId} closed at step ${final.next_step}`);
  } catch (err) {
    const status = err.code !== undefined && grpc.status[err.code] ? `${grpc.status[err.code]}: ` : '';
    log(`error: ${status}${err.details ?? err.message}`);
    process.exitCode = 1;
  }
}

main();
