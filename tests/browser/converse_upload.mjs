// Converse.js in headless Chromium, for the browser upload tests
// (tests/browser/test_converse_browser.py): log in over WebSocket, open a chat, send files
// through the chat toolbar's upload button, and fetch every uploaded file back from the page.
//
//   node converse_upload.mjs < spec.json
//
// The spec (JSON on stdin):
//   page_url       the test page (index.html), on an origin other than the upload server's
//   websocket_url  Prosody's WebSocket endpoint
//   jid, password  the account Converse logs in with
//   peer           the bare JID the chat is opened with
//   upload_base    where slot URLs point ("http://127.0.0.1:PORT/"): links to it are uploads
//   files          paths of the files to send, one after the other
//   user_data_dir  a fresh, empty directory for Chromium's profile
//   screenshot     where to save a screenshot when something went wrong (optional)
//   timeout        seconds to wait for each step (default 20)
//
// Prints one line of JSON on stdout and exits 0 when every step ran (whatever the uploads'
// outcome: the test judges them), 1 when the driver itself failed:
//   {"ok", "error", "connected" (Converse logged in), "uploads" (per file: "outcome"
//    message|error|timeout, "url" of the new link, "chat_error", "still_uploading" (its
//    progress bar still shown), "fetch" of that URL from the page: status, size, sha256,
//    content_type, or error; for a .png, "image": the width and height of the picture shown
//    in the chat, or null), "network" (every request the page
//    made, preflights included: method, url with query values elided, type, status, error,
//    cors_error), "console" (the last page console lines), "screenshot"}

import * as fs from 'node:fs'
import * as path from 'node:path'

import { chromium } from 'playwright-core'

// As root in a container without a display or GPU, and with no network but loopback: the
// background-networking flags keep Chromium from trying connections of its own, and the
// resolver rule makes every name but loopback's fail at once (Converse's fullscreen footer
// loads its sponsors' logos from the web).
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost',
]
const POLL_MS = 100
// After a failed PUT, how long Converse gets to show an error in the chat (Converse 14 shows
// none: its "Uploading file" line stays).
const ERROR_GRACE_MS = 1500

function elide(url) {
  // Slot URLs carry a MAC in their query: keep the names, drop the values.
  try {
    const parsed = new URL(url)
    if (!parsed.search) return url
    const names = [...parsed.searchParams.keys()].map((name) => `${name}=…`)
    return `${parsed.origin}${parsed.pathname}?${names.join('&')}`
  } catch {
    return url
  }
}

// The headers a failure message needs to tell which side of CORS went wrong (names only for
// Authorization: its value is a token).
const REQUEST_CORS = ['origin', 'access-control-request-method', 'access-control-request-headers', 'content-type', 'authorization']
const RESPONSE_CORS = ['access-control-allow-origin', 'access-control-allow-methods', 'access-control-allow-headers', 'access-control-expose-headers', 'content-type']

function pick(headers, names) {
  const out = {}
  for (const [name, value] of Object.entries(headers ?? {})) {
    const lower = name.toLowerCase()
    if (names.includes(lower)) out[lower] = lower === 'authorization' ? value.split(' ')[0] + ' …' : value
  }
  return out
}

// Every request of the page from the DevTools protocol, which (unlike Playwright's request
// events) also reports CORS preflights.
async function recordNetwork(context, page) {
  const entries = []
  const byId = new Map()
  const cdp = await context.newCDPSession(page)
  const add = (requestId, fields) => {
    const entry = {
      method: null, url: null, type: null, status: null, error: null, cors_error: null,
      request_cors: null, response_cors: null, ...fields,
    }
    entries.push(entry)
    byId.set(requestId, entry)
  }
  cdp.on('Network.requestWillBeSent', (e) => {
    add(e.requestId, {
      method: e.request.method, url: elide(e.request.url), type: e.type ?? null,
      request_cors: pick(e.request.headers, REQUEST_CORS),
    })
  })
  cdp.on('Network.responseReceived', (e) => {
    const entry = byId.get(e.requestId)
    if (entry) {
      entry.status = e.response.status
      entry.response_cors = pick(e.response.headers, RESPONSE_CORS)
    }
  })
  cdp.on('Network.loadingFailed', (e) => {
    const entry = byId.get(e.requestId)
    if (entry) {
      entry.error = e.errorText
      entry.cors_error = e.corsErrorStatus?.corsError ?? null
    }
  })
  cdp.on('Network.webSocketCreated', (e) => {
    add(e.requestId, { method: 'GET', url: elide(e.url), type: 'WebSocket' })
  })
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const entry = byId.get(e.requestId)
    if (entry) entry.status = e.response.status
  })
  await cdp.send('Network.enable')
  return entries
}

async function chatState(page, peer, base) {
  return page.evaluate(({ peer, base }) => {
    const chat = [...document.querySelectorAll('converse-chat')].find((el) => el.getAttribute('jid') === peer)
    if (!chat) return { links: [], errors: [], uploading: [] }
    const links = [...chat.querySelectorAll('converse-chat-message a[href]')]
      .map((a) => a.href)
      .filter((href) => href.startsWith(base))
    const errors = [...chat.querySelectorAll('.chat-info.chat-error')].map((el) => el.textContent.trim())
    const uploading = [...chat.querySelectorAll('converse-chat-message')]
      .filter((el) => el.querySelector('progress'))
      .map((el) => el.querySelector('.chat-msg__text strong')?.textContent ?? '')
    return { links: [...new Set(links)], errors, uploading }
  }, { peer, base })
}

// Send one file and wait for what Converse makes of it: a message with a new link to the
// upload server, an error in the chat, or (after a failed PUT with no error shown) nothing.
async function upload(page, input, network, spec, file, timeoutMs) {
  const before = await chatState(page, spec.peer, spec.upload_base)
  const seenRequests = network.length
  await input.setInputFiles(file)
  const deadline = Date.now() + timeoutMs
  const name = path.basename(file)
  let failedAt = null
  for (;;) {
    const now = await chatState(page, spec.peer, spec.upload_base)
    const outcome = { url: null, chat_error: null, still_uploading: now.uploading.includes(name) }
    const link = now.links.find((href) => !before.links.includes(href))
    if (link) return { ...outcome, outcome: 'message', url: link }
    const error = now.errors.find((text) => !before.errors.includes(text))
    if (error) return { ...outcome, outcome: 'error', chat_error: error }
    const put = network.slice(seenRequests).find((e) => e.method === 'PUT' && (e.error || e.status >= 400))
    if (put && failedAt === null) failedAt = Date.now()
    if (failedAt !== null && Date.now() - failedAt > ERROR_GRACE_MS) return { ...outcome, outcome: 'error' }
    if (Date.now() > deadline) return { ...outcome, outcome: 'timeout' }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS))
  }
}

// The picture Converse shows inline for an image link, once loaded: its size in pixels, or null
// when there is none (not an image) or it never loads.
async function shownImage(page, peer, url, timeoutMs) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const image = await page.evaluate(({ peer, url }) => {
      const chat = [...document.querySelectorAll('converse-chat')].find((el) => el.getAttribute('jid') === peer)
      const img = [...(chat?.querySelectorAll('converse-chat-message img') ?? [])].find((el) => el.src === url)
      if (!img) return { found: false }
      return { found: true, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight }
    }, { peer, url })
    if (image.found && image.complete) return { width: image.width, height: image.height }
    if (Date.now() > deadline) return null
    await new Promise((resolve) => setTimeout(resolve, POLL_MS))
  }
}

// A CORS GET from the page's origin, the way a web client shows or saves a file.
async function fetchFromPage(page, url) {
  return page.evaluate(async (url) => {
    try {
      const response = await fetch(url, { cache: 'no-store' })
      const body = new Uint8Array(await response.arrayBuffer())
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', body))
      return {
        status: response.status,
        size: body.length,
        sha256: [...digest].map((b) => b.toString(16).padStart(2, '0')).join(''),
        content_type: response.headers.get('content-type'),
        error: null,
      }
    } catch (e) {
      return { status: null, size: null, sha256: null, content_type: null, error: String(e) }
    }
  }, url)
}

async function run(spec, result) {
  const timeoutMs = (spec.timeout ?? 20) * 1000
  const context = await chromium.launchPersistentContext(spec.user_data_dir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: timeoutMs,
  })
  try {
    const page = context.pages()[0] ?? await context.newPage()
    page.setDefaultTimeout(timeoutMs)
    page.on('console', (message) => result.console.push(`${message.type()}: ${message.text()}`))
    page.on('pageerror', (error) => result.console.push(`pageerror: ${error}`))
    result.network = await recordNetwork(context, page)
    try {
      await page.goto(spec.page_url)
      await page.waitForFunction(() => typeof window.startConverse === 'function')
      await page.evaluate((settings) => { window.startConverse(settings) }, {
        websocket_url: spec.websocket_url,
        discover_connection_methods: false,
        authentication: 'login',
        auto_login: true,
        jid: spec.jid,
        password: spec.password,
        auto_join_private_chats: [spec.peer],
        allow_non_roster_messaging: true,
        view_mode: 'fullscreen',
        assets_path: '/dist/',
        i18n: 'en',
        loglevel: 'info',
        play_sounds: false,
        show_desktop_notifications: false,
        persistent_store: 'localStorage',
        // Not what is tested, and it loads a WebAssembly file from outside assets_path.
        blacklisted_plugins: ['converse-omemo', 'converse-omemo-views'],
      })
      const input = page.locator(`converse-chat[jid="${spec.peer}"] input.fileupload`)
      try {
        await input.waitFor({ state: 'attached' })
      } finally {
        result.connected = await page.evaluate(() => window.probe?.connected ?? false)
      }
      for (const file of spec.files) {
        const outcome = await upload(page, input, result.network, spec, file, timeoutMs)
        outcome.file = path.basename(file)
        outcome.fetch = outcome.url ? await fetchFromPage(page, outcome.url) : null
        outcome.image = outcome.url && /\.png$/i.test(file)
          ? await shownImage(page, spec.peer, outcome.url, timeoutMs)
          : null
        result.uploads.push(outcome)
      }
      result.ok = true
    } finally {
      const failed = !result.ok || result.uploads.some((u) => u.outcome !== 'message')
      if (failed && spec.screenshot) {
        await page.screenshot({ path: spec.screenshot }).catch(() => {})
        result.screenshot = spec.screenshot
      }
    }
  } finally {
    await context.close()
  }
}

const result = { ok: false, error: null, connected: false, uploads: [], network: [], console: [], screenshot: null }
try {
  await run(JSON.parse(fs.readFileSync(0, 'utf-8')), result)
} catch (e) {
  result.error = String(e?.stack ?? e)
}
result.console = result.console.slice(-60)
process.stdout.write(JSON.stringify(result) + '\n')
process.exit(result.ok ? 0 : 1)
