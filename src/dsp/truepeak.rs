//! Inter-sample (true) peak detection by 4× polyphase oversampling.
//!
//! The limiter needs, for every sample, the largest magnitude the reconstructed waveform reaches
//! between it and the next sample. That envelope scales linearly with gain, so it is computed once
//! for the signal entering the limiter and reused for every drive the loudness loop tries.

/// Oversampling factor.
pub const OVERSAMPLING: usize = 4;
/// Taps per polyphase branch.
const TAPS_PER_PHASE: usize = 16;

/// The three fractional-delay branches (1/4, 2/4, 3/4 of a sample) of a Kaiser-windowed sinc
/// interpolator, each `TAPS_PER_PHASE` taps, applied to samples n−7..=n+8.
fn branches() -> [[f32; TAPS_PER_PHASE]; OVERSAMPLING - 1] {
    let beta = 8.0;
    let half = TAPS_PER_PHASE as f64 / 2.0;
    let cutoff = 0.92; // of the original Nyquist: flat to 20 kHz at 44.1 kHz
    let mut out = [[0f32; TAPS_PER_PHASE]; OVERSAMPLING - 1];
    for (p, branch) in out.iter_mut().enumerate() {
        let frac = (p + 1) as f64 / OVERSAMPLING as f64;
        let mut sum = 0.0;
        let mut tmp = [0f64; TAPS_PER_PHASE];
        for (k, t) in tmp.iter_mut().enumerate() {
            // Tap k multiplies sample n + k − 7; its distance from the interpolation point.
            let x = (k as f64 - (half - 1.0)) - frac;
            let sinc = if x.abs() < 1e-12 {
                1.0
            } else {
                (std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
            };
            let r = x / half;
            let win = if r.abs() <= 1.0 { bessel_i0(beta * (1.0 - r * r).sqrt()) / bessel_i0(beta) } else { 0.0 };
            *t = sinc * win;
            sum += *t;
        }
        for (b, t) in branch.iter_mut().zip(tmp) {
            *b = (t / sum) as f32;
        }
    }
    out
}

pub(crate) fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    for k in 1..50 {
        term *= (x / (2.0 * k as f64)).powi(2);
        sum += term;
        if term < 1e-12 * sum {
            break;
        }
    }
    sum
}

/// Frames per block of the interpolators' kernels: each block's points are computed tap by tap
/// into `BLOCK`-wide lanes ([`branch_block`]), so the inner loop is a plain multiply-add over
/// contiguous samples that LLVM vectorises, with no horizontal sum per point.
const BLOCK: usize = 16;

/// The three branches' points for `BLOCK` consecutive frames: `out[b][l] = Σ_k br[b][k] ·
/// w[l + k]`, summed in tap order from zero (so a lane's value does not depend on where its
/// block starts: [`branch_point`] gives the same bits for one frame). `w` holds at least
/// `T + BLOCK − 1` samples.
#[inline(always)]
fn branch_block<const T: usize>(w: &[f32], br: &[[f32; T]; OVERSAMPLING - 1]) -> [[f32; BLOCK]; OVERSAMPLING - 1] {
    let w = &w[..T + BLOCK - 1];
    let mut acc = [[0f32; BLOCK]; OVERSAMPLING - 1];
    for k in 0..T {
        let x = &w[k..k + BLOCK];
        for (a, b) in acc.iter_mut().zip(br) {
            let c = b[k];
            for (a, &x) in a.iter_mut().zip(x) {
                *a += c * x;
            }
        }
    }
    acc
}

/// One lane of [`branch_block`]: branch `b`'s point from the `T` samples of `w`, bit for bit.
#[inline]
fn branch_point<const T: usize>(w: &[f32], b: &[f32; T]) -> f32 {
    w[..T].iter().zip(b).fold(0f32, |a, (x, c)| a + c * x)
}

/// For each frame, the largest |value| over all channels of the sample and of the three
/// interpolated points after it: the true-peak envelope, linear.
pub fn peak_envelope(channels: &[&[f32]]) -> Vec<f32> {
    let n = channels.first().map_or(0, |c| c.len());
    let mut env = vec![0f32; n];
    let br = branches();
    let before = TAPS_PER_PHASE / 2 - 1;
    // Zeros before and after, and room for the last block's unused lanes.
    let mut padded = vec![0f32; n.div_ceil(BLOCK) * BLOCK + TAPS_PER_PHASE];
    for ch in channels {
        padded[before..before + n].copy_from_slice(ch);
        envelope_channel(&padded, ch, &br, &mut env);
    }
    env
}

/// Raises `env` to the envelope of one channel (`padded`: the channel with `TAPS_PER_PHASE / 2 −
/// 1` zeros before it and zeros after, to a whole number of blocks).
fn envelope_channel(padded: &[f32], ch: &[f32], br: &[[f32; TAPS_PER_PHASE]; OVERSAMPLING - 1], env: &mut [f32]) {
    #[inline(always)]
    fn run(padded: &[f32], ch: &[f32], br: &[[f32; TAPS_PER_PHASE]; OVERSAMPLING - 1], env: &mut [f32]) {
        for ((e, x), s) in env.chunks_mut(BLOCK).zip(ch.chunks(BLOCK)).zip((0..).step_by(BLOCK)) {
            let [p1, p2, p3] = branch_block(&padded[s..], br);
            for (l, (e, x)) in e.iter_mut().zip(x).enumerate() {
                *e = e.max(x.abs().max(p1[l].abs()).max(p2[l].abs()).max(p3[l].abs()));
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2")]
        fn avx2(padded: &[f32], ch: &[f32], br: &[[f32; TAPS_PER_PHASE]; OVERSAMPLING - 1], env: &mut [f32]) {
            run(padded, ch, br, env)
        }
        // SAFETY: the CPU supports AVX2 (checked at run time just above).
        return unsafe { avx2(padded, ch, br, env) };
    }
    run(padded, ch, br, env)
}

/// Whether the CPU has AVX2: the kernels then run on 8-lane registers. Multiplies and adds
/// stay separate (no FMA), in the same order, so both builds give the same bits.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Largest true peak of `channels` in dBTP (by this module's 4× interpolator).
pub fn true_peak_db(channels: &[&[f32]]) -> f64 {
    let peak = peak_envelope(channels).iter().fold(0f32, |a, &b| a.max(b));
    20.0 * f64::from(peak).log10()
}

/// The level (dB) that the loudest `1 − q` of a true-peak envelope exceeds, taken over blocks of
/// 8 frames (each block's maximum) so one transient counts once; −∞ for an empty envelope. The
/// limiting depth and the saturator's drive are both judged at `q = 0.999`.
pub fn envelope_quantile_db(env: &[f32], q: f64) -> f64 {
    const BLOCK: usize = 8;
    if env.is_empty() {
        return f64::NEG_INFINITY;
    }
    let mut v: Vec<f32> = env.chunks(BLOCK).map(|c| c.iter().fold(0f32, |a, &b| a.max(b))).collect();
    let idx = (((v.len() as f64) * q) as usize).min(v.len() - 1);
    let (_, x, _) = v.select_nth_unstable_by(idx, f32::total_cmp);
    20.0 * f64::from(x.max(1e-10)).log10()
}

/// Taps per branch of the precise detector ([`TruePeakDetector`]).
pub const PRECISE_TAPS: usize = 48;
/// Frames of context each side of a sample that the precise detector's interpolation weighs.
pub const PRECISE_REACH: usize = PRECISE_TAPS / 2 + 1;

/// The three fractional-delay branches (1/4, 2/4, 3/4 of a sample) of the precise detector: a
/// Kaiser-windowed (β = 7) sinc cut off at the original Nyquist frequency, `PRECISE_TAPS` taps
/// applied to samples n − 23 ..= n + 24. Cut at Nyquist (not below it, as a BS.1770 meter's short
/// filter is), so full-band content right up to Nyquist (squares, clipped masters, sweeps) is
/// interpolated rather than filtered away before its peaks are read.
fn precise_branches() -> [[f32; PRECISE_TAPS]; OVERSAMPLING - 1] {
    let beta = 7.0;
    let half = PRECISE_TAPS as f64 / 2.0;
    let mut out = [[0f32; PRECISE_TAPS]; OVERSAMPLING - 1];
    for (p, branch) in out.iter_mut().enumerate() {
        let frac = (p + 1) as f64 / OVERSAMPLING as f64;
        let mut taps = [0f64; PRECISE_TAPS];
        for (k, t) in taps.iter_mut().enumerate() {
            let x = (k as f64 - (half - 1.0)) - frac;
            let sinc = (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x);
            let r = x / half;
            let win = if r.abs() <= 1.0 { bessel_i0(beta * (1.0 - r * r).sqrt()) / bessel_i0(beta) } else { 0.0 };
            *t = sinc * win;
        }
        // Unity gain at DC: the truncated sinc's branches sum to a little over 1.
        let sum: f64 = taps.iter().sum();
        for (b, t) in branch.iter_mut().zip(taps) {
            *b = (t / sum) as f32;
        }
    }
    out
}

/// The peak of the parabola through three equally spaced values whose middle one is the largest
/// in magnitude (a closer reading of a maximum that falls between oversampled points: a 4×
/// grid alone under-reads a tone near Nyquist by up to 0.7 dB).
///
/// Never more than 1.125 times the middle value's magnitude: with `|y0|, |y2| ≤ |y1|` and one
/// sign, the vertex rises at most `|y1| / 8` over it ([`PeakInterpolator`]'s screen relies on
/// that). Written without early returns so a block of frames vectorises.
#[inline(always)]
fn parabola_peak(y0: f32, y1: f32, y2: f32) -> f32 {
    let (a0, a1, a2) = (y0.abs(), y1.abs(), y2.abs());
    let curvature = y0 - 2.0 * y1 + y2;
    let p = y1 - (y0 - y2) * (y0 - y2) / (8.0 * curvature);
    let refined = p.abs().max(a1).min(a1 * 1.5);
    let is_max = (a1 >= a0) & (a1 >= a2) & (curvature != 0.0) & (y0 * y1 >= 0.0) & (y1 * y2 >= 0.0);
    if is_max {
        refined
    } else {
        a1
    }
}

/// A true-peak detector written for refmaster's ceiling: 4× polyphase oversampling with a
/// 48-tap-per-branch interpolator cut at Nyquist, and a parabolic reading of each maximum
/// between the oversampled points. On the adversarial ceiling signals (clipped noise, squares,
/// impulses, sweeps to Nyquist, after mastering) it reads within 0.1 dB under a 16×,
/// 64-tap-per-branch meter (and never lower than ffmpeg's `ebur128=peak=true`, whose short
/// filter rolls off below Nyquist): see `tests/ceiling.rs`.
///
/// Per frame `n` it reports the largest magnitude of the reconstructed waveform from the
/// sample `n` to just before `n + 1`; the signal is taken as silent before its first sample
/// and after its last, so the overshoot of a file that starts or ends loud is counted too.
#[derive(Debug, Clone)]
pub struct PeakInterpolator {
    branches: [[f32; PRECISE_TAPS]; OVERSAMPLING - 1],
    /// The most a frame's true peak can exceed the largest |sample| its interpolation weighs,
    /// linear (the screen of [`Self::frame_peaks_over`]).
    gain_bound: f32,
    /// Per branch: the L1 norm of the taps outside the central [`CENTRAL_TAPS`], raised by a
    /// margin for float rounding (see [`Self::central_bounds`]).
    outer_l1: [f32; OVERSAMPLING - 1],
}

/// Taps at the centre of each precise branch (samples n − 3 ..= n + 4) that the block screen of
/// [`PeakInterpolator::central_bounds`] sums exactly; the rest are bounded by their L1 norm.
/// Eight of 48: a sixth of the kernel's multiplies. The outer taps' L1 norm is then 0.58 for the
/// half-sample branch (0.43, 0.43 for the others), against 2.69 for the whole branch.
const CENTRAL_TAPS: usize = 8;
/// Index of the first central tap (tap `k` multiplies sample `n + k − 23`).
const CENTRAL_FIRST: usize = PRECISE_TAPS / 2 - CENTRAL_TAPS / 2;

impl Default for PeakInterpolator {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakInterpolator {
    /// The interpolator (filter designed once).
    pub fn new() -> Self {
        let branches = precise_branches();
        let l1 = branches.iter().map(|b| b.iter().map(|t| f64::from(t.abs())).sum::<f64>()).fold(1.0, f64::max);
        // 1.125: the parabolic reading's largest rise over a point; 1e-3: room for the float
        // rounding of the dot products (about 1e-6 relative).
        let mut outer_l1 = [0f32; OVERSAMPLING - 1];
        for (o, b) in outer_l1.iter_mut().zip(&branches) {
            let all: f64 = b.iter().map(|t| f64::from(t.abs())).sum();
            let central: f64 = b[CENTRAL_FIRST..CENTRAL_FIRST + CENTRAL_TAPS].iter().map(|t| f64::from(t.abs())).sum();
            // 1e-4 · all: far over the rounding of the two f32 sums (at most (48 + 8) · 2⁻²⁴
            // · 1.0001 ≈ 3.4e-6 of Σ|c·x| ≤ all · M; see `central_bounds`); the factor
            // 1 + 1e-4 covers the rounding to f32 here.
            *o = ((all - central + 1e-4 * all) * (1.0 + 1e-4)) as f32;
        }
        Self { branches, gain_bound: (1.125 * l1 * (1.0 + 1e-3)) as f32, outer_l1 }
    }

    /// Per lane, an upper bound on every |point| the kernel computes for the `BLOCK` frames whose
    /// windows start in `w` (`w` as in [`branch_block`]), and on their samples: the most each
    /// of those frames can read before the parabolic step.
    ///
    /// Why it holds. Lane `l` of branch `b` is the f32 sum p̂ = fl(Σₖ cₖ·xₖ) over the 48 taps,
    /// summed from zero in tap order. Split the exact sum p = Σₖ cₖ·xₖ into the central taps C
    /// and the outer taps O: |p| ≤ |Σ_C cₖ·xₖ| + M·Σ_O |cₖ|, where M is the largest |sample| of
    /// the block's reach (`w[..PRECISE_TAPS + BLOCK − 1]`, which holds every sample any lane
    /// weighs). Here Σ_C is computed in f32 as ĉ = fl(Σ_C cₖ·xₖ) (8 taps), and both float sums
    /// err by at most γₙ·Σ|cₖ·xₖ| (the standard bound for recursive summation of n products,
    /// γₙ = n·u / (1 − n·u), u = 2⁻²⁴), so
    /// |p̂| ≤ |ĉ| + M·Σ_O|cₖ| + (γ₈ + γ₄₈)·M·Σ|cₖ| ≤ |ĉ| + M·`outer_l1[b]`,
    /// as `outer_l1` adds 1e-4·Σ|cₖ| (γ₈ + γ₄₈ ≈ 3.4e-6). Evaluating |ĉ| + M·`outer_l1` in
    /// f32 errs by at most 2u relative, which the caller's factor 1 + 1e-3 covers (with the
    /// parabola's own rounding, as in the kernel's second screen). Lanes past the last frame
    /// only make the bound larger. The samples' |x| are included directly (a frame reads at
    /// least its own sample, and a parabola can rise over it).
    #[inline(always)]
    fn central_bounds(&self, w: &[f32]) -> [f32; BLOCK] {
        // `if a > b { a } else { b }` rather than `f32::max` (which orders NaN and so stays
        // scalar): the same value on every non-NaN input, and one vector max.
        #[inline(always)]
        fn larger(a: f32, b: f32) -> f32 {
            if a > b {
                a
            } else {
                b
            }
        }
        let w = &w[..PRECISE_TAPS + BLOCK - 1];
        let mut lanes = [0f32; 8];
        for c in w.chunks(8) {
            for (m, v) in lanes.iter_mut().zip(c) {
                *m = larger(v.abs(), *m);
            }
        }
        let m = lanes.iter().fold(0f32, |a, &b| larger(b, a));
        let mut acc = [[0f32; BLOCK]; OVERSAMPLING - 1];
        for k in CENTRAL_FIRST..CENTRAL_FIRST + CENTRAL_TAPS {
            let x = &w[k..k + BLOCK];
            for (a, b) in acc.iter_mut().zip(&self.branches) {
                let c = b[k];
                for (a, &x) in a.iter_mut().zip(x) {
                    *a += c * x;
                }
            }
        }
        let lead = PRECISE_TAPS / 2 - 1;
        let mut bound = [0f32; BLOCK];
        for (b, x) in bound.iter_mut().zip(&w[lead..lead + BLOCK]) {
            *b = x.abs();
        }
        for (a, o) in acc.iter().zip(self.outer_l1) {
            let outer = o * m;
            for (b, a) in bound.iter_mut().zip(a) {
                *b = larger(a.abs() + outer, *b);
            }
        }
        bound
    }

    /// Writes the true peak (linear) of frames `first .. first + out.len()` of `ctx` into `out`,
    /// where `ctx` holds at least [`PRECISE_REACH`] samples of context before `first` and after
    /// the last frame (zeros where the signal has none).
    pub fn frame_peaks(&self, ctx: &[f32], first: usize, out: &mut [f32]) {
        self.frame_peaks_over(ctx, first, out, -1.0);
    }

    /// As [`Self::frame_peaks`], except that frames whose true peak cannot exceed `floor` may
    /// read 0 instead (a negative `floor` screens nothing). Two screens, both exact: a block of
    /// [`SCREEN_FRAMES`] frames is skipped when the largest |sample| its interpolation weighs,
    /// times the interpolator's worst-case gain (the largest L1 norm of a branch, times the
    /// parabola's 1.125), is at most `floor`; and a block of the kernel skips its parabolic
    /// readings when its points times 1.125 stay at or under `floor`. So the maximum over the
    /// frames, and any test of a frame against a level ≥ `floor`, read as without the screens.
    pub fn frame_peaks_over(&self, ctx: &[f32], first: usize, out: &mut [f32], floor: f32) {
        let half = PRECISE_TAPS / 2;
        for (k, o) in out.chunks_mut(SCREEN_FRAMES).enumerate() {
            let s = first + k * SCREEN_FRAMES;
            if floor >= 0.0 && abs_max(&ctx[s - half..s + o.len() + half]) * self.gain_bound <= floor {
                o.fill(0.0);
                continue;
            }
            self.exact_peaks(ctx, s, o, floor);
        }
    }

    fn exact_peaks(&self, ctx: &[f32], first: usize, out: &mut [f32], floor: f32) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            #[target_feature(enable = "avx2")]
            fn avx2(me: &PeakInterpolator, ctx: &[f32], first: usize, out: &mut [f32], floor: f32) {
                me.exact_peaks_kernel(ctx, first, out, floor)
            }
            // SAFETY: the CPU supports AVX2 (checked at run time just above).
            return unsafe { avx2(self, ctx, first, out, floor) };
        }
        self.exact_peaks_kernel(ctx, first, out, floor)
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // lane arrays read side by side
    fn exact_peaks_kernel(&self, ctx: &[f32], first: usize, out: &mut [f32], floor: f32) {
        if out.is_empty() {
            return;
        }
        // Frame i's points weigh ctx[i + 1 − PRECISE_TAPS / 2 ..][..PRECISE_TAPS].
        let lead = PRECISE_TAPS / 2 - 1;
        // The last point of the frame before the block (`None` after a skipped block: it is
        // then computed alone, to the same bits, see [`branch_block`]).
        let mut prev = None;
        // Whether the last block's points stayed under the floor (the first block: tried).
        let mut under = true;
        let mut tail = [0f32; PRECISE_TAPS + BLOCK - 1];
        for (k, o) in out.chunks_mut(BLOCK).enumerate() {
            let i = first + k * BLOCK;
            let w = &ctx[i - lead..];
            let w = if w.len() >= tail.len() {
                w
            } else {
                // The last block: its unused lanes read zeros.
                tail[..w.len()].copy_from_slice(w);
                &tail[..]
            };
            // The first screen: the central taps exactly, the outer ones by their L1 norm
            // ([`Self::central_bounds`]); on a loud master it skips most blocks the 64-frame
            // screen cannot, for a sixth of the multiplies.
            // Tried only after a block that was under the floor (skipped, or its points were):
            // where the signal is passing the floor (a burst of noise) it would fail, at the
            // cost of a sixth of the block. Which blocks it tries changes no reading.
            if floor >= 0.0
                && under
                && self.central_bounds(w).iter().fold(true, |ok, b| ok & (b * (1.125 * (1.0 + 1e-3)) <= floor))
            {
                o.fill(0.0);
                prev = None;
                continue;
            }
            let prev_point = prev.unwrap_or_else(|| branch_point(&ctx[i - 1 - lead..], &self.branches[2]));
            let [p1, p2, p3] = branch_block(w, &self.branches);
            // Lane by lane over whole blocks (so it vectorises): the sample, the points, and the
            // parabolic readings of the four intervals, each starting at the point before.
            let x0: &[f32; BLOCK] = w[lead..lead + BLOCK].try_into().expect("block-long");
            let x1: &[f32; BLOCK] = w[lead + 1..lead + 1 + BLOCK].try_into().expect("block-long");
            let mut before = [prev_point; BLOCK];
            before[1..].copy_from_slice(&p3[..BLOCK - 1]);
            let mut m = [0f32; BLOCK];
            for l in 0..BLOCK {
                m[l] = x0[l].abs().max(p1[l].abs()).max(p2[l].abs()).max(p3[l].abs());
            }
            // The parabolic readings rise at most 1/8 over the points: a block whose points stay
            // that far under the floor cannot pass it.
            under = abs_max(&m[..o.len()]) * (1.125 * (1.0 + 1e-3)) <= floor;
            if floor >= 0.0 && under {
                o.fill(0.0);
                prev = Some(p3[o.len() - 1]);
                continue;
            }
            for l in 0..BLOCK {
                m[l] = m[l]
                    .max(parabola_peak(before[l], x0[l], p1[l]))
                    .max(parabola_peak(x0[l], p1[l], p2[l]))
                    .max(parabola_peak(p1[l], p2[l], p3[l]))
                    .max(parabola_peak(p2[l], p3[l], x1[l]));
            }
            o.copy_from_slice(&m[..o.len()]);
            prev = Some(p3[o.len() - 1]);
        }
    }
}

/// Frames per block of [`PeakInterpolator::frame_peaks_over`]'s screen.
pub const SCREEN_FRAMES: usize = 64;

/// The largest |x| of `x` (0 for none), in eight lanes so it vectorises.
#[inline]
pub fn abs_max(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder().iter().fold(0f32, |a, v| a.max(v.abs()));
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(v.abs());
        }
    }
    acc.iter().fold(rest, |a, &b| a.max(b))
}

impl PeakInterpolator {
    /// The largest true peak (linear) of the first [`PRECISE_REACH`] frames of a signal whose
    /// first samples are `head`, with the signal mirrored before its start (`x[−1 − j] = x[j]`)
    /// instead of silent. Resamplers extend a stream that way at its ends (ffmpeg's
    /// libswresample, which its `ebur128=peak=true` meter upsamples with, reflects the last
    /// samples when it flushes), so a file that ends on a loud transient reads higher there
    /// than the silent extension gives. Pass the reversed last samples for the end (the
    /// interpolator is symmetric in time).
    pub fn mirrored_edge_peak(&self, head: &[f32]) -> f32 {
        let m = PRECISE_REACH;
        let used = &head[..head.len().min(3 * m)];
        let mut ctx: Vec<f32> = (0..m).rev().map(|j| used.get(j).copied().unwrap_or(0.0)).collect();
        ctx.extend_from_slice(used);
        ctx.extend(std::iter::repeat_n(0.0, m + 1));
        let mut out = vec![0f32; used.len().min(m) + 1];
        self.frame_peaks(&ctx, m - 1, &mut out);
        out.iter().fold(0f32, |a, &v| a.max(v))
    }
}

/// The largest true peak (linear) of a stream of planar chunks, by [`PeakInterpolator`]: the
/// meter of the safety trim and of the written output. Chunking does not change the reading.
#[derive(Debug, Clone)]
pub struct TruePeakDetector {
    interp: PeakInterpolator,
    /// Per channel: the first `3 · PRECISE_REACH` samples, and the last ones, for the
    /// mirrored reading of the edges ([`PeakInterpolator::mirrored_edge_peak`]).
    head: Vec<Vec<f32>>,
    tail: Vec<Vec<f32>>,
    /// Per channel: the samples not yet read, after `PRECISE_REACH` of context.
    buf: Vec<Vec<f32>>,
    peak: f32,
    scratch: Vec<f32>,
}

impl TruePeakDetector {
    /// A detector for `channels` channels (silence before the first sample).
    pub fn new(channels: usize) -> Self {
        Self {
            interp: PeakInterpolator::new(),
            head: vec![Vec::new(); channels],
            tail: vec![Vec::new(); channels],
            buf: vec![vec![0.0; PRECISE_REACH]; channels],
            peak: 0.0,
            scratch: Vec::new(),
        }
    }

    /// Reads a chunk (one slice per channel, equal lengths).
    pub fn push(&mut self, chunk: &[&[f32]]) {
        let keep = 3 * PRECISE_REACH;
        for (((b, h), t), c) in self.buf.iter_mut().zip(&mut self.head).zip(&mut self.tail).zip(chunk) {
            b.extend_from_slice(c);
            if h.len() < keep {
                h.extend_from_slice(&c[..c.len().min(keep - h.len())]);
            }
            t.extend_from_slice(&c[c.len().saturating_sub(keep)..]);
            let excess = t.len().saturating_sub(keep);
            t.drain(..excess);
        }
        self.scan(false);
    }

    /// The true peak of everything pushed (silence before the first and after the last
    /// sample), linear.
    pub fn peak(mut self) -> f32 {
        self.scan(true);
        self.peak
    }

    /// The true peak of the first and last [`PRECISE_REACH`] frames with the signal mirrored
    /// beyond its ends (as resamplers extend it), linear. Kept apart from [`Self::peak`]: a
    /// transient on the last sample can read several dB higher mirrored, which is the writer's
    /// guard's to lower locally ([`crate::ceiling`]), never a reason to trim a whole master.
    pub fn mirrored_edges_peak(&self) -> f32 {
        let mut peak = 0f32;
        for (h, t) in self.head.iter().zip(&self.tail) {
            let reversed: Vec<f32> = t.iter().rev().copied().collect();
            peak = peak.max(self.interp.mirrored_edge_peak(h)).max(self.interp.mirrored_edge_peak(&reversed));
        }
        peak
    }

    /// The true peak of everything pushed, dBTP.
    pub fn peak_dbtp(self) -> f64 {
        20.0 * f64::from(self.peak()).log10()
    }

    fn scan(&mut self, last: bool) {
        for b in self.buf.iter_mut() {
            if last {
                b.extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
            }
            // Frames PRECISE_REACH - 1 (the interval before the first sample, at the start) up
            // to those with a full right context.
            let first = PRECISE_REACH - 1;
            let Some(n) = b.len().checked_sub(first + PRECISE_REACH) else { continue };
            if n == 0 {
                continue;
            }
            // Each frame's true peak is at least its own |sample|, so the largest of those is a
            // floor the screen may skip under.
            self.peak = self.peak.max(abs_max(&b[first..first + n]));
            self.scratch.resize(n, 0.0);
            self.interp.frame_peaks_over(b, first, &mut self.scratch, self.peak);
            self.peak = self.scratch.iter().fold(self.peak, |a, &v| a.max(v));
            b.drain(..n);
        }
    }
}

/// Largest true peak of `channels` in dBTP by the precise detector ([`TruePeakDetector`]).
pub fn precise_true_peak_db(channels: &[&[f32]]) -> f64 {
    let mut d = TruePeakDetector::new(channels.len());
    d.push(channels);
    d.peak_dbtp()
}

#[cfg(test)]
mod precise_tests {
    use super::*;

    /// A 1000-frame raised-cosine fade in and out over `n` frames: a tone that starts or stops
    /// abruptly overshoots at its edges (as it should), which is not what these tests measure.
    fn faded(i: usize, n: usize) -> f64 {
        let edge = i.min(n - 1 - i) as f64 / 1000.0;
        if edge >= 1.0 {
            1.0
        } else {
            0.5 - 0.5 * (std::f64::consts::PI * edge).cos()
        }
    }

    #[test]
    fn the_precise_detector_reads_a_quarter_rate_sine_at_45_degrees_3_db_over_its_samples() {
        let x: Vec<f32> = (0..4800)
            .map(|i| {
                (faded(i, 4800) * (std::f64::consts::FRAC_PI_2 * i as f64 + std::f64::consts::FRAC_PI_4).sin()) as f32
            })
            .collect();
        let sample_peak = 20.0 * f64::from(x.iter().fold(0f32, |a, v| a.max(v.abs()))).log10();
        let tp = precise_true_peak_db(&[&x]);
        assert!((sample_peak + 3.01).abs() < 0.01, "{sample_peak}");
        assert!(tp.abs() < 0.05, "{tp}");
    }

    #[test]
    fn the_precise_detector_reads_tones_to_near_nyquist_within_a_tenth_of_a_db() {
        for f in [997.0, 5_000.0, 15_000.0, 19_000.0, 20_500.0] {
            for phase in [0.0, 0.3, 1.1] {
                let x: Vec<f32> = (0..8820)
                    .map(|i| {
                        (0.5 * faded(i, 8820) * (2.0 * std::f64::consts::PI * f * i as f64 / 44_100.0 + phase).sin())
                            as f32
                    })
                    .collect();
                let tp = precise_true_peak_db(&[&x]);
                assert!((tp + 6.0206).abs() < 0.1, "{f} Hz, phase {phase}: {tp}");
            }
        }
    }

    /// A music-like test signal with loud bursts and quiet stretches (so the screen has both
    /// blocks to skip and blocks to read).
    fn bursts(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let u = ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
                let level = if (i / 700) % 5 == 0 { 1.8 } else { 0.05 };
                u * level + 0.2 * (i as f32 * 0.07).sin()
            })
            .collect()
    }

    #[test]
    fn the_block_kernel_reads_what_a_per_frame_f64_interpolation_reads() {
        let x = bursts(3000, 4);
        let interp = PeakInterpolator::new();
        let mut ctx = vec![0f32; PRECISE_REACH];
        ctx.extend_from_slice(&x);
        ctx.extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
        let mut out = vec![0f32; x.len() + 1];
        interp.frame_peaks(&ctx, PRECISE_REACH - 1, &mut out);
        let point = |i: usize, b: usize| -> f64 {
            let w = &ctx[i + 1 - PRECISE_TAPS / 2..];
            w.iter().zip(&interp.branches[b]).map(|(x, c)| f64::from(*x) * f64::from(*c)).sum()
        };
        for (k, o) in out.iter().enumerate() {
            let i = PRECISE_REACH - 1 + k;
            let m = (0..3).map(|b| point(i, b).abs()).fold(f64::from(ctx[i].abs()), f64::max);
            // The parabola reads at most 1/8 over the points; the f32 sums differ by rounding.
            let o = f64::from(*o);
            assert!(o >= m * (1.0 - 1e-5) && o <= m * 1.125 * (1.0 + 1e-5), "frame {i}: {o} vs points {m}");
        }
    }

    #[test]
    fn the_screened_reading_is_the_exact_maximum_and_skips_quiet_blocks() {
        let x = bursts(40_000, 5);
        let interp = PeakInterpolator::new();
        let mut ctx = vec![0f32; PRECISE_REACH];
        ctx.extend_from_slice(&x);
        ctx.extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
        let n = x.len() + 1;
        let (mut exact, mut screened) = (vec![0f32; n], vec![0f32; n]);
        interp.frame_peaks(&ctx, PRECISE_REACH - 1, &mut exact);
        let max = exact.iter().fold(0f32, |a, &b| a.max(b));
        for floor in [0.0, 0.3, 0.9 * max, max] {
            interp.frame_peaks_over(&ctx, PRECISE_REACH - 1, &mut screened, floor);
            for (e, s) in exact.iter().zip(&screened) {
                assert!(s == e || (*s == 0.0 && *e <= floor), "floor {floor}: {s} for {e}");
            }
        }
        interp.frame_peaks_over(&ctx, PRECISE_REACH - 1, &mut screened, 0.9 * max);
        let skipped = screened.iter().filter(|&&v| v == 0.0).count();
        assert!(skipped > n / 2, "only {skipped} of {n} frames skipped");
        // The streamed detector (which screens under its running maximum) reads the same.
        assert_eq!(precise_true_peak_db(&[&x]), 20.0 * f64::from(max).log10());
    }

    /// The largest frame peak with no screen at all (every frame read in full), linear.
    fn unscreened_max(channels: &[&[f32]]) -> f32 {
        let interp = PeakInterpolator::new();
        let mut peak = 0f32;
        for x in channels {
            let mut ctx = vec![0f32; PRECISE_REACH];
            ctx.extend_from_slice(x);
            ctx.extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
            let mut out = vec![0f32; x.len() + 1];
            interp.frame_peaks(&ctx, PRECISE_REACH - 1, &mut out);
            peak = out.iter().fold(peak, |a, &v| a.max(v));
        }
        peak
    }

    /// Deterministic uniform noise in [−1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Loud, dense signals (where the screens matter: near their maximum almost everywhere),
    /// each at several levels: the streamed, screened detector must return the very bits of
    /// the unscreened maximum, and so must `frame_peaks_over` under floors at and below it.
    #[test]
    fn the_screened_detector_returns_the_unscreened_maximum_bit_for_bit() {
        let n = 20_000;
        let tau = std::f32::consts::TAU;
        let white = noise(n, 7);
        let clipped: Vec<f32> = noise(n, 8).iter().map(|v| (3.0 * v).clamp(-1.0, 1.0)).collect();
        let square: Vec<f32> = (0..n).map(|i| if (i / 37) % 2 == 0 { 0.9 } else { -0.9 }).collect();
        let nyquist: Vec<f32> = (0..n).map(|i| (tau * 0.49 * i as f32 + 0.4).sin()).collect();
        let near_nyquist: Vec<f32> = (0..n).map(|i| (tau * (20_500.0 / 44_100.0) * i as f32 + 1.1).sin()).collect();
        // Music-like: a bass square, tones, noise, a slow envelope, then hard-limited (a loud
        // master hugging its ceiling).
        let noise_m = noise(n, 9);
        let music: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 / 44_100.0;
                let bass = if (t * 55.0).fract() < 0.5 { 0.5 } else { -0.5 };
                let env = 0.7 + 0.3 * (t * 3.0 * tau).sin();
                (env * (bass + 0.4 * (t * 440.0 * tau).sin() + 0.3 * (t * 3_520.0 * tau).sin() + 0.4 * noise_m[i]))
                    .clamp(-0.95, 0.95)
            })
            .collect();
        let signals = [
            ("white", white),
            ("clipped", clipped),
            ("square", square),
            ("0.49 fs", nyquist),
            ("20.5 kHz", near_nyquist),
            ("music", music),
            ("bursts", bursts(n, 10)),
        ];
        let interp = PeakInterpolator::new();
        for (name, x) in &signals {
            for gain in [1.0f32, 0.5, 0.1, 0.0031, 1.7] {
                let x: Vec<f32> = x.iter().map(|v| v * gain).collect();
                let exact = unscreened_max(&[&x]);
                let mut d = TruePeakDetector::new(1);
                for c in x.chunks(4096) {
                    d.push(&[c]);
                }
                assert_eq!(d.peak().to_bits(), exact.to_bits(), "{name} × {gain}");
                let mut ctx = vec![0f32; PRECISE_REACH];
                ctx.extend_from_slice(&x);
                ctx.extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
                let mut full = vec![0f32; x.len() + 1];
                interp.frame_peaks(&ctx, PRECISE_REACH - 1, &mut full);
                let mut screened = vec![0f32; x.len() + 1];
                for floor in [0.0, 0.5 * exact, 0.9 * exact, 0.99 * exact, exact] {
                    interp.frame_peaks_over(&ctx, PRECISE_REACH - 1, &mut screened, floor);
                    for (e, s) in full.iter().zip(&screened) {
                        assert!(s == e || (*s == 0.0 && *e <= floor), "{name} × {gain}, floor {floor}: {s} for {e}");
                    }
                }
            }
        }
        // Stereo: the channels' maxima combine the same way.
        let (l, r) = (&signals[5].1, &signals[0].1);
        let mut d = TruePeakDetector::new(2);
        d.push(&[l, r]);
        assert_eq!(d.peak().to_bits(), unscreened_max(&[l, r]).to_bits());
    }

    /// The central-tap bound is what its proof says: over every block of a dense loud signal (and
    /// of white noise),
    /// at least each lane's |sample| and |point|, and it skips a good share of such blocks under the
    /// signal's maximum (it is the screen that pays on loud masters).
    #[test]
    fn the_central_tap_bound_covers_every_point_and_skips_a_loud_signal() {
        // Noise through a one-pole low-pass (most energy under a few kHz, as in music), at full
        // loud (its maximum several times its RMS, as on a dense master).
        let mut lp = 0f32;
        let x: Vec<f32> = noise(8_000, 11)
            .iter()
            .map(|v| {
                lp += 0.2 * (v - lp);
                3.0 * lp
            })
            .collect();
        let interp = PeakInterpolator::new();
        let lead = PRECISE_TAPS / 2 - 1;
        let mut ctx = vec![0f32; PRECISE_REACH];
        ctx.extend_from_slice(&x);
        ctx.extend(std::iter::repeat_n(0.0, PRECISE_REACH + BLOCK));
        let max = unscreened_max(&[&x]);
        let (mut blocks, mut skipped) = (0, 0);
        for i in (PRECISE_REACH..PRECISE_REACH + x.len() - BLOCK).step_by(BLOCK) {
            let w = &ctx[i - lead..];
            let bound = interp.central_bounds(w).iter().fold(0f32, |a, &b| a.max(b));
            let points = branch_block(w, &interp.branches);
            let most = points.iter().flatten().chain(&w[lead..lead + BLOCK]).fold(0f32, |a, v| a.max(v.abs()));
            assert!(most <= bound, "frame {i}: {most} over the bound {bound}");
            blocks += 1;
            skipped += usize::from(bound * (1.125 * (1.0 + 1e-3)) <= max);
        }
        assert!(skipped * 4 > blocks, "only {skipped} of {blocks} blocks under the bound");
        for x in [noise(4_000, 12), noise(4_000, 13).iter().map(|v| (4.0 * v).clamp(-1.0, 1.0)).collect()] {
            let mut ctx = vec![0f32; PRECISE_REACH];
            ctx.extend_from_slice(&x);
            ctx.extend(std::iter::repeat_n(0.0, PRECISE_REACH + BLOCK));
            for i in PRECISE_REACH..PRECISE_REACH + x.len() - BLOCK {
                let w = &ctx[i - lead..];
                let most = branch_block(w, &interp.branches)
                    .iter()
                    .flatten()
                    .chain(&w[lead..lead + BLOCK])
                    .fold(0f32, |a, v| a.max(v.abs()));
                assert!(most <= interp.central_bounds(w).iter().fold(0f32, |a, &b| a.max(b)), "noise, frame {i}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_and_plain_kernels_give_the_same_bits() {
        let x = bursts(5000, 6);
        let interp = PeakInterpolator::new();
        let mut ctx = vec![0f32; PRECISE_REACH];
        ctx.extend_from_slice(&x);
        ctx.extend(std::iter::repeat_n(0.0, PRECISE_REACH + 1));
        let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        interp.exact_peaks(&ctx, PRECISE_REACH, &mut a, -1.0);
        interp.exact_peaks_kernel(&ctx, PRECISE_REACH, &mut b, -1.0);
        assert_eq!(a, b);
        let br = branches();
        let mut padded = vec![0f32; x.len().div_ceil(BLOCK) * BLOCK + TAPS_PER_PHASE];
        padded[TAPS_PER_PHASE / 2 - 1..][..x.len()].copy_from_slice(&x);
        let mut plain = vec![0f32; x.len()];
        for (i, e) in plain.iter_mut().enumerate() {
            let w = &padded[i..];
            *e = br.iter().fold(x[i].abs(), |m, b| m.max(branch_point(w, b).abs()));
        }
        assert_eq!(peak_envelope(&[&x]), plain);
    }

    #[test]
    fn the_streamed_reading_does_not_depend_on_the_chunking_and_counts_the_edges() {
        let x: Vec<f32> = (0..10_001).map(|i| (i as f32 * 0.37).sin() * (i as f32 * 0.001).cos()).collect();
        let whole = precise_true_peak_db(&[&x]);
        for chunk in [1usize, 31, 4096] {
            let mut d = TruePeakDetector::new(1);
            for c in x.chunks(chunk) {
                d.push(&[c]);
            }
            assert_eq!(d.peak_dbtp(), whole, "chunks of {chunk}");
        }
        // A file that starts on a full-scale doublet overshoots before its first sample.
        let edge = [1.0f32, -1.0, 0.0, 0.0];
        assert!(precise_true_peak_db(&[&edge]) > 0.5);
    }
}
