//! The render chain as a list of stages sharing one interface, as in JUCE's dsp module or
//! pedalboard: each stage is built for a sample rate and channel layout from the settings,
//! takes planar chunks of any length, hands on output aligned with its input (a stage with a
//! look-ahead or a linear-phase delay holds frames back and reports how many), and flushes
//! what it holds at the end, so that after [`Stage::finish`] it has handed on exactly as many
//! frames as it received.
//!
//! The whole render, the closed loop's passes (full song or proxy), `refmaster apply` and the
//! Python package all run chains built by the functions here; `master.rs` decides settings and
//! never reaches into how a stage computes.
//!
//! Layout of the planes between stages: L/R (or mono) at the ends; mid/side between
//! [`MidSideEncode`] and [`MidSideDecode`]; after [`Envelope`] one more plane, the true-peak
//! envelope (linear, undriven), a side-chain the [`Limiter`] consumes.

use crate::error::{Error, Result};
use crate::render::dynamics::{Compressor, LinearPhaseSplit};
use crate::render::eq;
use crate::render::limiter::LimiterStats;
use crate::render::saturation::Quality;
use crate::render::stream::{slices, EnvelopeStage, Planes, SaturatorStage, StreamLimiter};
use crate::settings::Settings;
use crate::source::FrameSource;

/// What a stage is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSpec {
    /// Sample rate, Hz.
    pub sample_rate_hz: u32,
    /// Audio channels of the mix (1 or 2).
    pub channels: usize,
}

/// One processor of the chain.
pub trait Stage: Send {
    /// Short name for reports and timing ("eq", "compressor", ...).
    fn name(&self) -> &'static str;
    /// Frames of input the stage holds back before its first output frame: its look-ahead or
    /// filter delay, compensated inside the stage (its output stays aligned with its input).
    fn latency_frames(&self) -> usize;
    /// Processes a chunk (planar, all planes the same length), appending the output that is
    /// ready to `out` (as many planes as the stage hands on).
    fn process(&mut self, input: &[&[f32]], out: &mut Planes);
    /// Appends everything still held back: the stage has then handed on as many frames as it
    /// received.
    fn finish(&mut self, out: &mut Planes);
    /// What the stage did, for a limiter (`None` for every other stage).
    fn limiter_stats(&self) -> Option<LimiterStats> {
        None
    }
}

/// L/R to mid/side: mid = (L + R) / 2, side = (L − R) / 2.
pub struct MidSideEncode;

impl Stage for MidSideEncode {
    fn name(&self) -> &'static str {
        "mid/side"
    }
    fn latency_frames(&self) -> usize {
        0
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        if let ([l, r, ..], [m, s, ..]) = (input, out.as_mut_slice()) {
            m.extend(l.iter().zip(r.iter()).map(|(a, b)| 0.5 * (a + b)));
            s.extend(l.iter().zip(r.iter()).map(|(a, b)| 0.5 * (a - b)));
        }
    }
    fn finish(&mut self, _out: &mut Planes) {}
}

/// Mid/side back to L/R: L = mid + side, R = mid − side.
pub struct MidSideDecode;

impl Stage for MidSideDecode {
    fn name(&self) -> &'static str {
        "left/right"
    }
    fn latency_frames(&self) -> usize {
        0
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        if let ([m, s, ..], [l, r, ..]) = (input, out.as_mut_slice()) {
            l.extend(m.iter().zip(s.iter()).map(|(m, s)| m + s));
            r.extend(m.iter().zip(s.iter()).map(|(m, s)| m - s));
        }
    }
    fn finish(&mut self, _out: &mut Planes) {}
}

/// The linear-phase EQ: one FIR per plane (mid, and side with the width gains folded in), its
/// delay dropped. A flat curve leaves its plane unfiltered; the planes are handed on together
/// (a filtered plane's output starts later than an unfiltered one's, so the rest waits).
pub struct Equalizer {
    filters: Vec<Option<crate::dsp::fir::StreamConvolver>>,
    pending: Planes,
    latency: usize,
}

impl Equalizer {
    /// The EQ of `s` for mid (and side, for stereo).
    pub fn new(spec: StageSpec, s: &Settings) -> Self {
        let rate = spec.sample_rate_hz;
        let fir = |curve: &dyn Fn(f64) -> f64| {
            eq::curve_taps(rate, curve)
                .map(|taps| (taps.len() / 2, crate::dsp::fir::StreamConvolver::new(&taps, taps.len() / 2)))
        };
        let mut filters = vec![fir(&|f| eq::mid_curve_db(&s.eq, f))];
        if spec.channels == 2 {
            filters.push(fir(&|f| eq::side_curve_db(&s.eq, &s.width, f)));
        }
        let latency = filters.iter().flatten().map(|(d, _)| *d).max().unwrap_or(0);
        Self {
            pending: vec![Vec::new(); filters.len()],
            filters: filters.into_iter().map(|f| f.map(|(_, c)| c)).collect(),
            latency,
        }
    }

    fn hand_on(&mut self, out: &mut Planes) {
        let n = self.pending.iter().map(Vec::len).min().unwrap_or(0);
        for (o, p) in out.iter_mut().zip(self.pending.iter_mut()) {
            o.extend_from_slice(&p[..n]);
            p.drain(..n);
        }
    }
}

impl Stage for Equalizer {
    fn name(&self) -> &'static str {
        "eq"
    }
    fn latency_frames(&self) -> usize {
        self.latency
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        for ((f, p), x) in self.filters.iter_mut().zip(self.pending.iter_mut()).zip(input) {
            match f {
                Some(f) => f.process(x, p),
                None => p.extend_from_slice(x),
            }
        }
        self.hand_on(out);
    }
    fn finish(&mut self, out: &mut Planes) {
        for (f, p) in self.filters.iter_mut().zip(self.pending.iter_mut()) {
            if let Some(f) = f {
                f.finish(p);
            }
        }
        self.hand_on(out);
    }
}

/// The compressor ([`Compressor`]) on mid (and side) planes.
pub struct Compression {
    compressor: Compressor,
    no_side: Vec<f32>,
}

impl Compression {
    /// The compressor of `s`.
    pub fn new(spec: StageSpec, s: &Settings) -> Self {
        Self { compressor: Compressor::new(spec.sample_rate_hz, &s.dynamics, spec.channels == 2), no_side: Vec::new() }
    }
}

impl Stage for Compression {
    fn name(&self) -> &'static str {
        "compressor"
    }
    fn latency_frames(&self) -> usize {
        self.compressor.latency_frames()
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        let side_in: &[f32] = input.get(1).copied().unwrap_or(&[]);
        if let (Some(m), Some((mo, so))) = (input.first(), mid_side_out(out, &mut self.no_side)) {
            self.compressor.process(m, side_in, mo, so);
        }
    }
    fn finish(&mut self, out: &mut Planes) {
        if let Some((mo, so)) = mid_side_out(out, &mut self.no_side) {
            self.compressor.finish(mo, so);
        }
    }
}

/// The mid and side output planes of a compressor stage; mono has no side plane, so `no_side`
/// (never read) takes its place.
fn mid_side_out<'a>(out: &'a mut Planes, no_side: &'a mut Vec<f32>) -> Option<(&'a mut Vec<f32>, &'a mut Vec<f32>)> {
    match out.as_mut_slice() {
        [mo, so, ..] => Some((mo, so)),
        [mo] => Some((mo, no_side)),
        [] => None,
    }
}

/// The compressor's detectors on mid (and side) planes, its multiband split detached
/// ([`Compressor::detach_split`]): hands on the input planes and, after them, the four planes of
/// the band gains' weights for [`CompressionSplit`], which may run on another thread.
pub struct CompressionDetect(Compressor);

impl Stage for CompressionDetect {
    fn name(&self) -> &'static str {
        "compressor detectors"
    }
    fn latency_frames(&self) -> usize {
        0
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        self.0.detect(input, out);
    }
    fn finish(&mut self, out: &mut Planes) {
        self.0.finish_detect(out);
    }
}

/// The compressor's multiband split: applies the gains [`CompressionDetect`] found to the
/// planes it handed on with them.
pub struct CompressionSplit {
    split: LinearPhaseSplit,
    no_side: Vec<f32>,
}

impl Stage for CompressionSplit {
    fn name(&self) -> &'static str {
        "compressor split"
    }
    fn latency_frames(&self) -> usize {
        self.split.latency_frames()
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        if let Some((mo, so)) = mid_side_out(out, &mut self.no_side) {
            self.split.process(input, mo, so);
        }
    }
    fn finish(&mut self, out: &mut Planes) {
        if let Some((mo, so)) = mid_side_out(out, &mut self.no_side) {
            self.split.finish(mo, so);
        }
    }
}

/// The soft-clipping saturator on L/R ([`SaturatorStage`]).
pub struct Saturation(SaturatorStage);

impl Stage for Saturation {
    fn name(&self) -> &'static str {
        "saturator"
    }
    fn latency_frames(&self) -> usize {
        0
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        self.0.process(input, out);
    }
    fn finish(&mut self, out: &mut Planes) {
        self.0.finish(out);
    }
}

/// Appends the 4× true-peak envelope ([`EnvelopeStage`]) as one more plane: the limiter's
/// side-chain.
pub struct Envelope {
    stage: EnvelopeStage,
    env: Vec<f32>,
}

impl Envelope {
    /// An envelope stage for `spec`'s channels.
    pub fn new(spec: StageSpec) -> Self {
        Self { stage: EnvelopeStage::new(spec.channels), env: Vec::new() }
    }

    /// Runs `step` on the audio planes of `out` (all but the last), then appends the envelope
    /// it produced to the last plane.
    fn with_audio(&mut self, out: &mut Planes, step: impl FnOnce(&mut EnvelopeStage, &mut Planes, &mut Vec<f32>)) {
        let Some(mut env_plane) = out.pop() else {
            return;
        };
        step(&mut self.stage, out, &mut self.env);
        env_plane.append(&mut self.env);
        out.push(env_plane);
    }
}

impl Stage for Envelope {
    fn name(&self) -> &'static str {
        "true-peak envelope"
    }
    fn latency_frames(&self) -> usize {
        0
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        self.with_audio(out, |stage, audio, env| stage.process(input, audio, env));
    }
    fn finish(&mut self, out: &mut Planes) {
        self.with_audio(out, |stage, audio, env| stage.finish(audio, env));
    }
}

/// The true-peak limiter ([`StreamLimiter`]): takes the audio planes and the envelope plane,
/// hands on the audio.
pub struct Limiter(pub StreamLimiter);

impl Stage for Limiter {
    fn name(&self) -> &'static str {
        "limiter"
    }
    fn latency_frames(&self) -> usize {
        self.0.latency_frames()
    }
    fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        if let Some((env, audio)) = input.split_last() {
            self.0.process(audio, env, out);
        }
    }
    fn finish(&mut self, out: &mut Planes) {
        self.0.finish(out);
    }
    fn limiter_stats(&self) -> Option<LimiterStats> {
        Some(self.0.stats())
    }
}

/// Stages run one after the other, each one's output the next one's input.
#[derive(Default)]
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    /// Planes each stage hands on (its output width), reused from chunk to chunk.
    buffers: Vec<Planes>,
}

impl Chain {
    /// An empty chain (hands its input on unchanged).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `stage`, which hands on `planes` planes.
    pub fn push(&mut self, stage: Box<dyn Stage>, planes: usize) {
        self.stages.push(stage);
        self.buffers.push(vec![Vec::new(); planes]);
    }

    /// Everything before the limiter for the settings `s`: mid/side, EQ (width folded into the
    /// side filter), compression, back to L/R, and the saturator at `saturation` (`None`: left
    /// out, as when the loop measures what enters it). Stages the settings leave flat are
    /// left out.
    pub fn pre_limiter(spec: StageSpec, s: &Settings, saturation: Option<Quality>) -> Self {
        let (tone, peaks) = Self::pre_limiter_parts(spec, s, saturation);
        tone.then(peaks)
    }

    /// [`Self::pre_limiter`] in its two parts, for [`run_pipelined`]: the tone stages (mid/side,
    /// EQ, compression, back to L/R), and the peak stage (the saturator; empty without it).
    /// Without a saturator the peak part would have little to do and the tone part most of the
    /// work, so the cut moves into the compressor: its multiband split (most of its work) and the
    /// return to L/R go to the second part. Either cut gives the same samples.
    pub fn pre_limiter_parts(spec: StageSpec, s: &Settings, saturation: Option<Quality>) -> (Self, Self) {
        let mut tone = Self::new();
        let mut peaks = Self::new();
        let n = spec.channels;
        let stereo = n == 2;
        if stereo {
            tone.push(Box::new(MidSideEncode), n);
        }
        tone.push(Box::new(Equalizer::new(spec, s)), n);
        let saturating = saturation.is_some() && s.saturation.enabled;
        let Compression { mut compressor, no_side } = Compression::new(spec, s);
        let mut cut = false;
        if !compressor.is_bypassed() {
            match (!saturating).then(|| compressor.detach_split()).flatten() {
                Some(split) => {
                    tone.push(Box::new(CompressionDetect(compressor)), n + 4);
                    peaks.push(Box::new(CompressionSplit { split, no_side }), n);
                    cut = true;
                }
                None => tone.push(Box::new(Compression { compressor, no_side }), n),
            }
        }
        if stereo {
            if cut { &mut peaks } else { &mut tone }.push(Box::new(MidSideDecode), n);
        }
        if let Some(q) = saturation.filter(|_| s.saturation.enabled) {
            let sat = SaturatorStage::new(spec.sample_rate_hz, n, &s.saturation, s.limiter.ceiling_dbtp, q);
            peaks.push(Box::new(Saturation(sat)), n);
        }
        (tone, peaks)
    }

    /// This chain's stages followed by `next`'s.
    pub fn then(mut self, next: Chain) -> Self {
        self.stages.extend(next.stages);
        self.buffers.extend(next.buffers);
        self
    }

    /// The whole chain of `s` (the saturator 8× oversampled), the limiter's output scaled by
    /// `trim_db` (the safety trim, ≤ 0): what renders a master from saved settings.
    pub fn whole(spec: StageSpec, s: &Settings, trim_db: f64) -> Self {
        let (tone, peaks) = Self::whole_parts(spec, s, trim_db);
        tone.then(peaks)
    }

    /// [`Self::whole`] in two parts for [`run_pipelined`]: the tone stages, then the
    /// saturator, the true-peak envelope and the limiter.
    pub fn whole_parts(spec: StageSpec, s: &Settings, trim_db: f64) -> (Self, Self) {
        let (tone, mut peaks) = Self::pre_limiter_parts(spec, s, Some(Quality::Oversampled));
        peaks.push(Box::new(Envelope::new(spec)), spec.channels + 1);
        let limiter = StreamLimiter::new(spec.sample_rate_hz, spec.channels, &s.limiter, trim_db);
        peaks.push(Box::new(Limiter(limiter)), spec.channels);
        (tone, peaks)
    }

    /// What the chain's limiter did so far, when it has one.
    pub fn limiter_stats(&self) -> Option<LimiterStats> {
        self.stages.iter().find_map(|s| s.limiter_stats())
    }

    /// The stages' names and latencies, frames, in order.
    pub fn describe(&self) -> Vec<(&'static str, usize)> {
        self.stages.iter().map(|s| (s.name(), s.latency_frames())).collect()
    }

    /// Planes the chain hands on when given `planes_in` (an empty chain hands its input on).
    pub fn planes_out(&self, planes_in: usize) -> usize {
        self.buffers.last().map_or(planes_in, Vec::len)
    }

    /// Total latency of the chain, frames (compensated: the output stays aligned).
    pub fn latency_frames(&self) -> usize {
        self.stages.iter().map(|s| s.latency_frames()).sum()
    }

    /// Runs a chunk through every stage, appending the last stage's output to `out`.
    pub fn process(&mut self, input: &[&[f32]], out: &mut Planes) {
        self.run(Some(input), out);
    }

    /// Flushes every stage in order (each stage's rest goes through the stages after it).
    pub fn finish(&mut self, out: &mut Planes) {
        self.run(None, out);
    }

    fn run(&mut self, input: Option<&[&[f32]]>, out: &mut Planes) {
        let count = self.stages.len();
        if count == 0 {
            if let Some(input) = input {
                for (o, x) in out.iter_mut().zip(input) {
                    o.extend_from_slice(x);
                }
            }
            return;
        }
        let mut carried: Option<Planes> = None;
        for i in 0..count {
            let mut target = if i + 1 == count { None } else { Some(std::mem::take(&mut self.buffers[i])) };
            {
                let dest: &mut Planes = target.as_mut().unwrap_or(&mut *out);
                let stage = &mut self.stages[i];
                match (&carried, input) {
                    (Some(c), _) => stage.process(&slices(c), dest),
                    (None, Some(x)) if i == 0 => stage.process(x, dest),
                    _ => {}
                }
                if input.is_none() {
                    stage.finish(dest);
                }
            }
            if let Some(c) = carried.take() {
                self.give_back(i - 1, c);
            }
            carried = target;
        }
    }

    /// Returns the buffer stage `i` wrote into, emptied, for the next chunk.
    fn give_back(&mut self, i: usize, mut planes: Planes) {
        planes.iter_mut().for_each(Vec::clear);
        self.buffers[i] = planes;
    }
}

/// Streams `source` through `front` on a thread of its own and `back` on another, handing each
/// chunk `back` produced to `f` on the calling thread (which may empty the planes it takes).
///
/// A chain cut in two like this is the same computation as the whole chain: every stage sees
/// the same samples in the same order, so the output is bit-identical to running
/// `front.then(back)` on one thread, but the work overlaps on the machine's cores: the reading
/// and the tone stages, the peak stages, and what the caller does with the output (the pass's
/// meters, the cache) each on its own thread, a chunk or two apart. With `f` on the back's
/// thread, that thread carried the meters and copies too and the other two waited on it.
/// Each part hands on as many planes as its last stage does. A failing `f` stops the chain; an
/// error of the source is returned after what came before it has been handed on.
pub fn run_pipelined(
    source: &dyn FrameSource,
    front: &mut Chain,
    back: &mut Chain,
    f: &mut dyn FnMut(&mut Planes) -> Result<()>,
) -> Result<()> {
    let front_planes = front.planes_out(source.channel_count());
    let back_planes = back.planes_out(front_planes);
    hand_over(
        back_planes,
        |emit_back| {
            let mut out: Planes = vec![Vec::new(); back_planes];
            hand_over(
                front_planes,
                |emit| {
                    let mut chunk_out: Planes = vec![Vec::new(); front_planes];
                    source.stream(&mut |chunk| {
                        front.process(chunk, &mut chunk_out);
                        emit(&mut chunk_out)
                    })?;
                    front.finish(&mut chunk_out);
                    emit(&mut chunk_out)
                },
                &mut |planes| {
                    back.process(&slices(planes), &mut out);
                    emit_back(&mut out)
                },
            )?;
            back.finish(&mut out);
            emit_back(&mut out)
        },
        f,
    )
}

/// Most samples (frames times planes) a buffer handed between threads carries ([`hand_over`]):
/// a source chunk of stereo audio with its true-peak envelope goes over whole, as it comes.
/// The compressor's detectors hand on six planes (the audio and four weight planes): whole,
/// their chunks held 8-10 MB more in flight at the peak than in pieces of this size. Copying
/// every chunk into pieces cost a 90-minute master 7 % more time; much smaller pieces (8192
/// frames of six planes) cost a 60 s song 15 %.
pub const PIECE_SAMPLES: usize = 3 * crate::source::CHUNK_FRAMES;

/// Runs `produce` on a thread of its own and hands the chunks it emits to `consume` on the
/// calling thread, a chunk or two behind: the two overlap on two cores.
///
/// `produce` fills planar chunks (`planes` planes) and passes each to `emit`, which takes it
/// (an empty chunk is skipped) and leaves a cleared buffer in its place; `consume` sees each
/// chunk in order and may swap the buffer out for a cleared one of its own (to hand it on to
/// another thread). Buffers go back to the producer for reuse, so chunks cost no allocation
/// once the pipe is full. A chunk of more than [`PIECE_SAMPLES`] samples is handed over in
/// pieces of at most that many. A failing `consume` stops the producer (its `emit` then fails)
/// and its error is the one returned; else the producer's own error, after everything it
/// emitted before it was consumed.
pub fn hand_over(
    planes: usize,
    produce: impl FnOnce(&mut dyn FnMut(&mut Planes) -> Result<()>) -> Result<()> + Send,
    consume: &mut dyn FnMut(&mut Planes) -> Result<()>,
) -> Result<()> {
    /// Chunks in flight between the threads: enough to ride out one slow chunk, few enough to
    /// keep the memory bounded (a chunk is [`crate::source::CHUNK_FRAMES`] frames).
    const IN_FLIGHT: usize = 2;
    std::thread::scope(|scope| -> Result<()> {
        let (to_consumer, chunks) = std::sync::mpsc::sync_channel::<Planes>(IN_FLIGHT);
        let (recycle, spare) = std::sync::mpsc::channel::<Planes>();
        let producer = scope.spawn(move || -> Result<()> {
            let stopped = || Error::Unsupported("internal: the chunks' consumer stopped".into());
            let buffer = || spare.try_recv().unwrap_or_else(|_| vec![Vec::new(); planes]);
            produce(&mut |out: &mut Planes| {
                let frames = out.first().map_or(0, Vec::len);
                if frames == 0 {
                    return Ok(());
                }
                let piece_frames = (PIECE_SAMPLES / out.len().max(1)).max(1);
                if frames <= piece_frames {
                    return to_consumer.send(std::mem::replace(out, buffer())).map_err(|_| stopped());
                }
                // A long chunk (a linear-phase filter's block) goes over in pieces, copied into
                // buffers of a piece each: the buffers in flight stay small whatever a stage
                // hands on at once, and the long one stays here.
                for start in (0..frames).step_by(piece_frames) {
                    let end = (start + piece_frames).min(frames);
                    let mut piece = buffer();
                    for (p, o) in piece.iter_mut().zip(out.iter()) {
                        p.clear();
                        p.extend_from_slice(&o[start..end]);
                    }
                    to_consumer.send(piece).map_err(|_| stopped())?;
                }
                out.iter_mut().for_each(Vec::clear);
                Ok(())
            })
        });
        let mut consumed = Ok(());
        for mut chunk in chunks.iter() {
            consumed = consume(&mut chunk);
            if consumed.is_err() {
                break;
            }
            chunk.iter_mut().for_each(Vec::clear);
            // The producer may have finished: its spares are then no longer wanted.
            let _ = recycle.send(chunk);
        }
        drop(chunks);
        let produced = producer.join().map_err(|_| Error::Unsupported("internal: a render thread panicked".into()))?;
        consumed?;
        produced
    })
}
