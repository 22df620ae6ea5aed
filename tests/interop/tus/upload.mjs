// One upload with tus-js-client in Node.js, for the resumable upload interop tests
// (tests/interop/test_resumable_tus.py): the real client library against our server, speaking
// the IETF draft "Resumable Uploads for HTTP" as tus-js-client implements it.
//
//   node upload.mjs --endpoint URL --file PATH [--protocol ietf-draft-05]
//                   [--chunk-size infinity|BYTES] [--retries N] [--location-from-104]
//                   [--upload-url URL] [--source buffer|path] [--timeout SECONDS]
//
// --endpoint     the signed slot URL, query string included (the creation POST goes there);
//                also TUS_ENDPOINT
// --file         the file to upload; also TUS_FILE
// --protocol     ietf-draft-03 (interop version 5) or ietf-draft-05 (interop version 6)
// --chunk-size   "infinity" (default): the creation POST carries the whole file, as Apple's
//                URLSession sends it; a number: the POST carries the first chunk, PATCHes
//                the rest
// --retries      how many times to retry after a failure (delays 0, 100, 200, 400 ms, ... up
//                to 1600 ms); 0: the first failure ends the upload
// --location-from-104
//                remember the Location of the server's 104 (Upload Resumption Supported) and
//                resume there when the creation request fails: what the draft asks of
//                clients. tus-js-client itself ignores informational responses, so without
//                this a creation cut off before its final response starts a new upload.
// --upload-url   resume this upload resource (HEAD, then PATCH) instead of creating one
// --source       buffer (default): the file is read into a Buffer and given to tus-js-client;
//                path: a fs.ReadStream of it, which tus-js-client 4 reads through its file
//                source. That source says the slice it reads is the last one only when the
//                slice is the whole file, so every PATCH carries `Upload-Complete: ?0`, the
//                one that ends the file included (tus-js-client issue #820); its buffer
//                source, like its browser file source, says it right.
// --timeout      give up (and fail) after this many seconds (default 120)
//
// Prints one line of JSON on stdout and exits 0 when the upload completed, 1 when it failed,
// 2 on bad arguments:
//   {"ok", "url" (the upload resource), "size", "offset" (the last offset the server
//    acknowledged), "retries", "errors" (what each failure said), "requests" (method, the
//    Upload-Complete it sent, status, Upload-Offset and interop version of every response),
//    "informational" (every 1xx),
//    "location104", "resumed_at" (the offset of every successful HEAD), "error"}

import * as fs from 'node:fs'
import { parseArgs } from 'node:util'

import { DefaultHttpStack, Upload } from 'tus-js-client'

const VERSIONS = { 'ietf-draft-03': '5', 'ietf-draft-05': '6' }

function usage(message) {
  process.stderr.write(`upload.mjs: ${message}\n`)
  process.exit(2)
}

function options() {
  let parsed
  try {
    parsed = parseArgs({
      options: {
        endpoint: { type: 'string' },
        file: { type: 'string' },
        protocol: { type: 'string', default: 'ietf-draft-05' },
        'chunk-size': { type: 'string', default: 'infinity' },
        retries: { type: 'string', default: '12' },
        'location-from-104': { type: 'boolean', default: false },
        'upload-url': { type: 'string' },
        source: { type: 'string', default: 'buffer' },
        timeout: { type: 'string', default: '120' },
      },
      strict: true,
    }).values
  } catch (e) {
    usage(e.message)
  }
  const endpoint = parsed.endpoint ?? process.env.TUS_ENDPOINT
  const file = parsed.file ?? process.env.TUS_FILE
  if (!endpoint && !parsed['upload-url']) usage('--endpoint or --upload-url is required')
  if (!file) usage('--file is required')
  if (!(parsed.protocol in VERSIONS)) usage(`unknown protocol ${parsed.protocol}`)
  const chunk = parsed['chunk-size']
  const chunkSize = chunk === 'infinity' ? Number.POSITIVE_INFINITY : Number(chunk)
  if (!(chunkSize > 0)) usage(`bad --chunk-size ${chunk}`)
  const retries = Number(parsed.retries)
  if (!Number.isInteger(retries) || retries < 0) usage(`bad --retries ${parsed.retries}`)
  if (!['buffer', 'path'].includes(parsed.source)) usage(`unknown source ${parsed.source}`)
  const timeout = Number(parsed.timeout)
  if (!(timeout > 0)) usage(`bad --timeout ${parsed.timeout}`)
  return {
    endpoint,
    file,
    protocol: parsed.protocol,
    chunkSize,
    retries,
    locationFrom104: parsed['location-from-104'],
    uploadUrl: parsed['upload-url'],
    source: parsed.source,
    timeout,
  }
}

// 0, 100, 200, 400, 800, 1600, 1600, ... ms: short enough for a test, enough for many cuts.
function retryDelays(count) {
  if (count === 0) return null
  return Array.from({ length: count }, (_, i) => (i === 0 ? 0 : Math.min(100 * 2 ** (i - 1), 1600)))
}

// The default HTTP stack, watching each request's informational responses (Node's
// 'information' event), which tus-js-client does not look at.
class WatchingHttpStack {
  constructor(onInformation) {
    this._inner = new DefaultHttpStack()
    this._onInformation = onInformation
  }

  createRequest(method, url) {
    const request = this._inner.createRequest(method, url)
    const send = request.send.bind(request)
    request.send = (body) => {
      const sent = send(body)
      // send() makes the Node request at once (in its promise's executor).
      request.getUnderlyingObject()?.on('information', (info) => {
        this._onInformation(request, info)
      })
      return sent
    }
    return request
  }

  getName() {
    return 'WatchingHttpStack'
  }
}

// tus-js-client's own rule (it is not exported): retry unless the server answered with a
// client error other than 409 (offset conflict) or 423 (locked). A cut connection has no
// response, so it is retried.
function retryable(err) {
  const status = err.originalResponse ? err.originalResponse.getStatus() : 0
  return !(status >= 400 && status < 500) || status === 409 || status === 423
}

function main() {
  const opts = options()
  const version = VERSIONS[opts.protocol]
  const size = fs.statSync(opts.file).size
  const result = {
    ok: false,
    protocol: opts.protocol,
    version: Number(version),
    url: null,
    size,
    offset: null,
    retries: 0,
    errors: [],
    requests: [],
    informational: [],
    location104: null,
    resumed_at: [],
    error: null,
  }
  const locations = new WeakMap()
  let upload = null
  let finished = false

  const finish = (ok, error) => {
    if (finished) return
    finished = true
    result.ok = ok
    result.error = error
    result.url = upload?.url ?? null
    process.stdout.write(`${JSON.stringify(result)}\n`)
    // Do not wait for keep-alive sockets or a file stream left open by an aborted request.
    process.exit(ok ? 0 : 1)
  }

  const onInformation = (request, info) => {
    const headers = info.headers
    const entry = {
      method: request.getMethod(),
      status: info.statusCode,
      version: headers['upload-draft-interop-version'] ?? null,
      location: headers.location ?? null,
      limit: headers['upload-limit'] ?? null,
    }
    result.informational.push(entry)
    // A 104 naming another interop version (or none) is to be ignored (the draft's rule).
    if (info.statusCode === 104 && entry.location && entry.version === version) {
      const base = request.getURL()
      locations.set(request, new URL(entry.location, base).toString())
    }
  }

  const delays = retryDelays(opts.retries)
  const input = opts.source === 'path' ? fs.createReadStream(opts.file) : fs.readFileSync(opts.file)
  upload = new Upload(input, {
    endpoint: opts.endpoint ?? null,
    uploadUrl: opts.uploadUrl ?? null,
    protocol: opts.protocol,
    chunkSize: opts.chunkSize,
    uploadDataDuringCreation: true,
    retryDelays: delays,
    httpStack: new WatchingHttpStack(onInformation),
    storeFingerprintForResuming: false,
    onAfterResponse: (req, res) => {
      const entry = {
        method: req.getMethod(),
        complete: req.getHeader('Upload-Complete') ?? null,
        status: res.getStatus(),
        offset: res.getHeader('Upload-Offset') ?? null,
        version: res.getHeader('Upload-Draft-Interop-Version') ?? null,
      }
      result.requests.push(entry)
      if (entry.offset !== null) result.offset = Number(entry.offset)
      if (entry.method === 'HEAD' && entry.status >= 200 && entry.status < 300) {
        result.resumed_at.push(Number(entry.offset))
      }
    },
    onShouldRetry: (err) => {
      result.errors.push(err.message)
      const retry = retryable(err)
      if (!retry) return false
      result.retries += 1
      const request = err.originalRequest
      const location = request ? locations.get(request) : undefined
      // The creation request failed after the server had said where the upload lives.
      if (opts.locationFrom104 && location && upload.url == null) {
        result.location104 = location
        upload.resumeFromPreviousUpload({ uploadUrl: location, urlStorageKey: null })
      }
      return true
    },
    onError: (err) => {
      // The last failure (not retried, or out of retries).
      result.errors.push(err.message)
      const request = err.originalRequest
      const location = request ? locations.get(request) : undefined
      if (location && result.location104 == null) result.location104 = location
      finish(false, err.message)
    },
    onSuccess: () => {
      finish(true, null)
    },
  })

  setTimeout(() => {
    upload.abort(false)
    finish(false, `timed out after ${opts.timeout} s`)
  }, opts.timeout * 1000).unref()
  upload.start()
}

main()
