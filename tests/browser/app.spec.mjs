// Drive the GLVC Gradio app in a real browser (Debian's chromium through playwright-core):
// upload a clip, encode, and check that the decoded video plays, the numbers show and the
// .glvc download works and every picture (per-frame chart, frame inspector, bits map, RD sweep)
// renders, each saved as picture_*.png; then decode that download in the second tab. Saves full-page
// screenshots app.png (the encode tab) and app_decode.png, and fails on any error in the page.
//
// Environment:
//   APP_URL      the running app, e.g. http://127.0.0.1:7860/ (required)
//   CLIP         the video file to upload (required)
//   OUT_DIR      where screenshot app.png and the downloaded .glvc go (default: a new temp dir)
//   MAX_HEIGHT, MAX_SECONDS   the app's limits to set before encoding (default: the page's)
//   CHROMIUM     browser binary (default /usr/bin/chromium)
//   TIMEOUT_S    how long to wait for the encode (default 600)
// Prints one JSON line with what it saw; exits 1 on the first failed check.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const url = process.env.APP_URL;
const clip = process.env.CLIP;
if (!url || !clip) {
  console.error("set APP_URL and CLIP");
  process.exit(2);
}
const outDir = process.env.OUT_DIR || fs.mkdtempSync(path.join(os.tmpdir(), "glvc-browser-"));
const timeout = 1000 * Number(process.env.TIMEOUT_S || 600);
let browser = null;
// a last resort: never leave chromium running
const watchdog = setTimeout(async () => {
  console.log(JSON.stringify({ ok: false, error: `watchdog: still running after ${timeout / 1000 + 120} s` }));
  await browser?.close().catch(() => {});
  process.exit(1);
}, timeout + 120_000);
watchdog.unref();

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

// Every <img> under a component, once loaded: its natural size and how many distinct colours a
// 64x64 sample of it holds (a blank or broken picture has 0 or 1).
async function images(locator) {
  await locator.locator("img").first().waitFor({ timeout: 60_000 });
  return locator.locator("img").evaluateAll((imgs) =>
    Promise.all(
      imgs.map(
        (img) =>
          new Promise((resolve) => {
            const measure = () => {
              const canvas = document.createElement("canvas");
              canvas.width = canvas.height = 64;
              const ctx = canvas.getContext("2d");
              let colours = 0;
              try {
                ctx.drawImage(img, 0, 0, 64, 64);
                const data = ctx.getImageData(0, 0, 64, 64).data;
                const seen = new Set();
                for (let i = 0; i < data.length; i += 4) seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
                colours = seen.size;
              } catch (err) {
                colours = -1; // not readable (another origin)
              }
              resolve({ width: img.naturalWidth, height: img.naturalHeight, colours });
            };
            if (img.complete && img.naturalWidth) return measure();
            img.addEventListener("load", measure, { once: true });
            img.addEventListener("error", measure, { once: true });
            setTimeout(measure, 15_000);
          }),
      ),
    ),
  );
}

// A picture component: at least `count` loaded, non-blank images; a screenshot of it in OUT_DIR.
async function picture(id, count, name) {
  const locator = page.locator(`#${id}`);
  await locator.scrollIntoViewIfNeeded();
  const found = await images(locator);
  check(found.length >= count, `#${id} shows ${count} image(s), found ${found.length}`);
  for (const img of found) check(img.width > 0 && img.colours > 1, `#${id} shows a non-empty image (${JSON.stringify(img)})`);
  const file = path.join(outDir, `${name}.png`);
  await locator.screenshot({ path: file });
  return { images: found, screenshot: file };
}

async function setSlider(id, value) {
  const box = page.locator(`#${id} input[type=number]`);
  await box.fill(String(value));
  await box.press("Enter");
  await box.blur();
}

// NOTES.md: flags for Debian's chromium in a container; playwright adds --headless and a fresh
// --user-data-dir of its own.
browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const seen = {};
let failed = null;
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true });
try {
  page.on("pageerror", (err) => (seen.page_errors = [...(seen.page_errors || []), String(err)]));
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.locator("#encode").waitFor({ timeout: 60_000 });

  await page.locator("#clip input[type=file]").setInputFiles(clip);
  await page.locator("#clip video").waitFor({ timeout: 60_000 }); // the upload is shown

  for (const [id, value] of [["max-height", process.env.MAX_HEIGHT], ["max-seconds", process.env.MAX_SECONDS]]) {
    if (!value) continue;
    const box = page.locator(`#${id} input[type=number]`);
    await box.fill(String(value));
    await box.press("Enter");
    await box.blur();
  }

  await page.locator("#encode").click();
  const status = page.locator("#status");
  await status.getByText(/^GLVC: \d+ frames/).waitFor({ timeout });
  seen.status = (await status.innerText()).trim();
  check(!seen.status.includes("\n"), "status is one line");

  // the decoded video: served, and the browser can decode it (H.264 in mp4)
  const video = page.locator("#decoded video");
  await video.waitFor({ timeout: 30_000 });
  seen.video = await video.evaluate(
    (v) =>
      new Promise((resolve) => {
        const done = () => resolve({ src: v.currentSrc || v.src, width: v.videoWidth, height: v.videoHeight, duration: v.duration, error: v.error && v.error.code });
        if (v.readyState >= 1) return done();
        v.addEventListener("loadedmetadata", done, { once: true });
        v.addEventListener("error", done, { once: true });
        setTimeout(done, 15_000);
      }),
  );
  check(seen.video.src, "the decoded video has a source");
  check(seen.video.width > 0 && seen.video.duration > 0, `the browser plays the decoded mp4 (${JSON.stringify(seen.video)})`);

  // the numbers
  const scores = await page.locator("#scores").innerText();
  for (const word of ["kbps", "bits per pixel", "PSNR", "VMAF", "LPIPS", "DISTS", "compression ratio"]) {
    check(scores.includes(word), `the scores table shows ${word}`);
  }
  seen.kbps = scores.match(/kbps\s+([\d.,]+)/)?.[1];
  check(seen.kbps, "a kbps number");
  check((await page.locator("#stages").innerText()).includes("total"), "the time per stage");

  // the download
  const link = page.locator("#bitstream td.download a").first(); // gr.File: name cells, then the size as the link
  await link.waitFor({ timeout: 30_000 });
  const [download] = await Promise.all([page.waitForEvent("download"), link.click()]);
  const saved = path.join(outDir, download.suggestedFilename());
  await download.saveAs(saved);
  seen.download = { name: download.suggestedFilename(), bytes: fs.statSync(saved).size };
  check(seen.download.name.endsWith(".glvc") && seen.download.bytes > 0, "a non-empty .glvc download");
  const magic = fs.readFileSync(saved).subarray(0, 4).toString("latin1");
  check(magic === "GLVC", `the download starts with GLVC, not ${JSON.stringify(magic)}`);

  // the pictures of this encode (chained after it)
  seen.pictures = {};
  seen.pictures.per_frame = await picture("per-frame", 1, "picture_per_frame");
  const frameNote = page.locator("#frame-note");
  await frameNote.getByText(/^Frame \d+ of \d+/).waitFor({ timeout: 60_000 });
  await setSlider("frame-index", 2);
  await frameNote.getByText(/^Frame 2 of \d+/).waitFor({ timeout: 60_000 });
  seen.frame_note = (await frameNote.innerText()).trim();
  seen.pictures.inspector = await picture("inspector", 4, "picture_inspector"); // two sliders of two images each
  const bitsImage = page.locator("#bits-map img").first();
  await bitsImage.waitFor({ timeout: 60_000 });
  const bitsBefore = await bitsImage.getAttribute("src");
  await setSlider("latent-index", 0);
  await page.waitForFunction((before) => document.querySelector("#bits-map img")?.getAttribute("src") !== before, bitsBefore, { timeout: 60_000 });
  seen.pictures.bits = await picture("bits-map", 1, "picture_bits");
  const sweepNote = page.locator("#sweep-note");
  seen.sweep_estimate = (await sweepNote.innerText()).trim();
  check(/about \d+ s/.test(seen.sweep_estimate), `a time estimate before the sweep: ${seen.sweep_estimate}`);
  await page.locator("#sweep").click();
  await sweepNote.getByText(/^RD sweep done/).waitFor({ timeout });
  seen.sweep_note = (await sweepNote.innerText()).trim();
  seen.pictures.rd = await picture("rd-plot", 1, "picture_rd_sweep");
  check((await page.locator("#rd-table").innerText()).includes("x265"), "the RD points table");

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(500);
  await page.screenshot({ path: path.join(outDir, "app.png"), fullPage: true });

  // the second tab: the downloaded bitstream decodes to a playable video of the same size
  await page.getByRole("tab", { name: "Decode a .glvc file" }).click();
  await page.locator("#glvc-in input[type=file]").setInputFiles(saved);
  await page.locator("#glvc-in").getByText(seen.download.name).waitFor({ timeout: 30_000 });
  await page.locator("#decode").click();
  const decodeStatus = page.locator("#decode-status");
  await decodeStatus.getByText(/^Decoded \d+ frames/).waitFor({ timeout });
  seen.decode_status = (await decodeStatus.innerText()).trim();
  const frames = seen.status.match(/^GLVC: (\d+ frames \d+x\d+)/)[1];
  check(seen.decode_status.startsWith(`Decoded ${frames}`), `the decode tab gives ${frames} too`);
  const decodedOnly = await page.locator("#decoded-only video").evaluate(
    (v) =>
      new Promise((resolve) => {
        const done = () => resolve({ width: v.videoWidth, height: v.videoHeight, duration: v.duration });
        if (v.readyState >= 1) return done();
        v.addEventListener("loadedmetadata", done, { once: true });
        setTimeout(done, 15_000);
      }),
  );
  check(decodedOnly.width === seen.video.width && decodedOnly.height === seen.video.height, `decoded sizes match (${JSON.stringify(decodedOnly)})`);
  check(!seen.page_errors, `no errors in the page: ${JSON.stringify(seen.page_errors)}`);
} catch (err) {
  failed = err;
} finally {
  seen.screenshot = path.join(outDir, "app.png"); // the encode tab with its results
  if (!fs.existsSync(seen.screenshot) || failed) {
    await page.screenshot({ path: seen.screenshot, fullPage: true }).catch(() => delete seen.screenshot);
  }
  await page.screenshot({ path: path.join(outDir, "app_decode.png"), fullPage: true }).catch(() => {});
  await browser.close();
}
seen.ok = !failed;
if (failed) seen.error = String(failed.message || failed);
console.log(JSON.stringify(seen));
process.exit(failed ? 1 : 0);
