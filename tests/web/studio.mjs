// Drives the refmaster studio page in Debian's headless Chromium (tests/web.rs runs this):
// choose files, wait for the master, play and switch A/B, change the amount, download.
// Usage: node studio.mjs URL MIX REFERENCE OUT_DIR
import puppeteer from "puppeteer-core";
import fs from "node:fs";
import path from "node:path";

const [url, mixArg, refArg, outDir] = process.argv.slice(2);
// Chromium reads the chosen files itself: give it absolute, normalised paths.
const [mix, reference] = [mixArg, refArg].map((p) => p && path.resolve(p));
if (!outDir) {
  console.error("usage: node studio.mjs URL MIX REFERENCE OUT_DIR");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
const check = (ok, what) => {
  if (!ok) throw new Error(`failed: ${what}`);
  console.log(`ok: ${what}`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Polls a predicate in the page (page.evaluate every 250 ms) until it holds.
async function until(page, fn, arg, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await page.evaluate(fn, arg)) return;
    const shown = await page.evaluate(() => document.getElementById("error").textContent);
    if (shown) throw new Error(`the page shows an error: ${shown}`);
    await sleep(250);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${fn}`);
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  protocolTimeout: 900000,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
  ],
});

async function masterOnce(page) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(url, { waitUntil: "load" });
  await (await page.$("#mix")).uploadFile(mix);
  await (await page.$("#refs")).uploadFile(reference);
  await page.click("#go");
  await until(page, () => !document.getElementById("result").hidden && !!window.refmasterPlayer().job, null, 600000);
  await until(page, () => document.querySelectorAll("#downloads a").length > 3, null, 60000);
  await until(page, () => window.refmasterPlayer().ready, null, 120000);
  return errors;
}

try {
  // ---- desktop ----
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const errors = await masterOnce(page);
  check(true, "chose the mix and the reference and the master arrived");
  const numbers = await page.$eval("#numbers", (e) => e.textContent);
  check(/LUFS/.test(numbers) && /dBTP/.test(numbers), `numbers shown: ${numbers.slice(0, 80)}`);

  await page.click("#play");
  await sleep(700);
  const a = await page.evaluate(() => window.refmasterPlayer());
  check(a.playing && a.position > 0.2 && a.active === "master", `playing the master at ${a.position.toFixed(2)} s`);
  await page.click("#ab-mix");
  const b = await page.evaluate(() => window.refmasterPlayer());
  check(b.active === "mix" && b.position >= a.position, `switched to the mix at ${b.position.toFixed(2)} s without losing the position`);
  const expectGain = (db) => Math.pow(10, db / 20);
  check(Math.abs(b.gains.mix - expectGain(b.matchDb.mix)) < 1e-3 && b.gains.master === 0,
    `only the mix is heard, at its matched gain ${b.matchDb.mix.toFixed(2)} dB`);
  await page.click("#ab-ref");
  await sleep(300);
  const c = await page.evaluate(() => window.refmasterPlayer());
  check(c.active === "ref" && c.position > b.position && c.gains.ref > 0 && c.gains.mix === 0,
    `switched to the reference at ${c.position.toFixed(2)} s, matched ${c.matchDb.ref.toFixed(2)} dB`);
  const dbs = Object.values(c.matchDb);
  check(Math.max(...dbs) === 0 && Math.min(...dbs) <= 0, "matched to the quietest: no gain above 0 dB");
  await page.click("#ab-master");
  await page.screenshot({ path: path.join(outDir, "desktop.png"), fullPage: true });
  check(true, `screenshot ${path.join(outDir, "desktop.png")}`);

  // ---- change the amount and re-master ----
  const firstJob = c.job;
  await page.$eval("#amount", (e) => { e.value = "50"; e.dispatchEvent(new Event("input")); });
  await page.click("#rerun");
  await until(page, (j) => window.refmasterPlayer().job !== j && /mastered in/.test(document.getElementById("timing").textContent),
    firstJob, 600000);
  const timing = await page.$eval("#timing", (e) => e.textContent);
  await until(page, () => window.refmasterPlayer().ready, null, 120000);
  const d = await page.evaluate(() => window.refmasterPlayer());
  check(d.job !== firstJob, `re-mastered at amount 50: "${timing}"`);
  const opts = await page.evaluate(async (j) => (await (await fetch(`/api/jobs/${j}`)).json()).result.options, d.job);
  check(opts.amount === 50, "the new job ran with amount 50");

  // ---- download the master ----
  const dl = path.join(outDir, "downloads");
  fs.rmSync(dl, { recursive: true, force: true });
  fs.mkdirSync(dl, { recursive: true });
  const cdp = await page.createCDPSession();
  await cdp.send("Browser.setDownloadBehavior", { behavior: "allow", downloadPath: dl });
  await page.click('#downloads a[data-name="master"]');
  let wav = null;
  for (let i = 0; i < 300 && !wav; i++) {
    await sleep(100);
    wav = fs.readdirSync(dl).find((f) => f.endsWith(".wav"));
  }
  check(wav, `downloaded ${wav}`);
  const bytes = fs.readFileSync(path.join(dl, wav));
  check(bytes.subarray(0, 4).toString() === "RIFF" && bytes.subarray(8, 12).toString() === "WAVE" && bytes.length > 44,
    `the download is a WAV file of ${bytes.length} bytes`);
  await page.click('#downloads a[data-name="settings"]');
  let json = null;
  for (let i = 0; i < 100 && !json; i++) {
    await sleep(100);
    json = fs.readdirSync(dl).find((f) => f.endsWith(".json"));
  }
  check(json && JSON.parse(fs.readFileSync(path.join(dl, json), "utf8")), `downloaded the settings ${json}`);
  check(errors.length === 0, `no errors in the page${errors.length ? ": " + errors.join("; ") : ""}`);

  // ---- a phone-sized window ----
  const phone = await browser.newPage();
  await phone.setViewport({ width: 390, height: 844, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  await masterOnce(phone);
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `nothing wider than the phone's screen (overflow ${overflow} px)`);
  await phone.screenshot({ path: path.join(outDir, "phone.png"), fullPage: true });
  await phone.screenshot({ path: path.join(outDir, "phone-first-screen.png") });
  await phone.$eval("#result", (e) => e.scrollIntoView());
  await phone.screenshot({ path: path.join(outDir, "phone-player.png") });
  check(true, `screenshot ${path.join(outDir, "phone.png")}`);
  console.log("PASS");
} finally {
  await browser.close();
}
