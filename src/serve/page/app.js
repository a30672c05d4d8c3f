// refmaster studio: upload, follow the job, listen level-matched, adjust, download.
// Uses only the JSON API documented in the README; no library, nothing from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { mixFile: null, refFiles: [], job: null, result: null, startedAt: 0 };

// ---- files -----------------------------------------------------------------------------
function setMix(file) {
  state.mixFile = file || null;
  $("mix-name").textContent = file ? file.name : "no file yet";
  $("go").disabled = !state.mixFile;
}
function setRefs(files) {
  state.refFiles = Array.from(files || []);
  $("ref-names").textContent = state.refFiles.length
    ? state.refFiles.map((f) => f.name).join(", ")
    : "none: a learned target is chosen for your mix";
}
$("mix").addEventListener("change", (e) => setMix(e.target.files[0]));
$("refs").addEventListener("change", (e) => setRefs(e.target.files));
for (const [zone, isMix] of [["drop-mix", true], ["drop-ref", false]]) {
  const el = $(zone);
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault();
    el.classList.remove("over");
    if (isMix) setMix(e.dataTransfer.files[0]); else setRefs(e.dataTransfer.files);
  });
}

// ---- API ---------------------------------------------------------------------------------
async function api(url, init) {
  const r = await fetch(url, init);
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

function showError(msg) {
  $("error").hidden = !msg;
  $("error").textContent = msg || "";
}

// Follows a job by server-sent events until it is done or failed.
function follow(id) {
  return new Promise((resolve, reject) => {
    const es = new EventSource(`/api/jobs/${id}/events`);
    $("progress-box").hidden = false;
    es.addEventListener("status", (ev) => {
      const s = JSON.parse(ev.data);
      $("progress").value = s.progress;
      $("stage").textContent = s.state === "queued" ? "queued: waiting for another job to finish" : s.stage;
      if (s.state === "done") { es.close(); resolve(s); }
      if (s.state === "failed") { es.close(); reject(new Error(s.error)); }
    });
    es.onerror = () => {
      // The stream ended or broke: ask once for the state.
      es.close();
      api(`/api/jobs/${id}`).then((s) => {
        if (s.state === "done") resolve(s);
        else if (s.state === "failed") reject(new Error(s.error));
        else setTimeout(() => follow(id).then(resolve, reject), 500);
      }, reject);
    };
  });
}

function currentOptions() {
  const o = { amount: Number($("amount").value), bits: $("bits").value };
  const platform = $("platform").value;
  if (platform) o.platform = platform;
  if ($("lufs").value !== "") o.lufs = Number($("lufs").value);
  if ($("ceiling").value !== "") o.ceiling = Number($("ceiling").value);
  for (const st of ["eq", "dynamics", "width", "saturation", "limiter"]) {
    if (!$(`st-${st}`).checked) o[`no_${st}`] = true;
  }
  return o;
}

async function master() {
  showError("");
  $("go").disabled = true;
  $("platform").value = $("platform-first").value;
  const form = new FormData();
  form.append("mix", state.mixFile, state.mixFile.name);
  for (const f of state.refFiles) form.append("reference", f, f.name);
  form.append("options", JSON.stringify(currentOptions()));
  try {
    const job = await api("/api/jobs", { method: "POST", body: form });
    await finish(job.id);
  } catch (e) {
    showError(e.message);
  } finally {
    $("go").disabled = !state.mixFile;
  }
}
$("go").addEventListener("click", master);

async function rerun() {
  if (!state.job) return;
  showError("");
  $("rerun").disabled = true;
  $("timing").textContent = "re-mastering...";
  try {
    const job = await api(`/api/jobs/${state.job}/rerun`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(currentOptions()),
    });
    const previous = state.job;
    await finish(job.id);
    api(`/api/jobs/${previous}`, { method: "DELETE" }).catch(() => {});
  } catch (e) {
    showError(e.message);
    $("timing").textContent = "";
  } finally {
    $("rerun").disabled = false;
  }
}
$("rerun").addEventListener("click", rerun);
$("amount").addEventListener("input", () => { $("amount-out").textContent = $("amount").value; });

async function finish(id) {
  const s = await follow(id);
  state.job = id;
  state.result = s.result;
  $("stage").textContent = `done in ${s.seconds.toFixed(1)} s`;
  $("timing").textContent = `mastered in ${s.seconds.toFixed(1)} s`;
  await showResult(s.result);
}

// ---- result ------------------------------------------------------------------------------
const fmt = (x, unit) => (x == null ? "n/a" : `${x.toFixed(1)} ${unit}`);

async function showResult(r) {
  $("result").hidden = false;
  $("play").disabled = true;
  const cells = [
    ["Master loudness", fmt(r.integrated_lufs, "LUFS")],
    ["Master true peak", fmt(r.true_peak_dbtp, "dBTP")],
    ["Mix loudness", fmt(r.mix_lufs, "LUFS")],
    [state.refFiles.length ? "Reference loudness" : "Target loudness", fmt(r.reference_lufs, "LUFS")],
    ["Target / ceiling", `${fmt(r.target_lufs, "LUFS")} / ${fmt(r.ceiling_dbtp, "dBTP")}`],
  ];
  $("numbers").replaceChildren(...cells.map(([k, v]) => {
    const d = document.createElement("div");
    const b = document.createElement("b");
    b.textContent = v;
    const s = document.createElement("span");
    s.textContent = k;
    d.append(b, s);
    return d;
  }));
  $("chain").textContent = [r.target_note, r.chain].filter(Boolean).join("\n");
  const items = [
    ...r.warnings.map((w) => ["warn", `warning: ${w}`]),
    ...r.notes.map((n) => ["", n]),
    ...r.playback.map((p) => ["", `playback: ${p}`]),
  ];
  $("notes").replaceChildren(...items.map(([cls, t]) => {
    const li = document.createElement("li");
    if (cls) li.className = cls;
    li.textContent = t;
    return li;
  }));
  const labels = { master: `Master WAV (${r.options.bits === "32f" ? "32-bit float" : r.options.bits + "-bit"})`, settings: "Settings JSON", report: "Report HTML" };
  $("downloads").replaceChildren(...Object.entries(r.files).map(([name, url]) => {
    const a = document.createElement("a");
    a.href = url;
    a.dataset.name = name;
    a.textContent = labels[name] || name;
    if (name === "master") a.className = "main";
    if (name !== "report") a.setAttribute("download", "");
    else a.target = "_blank";
    return a;
  }));
  $("report").src = r.files.report;
  await player.load(r);
}

// ---- the level-matched A/B player ---------------------------------------------------------
// All sources start together on one AudioContext clock; switching only changes which gain is
// open, so the position never moves and the switch is instant. Each gain is the difference
// between the quietest of the three's integrated loudness and its own (measured by refmaster),
// so all three play equally loud and nothing is turned up into clipping.
const player = {
  ctx: null, buffers: {}, gains: {}, matchDb: {}, sources: [], active: "master",
  playing: false, offset: 0, startedAt: 0, duration: 0, peaks: null, mixKey: null, refKey: null,

  async load(r) {
    this.ready = false;
    this.ctx = this.ctx || new AudioContext();
    const ctx = this.ctx;
    const decode = async (buf) => ctx.decodeAudioData(buf);
    const mixKey = state.mixFile && `${state.mixFile.name}:${state.mixFile.size}`;
    if (mixKey !== this.mixKey) {
      this.buffers.mix = await decode(await state.mixFile.arrayBuffer());
      this.mixKey = mixKey;
    }
    const ref = state.refFiles.length === 1 ? state.refFiles[0] : null;
    const refKey = ref && `${ref.name}:${ref.size}`;
    if (refKey !== this.refKey) {
      this.buffers.ref = ref ? await decode(await ref.arrayBuffer()).catch(() => null) : null;
      this.refKey = refKey;
    }
    const resp = await fetch(r.files.master);
    this.buffers.master = await decode(await resp.arrayBuffer());
    const loud = { mix: r.mix_lufs, master: r.integrated_lufs, ref: this.buffers.ref ? r.reference_lufs : null };
    const known = Object.values(loud).filter((x) => x != null);
    const play = Math.min(...known);
    for (const k of Object.keys(loud)) this.matchDb[k] = loud[k] == null ? 0 : play - loud[k];
    $("ab-ref").hidden = !this.buffers.ref;
    $("matched").textContent =
      `All ${this.buffers.ref ? "three" : "two"} play at the same integrated loudness, ${play.toFixed(1)} LUFS ` +
      `(mix ${sign(this.matchDb.mix)} dB, master ${sign(this.matchDb.master)} dB` +
      (this.buffers.ref ? `, reference ${sign(this.matchDb.ref)} dB` : "") +
      `, from each one's measured loudness), so you hear tone and dynamics, not just "louder". ` +
      `Switch while it plays: the position stays.`;
    this.duration = Math.max(this.buffers.mix.duration, this.buffers.master.duration);
    this.peaks = null;
    if (this.playing) this.start(this.position());
    this.draw();
    $("play").disabled = false;
    this.ready = true;
  },

  position() {
    return this.playing ? Math.min(this.duration, this.offset + this.ctx.currentTime - this.startedAt) : this.offset;
  },

  start(at) {
    this.stopSources();
    const ctx = this.ctx;
    if (ctx.state === "suspended") ctx.resume();
    this.offset = Math.max(0, Math.min(at, this.duration));
    const when = ctx.currentTime + 0.03;
    for (const k of ["mix", "master", "ref"]) {
      const b = this.buffers[k];
      if (!b) continue;
      const src = ctx.createBufferSource();
      src.buffer = b;
      const g = ctx.createGain();
      g.gain.value = k === this.active ? Math.pow(10, this.matchDb[k] / 20) : 0;
      src.connect(g).connect(ctx.destination);
      if (this.offset < b.duration) src.start(when, this.offset);
      this.sources.push(src);
      this.gains[k] = g;
    }
    this.startedAt = when;
    this.playing = true;
    $("play").innerHTML = "&#10074;&#10074; Pause";
    this.tick();
  },

  stopSources() {
    for (const s of this.sources) { try { s.stop(); } catch (_) { /* not started */ } }
    this.sources = [];
    this.gains = {};
  },

  pause() {
    this.offset = this.position();
    this.playing = false;
    this.stopSources();
    $("play").innerHTML = "&#9654; Play";
    this.draw();
  },

  toggle() { if (this.playing) this.pause(); else this.start(this.offset >= this.duration ? 0 : this.offset); },

  select(k) {
    if (k === "ref" && !this.buffers.ref) return;
    this.active = k;
    for (const [name, g] of Object.entries(this.gains)) {
      // Set as the value itself (as start() does), not as an event at currentTime: an event is
      // applied, and read back through gain.value, only when the audio thread next renders, so
      // for a moment after the switch the player reported the old source's gains.
      g.gain.value = name === k ? Math.pow(10, this.matchDb[name] / 20) : 0;
    }
    for (const b of document.querySelectorAll(".ab button")) b.classList.toggle("on", b.dataset.src === k);
    this.peaks = null;
    this.draw();
  },

  seek(t) { if (this.playing) this.start(t); else { this.offset = t; this.draw(); } },

  tick() {
    if (!this.playing) return;
    if (this.position() >= this.duration) { this.pause(); this.offset = 0; this.draw(); return; }
    this.draw();
    requestAnimationFrame(() => this.tick());
  },

  draw() {
    const c = $("wave");
    const w = (c.width = c.clientWidth * devicePixelRatio);
    const h = (c.height = 120 * devicePixelRatio);
    const g = c.getContext("2d");
    const buf = this.buffers[this.active];
    if (!buf) return;
    if (!this.peaks) this.peaks = peaksOf(buf, w, this.duration);
    const colour = { mix: "#6fa8dc", master: "#f0a040", ref: "#93c47d" }[this.active];
    const gain = Math.pow(10, this.matchDb[this.active] / 20);
    g.fillStyle = colour;
    for (let x = 0; x < w; x++) {
      const p = Math.min(1, this.peaks[x] * gain);
      g.fillRect(x, h / 2 - (p * h) / 2, 1, Math.max(1, p * h));
    }
    const pos = this.position();
    g.fillStyle = "#fff";
    g.fillRect((pos / this.duration) * w, 0, 2 * devicePixelRatio, h);
    $("clock").textContent = `${clock(pos)} / ${clock(this.duration)}`;
  },
};

function peaksOf(buf, columns, duration) {
  const out = new Float32Array(columns);
  const chans = Array.from({ length: buf.numberOfChannels }, (_, i) => buf.getChannelData(i));
  const per = (duration * buf.sampleRate) / columns;
  for (let x = 0; x < columns; x++) {
    const a = Math.floor(x * per), b = Math.min(buf.length, Math.floor((x + 1) * per));
    let m = 0;
    for (const ch of chans) for (let i = a; i < b; i++) { const v = Math.abs(ch[i]); if (v > m) m = v; }
    out[x] = m;
  }
  return out;
}
const sign = (x) => (x >= 0 ? "+" : "") + x.toFixed(1);
const clock = (t) => `${Math.floor(t / 60)}:${String(Math.floor(t % 60)).padStart(2, "0")}`;

$("play").addEventListener("click", () => player.toggle());
for (const b of document.querySelectorAll(".ab button")) b.addEventListener("click", () => player.select(b.dataset.src));
$("wave").addEventListener("click", (e) => {
  const r = e.target.getBoundingClientRect();
  player.seek(((e.clientX - r.left) / r.width) * player.duration);
});
window.addEventListener("resize", () => { player.peaks = null; player.draw(); });
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || !player.ctx) return;
  if (e.key === " ") { e.preventDefault(); player.toggle(); }
  if (e.key === "1") player.select("mix");
  if (e.key === "2") player.select("master");
  if (e.key === "3") player.select("ref");
});

// For scripts and the browser test: what the player is doing.
window.refmasterPlayer = () => ({
  ready: !!player.ready, playing: player.playing, position: player.position(), active: player.active, matchDb: { ...player.matchDb },
  gains: Object.fromEntries(Object.entries(player.gains).map(([k, g]) => [k, g.gain.value])),
  job: state.job,
});

// ---- controls from the server's list of platforms --------------------------------------
api("/api/info").then((info) => {
  $("version").textContent = info.version;
  for (const sel of [$("platform-first"), $("platform")]) {
    for (const p of info.platforms) {
      const o = document.createElement("option");
      o.value = p.name;
      o.textContent = p.target_lufs == null ? `${p.name} (reference loudness, ${p.ceiling_dbtp} dBTP)` : `${p.name} (${p.target_lufs} LUFS, ${p.ceiling_dbtp} dBTP)`;
      sel.append(o);
    }
  }
}).catch(() => {});
