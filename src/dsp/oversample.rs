//! 8× polyphase oversampling for nonlinear stages (the saturator), applied only where needed.
//!
//! A waveshaper makes harmonics; at the original rate those above Nyquist fold back as
//! inharmonic aliases. Run at 8× the rate, the harmonics that matter lie below the oversampled
//! Nyquist and are removed by the decimation filter before they can fold. One zero-phase
//! Kaiser-windowed low-pass (passband to 0.40·fs, stopband from 0.60·fs, about 100 dB down) serves
//! both as the interpolator and as the decimator. Its cutoff is exactly half the original rate, so
//! it is a Nyquist filter: the interpolated points at the original instants are the input
//! samples themselves and need no arithmetic.
//!
//! Saturation only touches peaks, so the caller works on the *residual* `shape(x) − x`: it is zero
//! wherever the signal stays below the shaper's knee, and only the spans where it is not are
//! oversampled ([`Oversampler::upsample_span`], then [`Oversampler::decimate_add_span`]). The
//! linear part never passes through the filters at all, so it comes out bit-identical.

/// Oversampling factor.
pub const FACTOR: usize = 8;
/// Stopband attenuation the filter is designed for, dB.
const STOPBAND_DB: f64 = 100.0;
/// Passband edge and stopband start as fractions of the original sample rate.
/// (A saturator's residual above 0.40·fs, 17.6 kHz at 44.1 kHz, may be attenuated: it is
/// distortion. Images of a 15 kHz tone at 44.1 kHz sit at 0.66·fs, inside the stopband.)
const PASS_EDGE: f64 = 0.40;
const STOP_EDGE: f64 = 0.60;

/// The shared filter, in the two layouts the two directions need.
#[derive(Debug, Clone)]
pub struct Oversampler {
    /// Zero-phase taps at the oversampled rate, `2·half + 1` of them, DC gain 1.
    taps: Vec<f32>,
    half: usize,
    /// Interpolator phases, transposed: `lanes[j][p]` weighs input `q − reach + j` for output
    /// `q·FACTOR + p`, so that the eight outputs after an input sample are eight lanes summed
    /// side by side (no sum across lanes per point).
    lanes: Vec<[f32; FACTOR]>,
    /// Input samples each side an interpolated point depends on.
    reach: usize,
}

impl Default for Oversampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Oversampler {
    /// Designs the saturator's filter (Kaiser window, length from Kaiser's formula).
    pub fn new() -> Self {
        Self::design(PASS_EDGE, STOP_EDGE, STOPBAND_DB)
    }

    /// A filter with its passband to `pass_edge`·fs and its stopband from `stop_edge`·fs
    /// (symmetric about fs/2, so the filter stays a Nyquist filter), `stopband_db` down.
    pub fn design(pass_edge: f64, stop_edge: f64, stopband_db: f64) -> Self {
        let l = FACTOR as f64;
        let transition = (stop_edge - pass_edge) / l; // cycles per oversampled sample
        let len = ((stopband_db - 7.95) / (14.36 * transition)).ceil() as usize + 1;
        let half = len / 2;
        let beta = 0.1102 * (stopband_db - 8.7);
        let cutoff = 0.5 * (pass_edge + stop_edge) / l;
        let i0b = super::truepeak::bessel_i0(beta);
        let mut taps64: Vec<f64> = (0..=2 * half)
            .map(|i| {
                let t = i as f64 - half as f64;
                let sinc = if t == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * std::f64::consts::PI * cutoff * t).sin() / (std::f64::consts::PI * t)
                };
                let r = t / half as f64;
                sinc * super::truepeak::bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0b
            })
            .collect();
        let sum: f64 = taps64.iter().sum();
        taps64.iter_mut().for_each(|t| *t /= sum);
        let reach = half / FACTOR + 1;
        let phases: Vec<Vec<f32>> = (0..FACTOR)
            .map(|p| {
                (0..=2 * reach)
                    .map(|j| {
                        // Output q·L + p, input q − reach + j: distance (reach − j)·L + p.
                        let d = (reach as i64 - j as i64) * FACTOR as i64 + p as i64;
                        let idx = d + half as i64;
                        if idx >= 0 && (idx as usize) < taps64.len() {
                            (taps64[idx as usize] * l) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        let lanes = (0..=2 * reach).map(|j| std::array::from_fn(|p: usize| phases[p][j])).collect();
        Self { taps: taps64.iter().map(|&t| t as f32).collect(), half, lanes, reach }
    }

    /// The taps, the interpolator's lanes and the taps' half length, for the saturator's
    /// reference implementation (`render::saturation`'s tests).
    #[cfg(test)]
    pub(crate) fn parts(&self) -> (&[f32], &[[f32; FACTOR]], usize) {
        (&self.taps, &self.lanes, self.half)
    }

    /// Input samples on each side of a span that its oversampled values depend on, and that its
    /// decimated residual spills onto.
    pub fn reach(&self) -> usize {
        self.reach
    }

    /// Interpolates `x` (zero outside its ends) at 8× for input positions `start..end`: writes
    /// `(end − start)·FACTOR` values into `out`, `out[(q − start)·FACTOR + p]` at time `q + p/8`.
    ///
    /// Where the whole window lies inside `x` the points are computed [`UP_BLOCK`] input samples
    /// at a time, each sample's eight points summed over the window in the same order as
    /// [`Self::interpolate`] does for one (so the same bits), but with that many independent
    /// sums in flight instead of one chain of dependent additions.
    pub fn upsample_span(&self, x: &[f32], start: usize, end: usize, out: &mut Vec<f32>) {
        out.clear();
        out.resize((end - start) * FACTOR, 0.0);
        self.upsample_into(x, start, end, out);
    }

    /// [`Self::upsample_span`] into a slice of exactly `(end − start)·FACTOR` values.
    pub fn upsample_into(&self, x: &[f32], start: usize, end: usize, out: &mut [f32]) {
        assert_eq!(out.len(), (end - start) * FACTOR, "upsample_into: output length");
        // Inputs whose window `q − reach ..= q + reach` lies inside `x`.
        let lo = start.max(self.reach).min(end);
        let hi = end.min(x.len().saturating_sub(self.reach)).max(lo);
        if lo > start || hi < end {
            let mut window = vec![0f32; 2 * self.reach + 1];
            for q in (start..lo).chain(hi..end) {
                self.window(x, q, &mut window);
                let base = (q - start) * FACTOR;
                out[base..base + FACTOR].copy_from_slice(&self.interpolate(&window));
            }
        }
        if lo < hi {
            let first = lo - self.reach;
            let inputs = &x[first..first + 2 * self.reach + (hi - lo)];
            interpolate_run(&self.lanes, inputs, &mut out[(lo - start) * FACTOR..(hi - start) * FACTOR]);
        }
        // A Nyquist filter: the point at the input instant is the input sample itself.
        for (o, &v) in out.iter_mut().step_by(FACTOR).zip(&x[start..end]) {
            *o = v;
        }
    }

    /// The largest |value| of the 8× interpolation of `x` between samples `i` and `i + 1`
    /// (the 7 points strictly between them). `window` is scratch space, reused across calls.
    pub fn between_peak(&self, x: &[f32], i: usize, window: &mut Vec<f32>) -> f32 {
        window.resize(2 * self.reach + 1, 0.0);
        self.window(x, i, window);
        self.interpolate(window).iter().skip(1).fold(0f32, |peak, v| peak.max(v.abs()))
    }

    /// The eight interpolated points after the window's centre (lane `p` at time `p/8`), each
    /// summed over the window in order, the eight side by side (vectorises).
    #[inline]
    fn interpolate(&self, window: &[f32]) -> [f32; FACTOR] {
        let mut acc = [0f32; FACTOR];
        for (&w, lane) in window.iter().zip(&self.lanes) {
            for (a, &t) in acc.iter_mut().zip(lane) {
                *a += w * t;
            }
        }
        acc
    }

    /// The inputs `q − reach ..= q + reach` that the interpolated points after sample `q` weigh,
    /// zero beyond the ends of `x`, into `window` (`2·reach + 1` long).
    fn window(&self, x: &[f32], q: usize, window: &mut [f32]) {
        let first = q as i64 - self.reach as i64;
        let n = x.len() as i64;
        if first >= 0 && first + window.len() as i64 <= n {
            window.copy_from_slice(&x[first as usize..first as usize + window.len()]);
        } else {
            for (j, w) in window.iter_mut().enumerate() {
                let k = first + j as i64;
                *w = if k >= 0 && k < n { x[k as usize] } else { 0.0 };
            }
        }
    }

    /// Low-pass filters the oversampled `residual` (position `start` at index 0, as written by
    /// [`Self::upsample_span`]), takes every 8th value and adds `scale ×` it to `y` at positions
    /// `start − reach .. end + reach` (clipped to `y`).
    pub fn decimate_add_span(&self, residual: &[f32], start: usize, scale: f32, y: &mut [f32]) {
        let m_len = residual.len() as i64;
        let end = start + residual.len().div_ceil(FACTOR);
        let lo = start.saturating_sub(self.reach);
        let hi = (end + self.reach).min(y.len());
        let half = self.half as i64;
        let l = FACTOR as i64;
        // Only outputs whose filter reaches a non-zero residual value need computing: runs of
        // non-zero values further apart than the filter is long are handled one at a time.
        for (r0, r1) in nonzero_runs(residual, 2 * self.half + FACTOR) {
            let n_lo = (start as i64 + (r0 as i64 - half).div_euclid(l)).max(lo as i64) as usize;
            let n_hi = (start as i64 + (r1 as i64 + half).div_euclid(l) + 1).min(hi as i64).max(0) as usize;
            // Outputs whose whole filter lies inside `residual` (`m0 = centre − half ≥ 0`,
            // `m1 = centre + half + 1 ≤ m_len`) run eight at a time; the rest (those at the
            // span's ends, whose filter meets its edge, and the last few) eight at a time too,
            // each with its own stretch of residual and of taps.
            let first_full = (start as i64 + (half + l - 1) / l).max(n_lo as i64).min(n_hi as i64) as usize;
            let end_full =
                (start as i64 + (m_len - half - 1).div_euclid(l) + 1).max(first_full as i64).min(n_hi as i64) as usize;
            let end_blocks = first_full + (end_full - first_full) / 8 * 8;
            if first_full < end_blocks {
                let m0 = (first_full - start) * FACTOR - self.half;
                let m1 = (end_blocks - 1 - start) * FACTOR + self.half + 1;
                decimate_run(&self.taps, &residual[m0..m1], scale, &mut y[first_full..end_blocks]);
            }
            let mut jobs: Vec<DotJob> = Vec::with_capacity(8);
            for n in (n_lo..first_full).chain(end_blocks..n_hi) {
                // Residual index m (time start + m/8) meets tap h[(n − start)·8 − m] = h[m − (n − start)·8].
                let centre = (n as i64 - start as i64) * l;
                let m0 = (centre - half).max(0);
                let m1 = (centre + half + 1).min(m_len);
                if m0 >= m1 {
                    continue;
                }
                let t0 = (m0 - centre + half) as usize;
                jobs.push(DotJob { out: n, r0: m0 as usize, t0, len: (m1 - m0) as usize });
                if jobs.len() == 8 {
                    dots_add(residual, &self.taps, &jobs, scale, y);
                    jobs.clear();
                }
            }
            dots_add(residual, &self.taps, &jobs, scale, y);
        }
    }
}

/// One output of the decimator computed on its own: `y[out] += scale × dot(residual[r0 ..][..len],
/// taps[t0 ..][..len])`.
#[derive(Debug, Clone, Copy)]
struct DotJob {
    out: usize,
    r0: usize,
    t0: usize,
    len: usize,
}

/// Up to eight [`DotJob`]s, each summed exactly as [`dot`] sums (the same bits), side by side.
fn dots_add(residual: &[f32], taps: &[f32], jobs: &[DotJob], scale: f32, y: &mut [f32]) {
    assert!(jobs.len() <= 8, "dots_add: at most eight jobs");
    for j in jobs {
        assert!(j.r0 + j.len <= residual.len() && j.t0 + j.len <= taps.len() && j.out < y.len(), "dots_add: bounds");
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above); the bounds are checked above.
        let sums = unsafe { dots_avx2(residual, taps, jobs) };
        for (j, s) in jobs.iter().zip(sums) {
            y[j.out] += scale * s;
        }
        return;
    }
    for j in jobs {
        y[j.out] += scale * dot(&residual[j.r0..j.r0 + j.len], &taps[j.t0..j.t0 + j.len]);
    }
}

/// [`dots_add`]'s sums on 8-lane registers: each job's eight partial sums in a register as
/// [`dot`] keeps them (a job with fewer whole chunks stops adding sooner), the eight registers
/// transposed and added in [`dot`]'s order, then each job's tail.
///
/// # Safety
/// The CPU must support AVX2; at most eight jobs, each inside `residual` and `taps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dots_avx2(residual: &[f32], taps: &[f32], jobs: &[DotJob]) -> [f32; 8] {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let mut acc: [__m256; 8] = [_mm256_setzero_ps(); 8];
    let chunks: [usize; 8] = std::array::from_fn(|b| jobs.get(b).map_or(0, |j| j.len / 8));
    let most = chunks.iter().copied().max().unwrap_or(0);
    let (rp, tp) = (residual.as_ptr(), taps.as_ptr());
    for c in 0..most {
        for ((a, j), &n) in acc.iter_mut().zip(jobs).zip(&chunks) {
            if c < n {
                // SAFETY: 8c + 8 ≤ len, and the job lies inside residual and taps.
                let (x, t) = unsafe { (_mm256_loadu_ps(rp.add(j.r0 + c * 8)), _mm256_loadu_ps(tp.add(j.t0 + c * 8))) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(x, t));
            }
        }
    }
    let mut sums = [0f32; 8];
    // SAFETY: eight floats into an eight-float array.
    unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), transposed_sum(acc)) };
    for ((s, j), &n) in sums.iter_mut().zip(jobs).zip(&chunks) {
        for i in n * 8..j.len {
            *s += residual[j.r0 + i] * taps[j.t0 + i];
        }
    }
    sums
}

/// Lane `b` of the result: the eight lanes of `acc[b]` added in order (as `[f32; 8]::iter().sum()`
/// adds them), for all eight registers at once, by an 8×8 transpose.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn transposed_sum(acc: [std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
    let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
    let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
    let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
    let (s0, s1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
    let (s2, s3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
    let (s4, s5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
    let (s6, s7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
    // Column l holds lane l of every register.
    let col = [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ];
    let mut sum = col[0];
    for c in &col[1..] {
        sum = _mm256_add_ps(sum, *c);
    }
    sum
}

/// Input samples interpolated side by side by [`interpolate_run`].
const UP_BLOCK: usize = 8;

/// Whether the CPU has AVX2: the kernels then run on 8-lane registers. Multiplies and adds stay
/// separate (no FMA), in the same order, so both builds give the same bits.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// [`Oversampler::interpolate`] for consecutive inputs: `x` holds the windows of
/// `out.len() / FACTOR` consecutive inputs (`2·reach` samples more than there are inputs), and
/// `out` takes their eight points each.
fn interpolate_run(lanes: &[[f32; FACTOR]], x: &[f32], out: &mut [f32]) {
    let n = out.len() / FACTOR;
    assert!(out.len() == n * FACTOR && x.len() + 1 >= lanes.len() + n, "interpolate_run: lengths");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above); the lengths are checked above.
        return unsafe { interpolate_run_avx2(lanes, x, out) };
    }
    interpolate_run_portable(lanes, x, out)
}

/// [`interpolate_run`] one input at a time, without AVX2.
fn interpolate_run_portable(lanes: &[[f32; FACTOR]], x: &[f32], out: &mut [f32]) {
    for (q, o) in out.chunks_exact_mut(FACTOR).enumerate() {
        let mut acc = [0f32; FACTOR];
        for (&v, lane) in x[q..q + lanes.len()].iter().zip(lanes) {
            for (a, &t) in acc.iter_mut().zip(lane) {
                *a += v * t;
            }
        }
        o.copy_from_slice(&acc);
    }
}

/// [`interpolate_run`] on 8-lane registers: a register per input sample holds its eight points,
/// [`UP_BLOCK`] of them summed side by side, each in the same order as the portable loop (the
/// same bits).
///
/// # Safety
/// The CPU must support AVX2; `out.len()` must be a multiple of [`FACTOR`] and
/// `x.len() ≥ lanes.len() + out.len() / FACTOR − 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interpolate_run_avx2(lanes: &[[f32; FACTOR]], x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    #[inline(always)]
    unsafe fn block<const B: usize>(lanes: &[[f32; FACTOR]], x: *const f32, out: *mut f32) {
        let mut acc: [__m256; B] = [_mm256_setzero_ps(); B];
        for (j, lane) in lanes.iter().enumerate() {
            // SAFETY: the caller's bounds: inputs q + j + b < x.len().
            let t = unsafe { _mm256_loadu_ps(lane.as_ptr()) };
            for (b, a) in acc.iter_mut().enumerate() {
                let v = _mm256_set1_ps(unsafe { *x.add(j + b) });
                *a = _mm256_add_ps(*a, _mm256_mul_ps(v, t));
            }
        }
        for (b, a) in acc.iter().enumerate() {
            // SAFETY: the caller's bounds: points (q + b)·8 .. +8 < out.len().
            unsafe { _mm256_storeu_ps(out.add(b * FACTOR), *a) };
        }
    }
    let n = out.len() / FACTOR;
    let mut q = 0;
    while q + UP_BLOCK <= n {
        // SAFETY: q + UP_BLOCK ≤ n, so inputs up to q + lanes.len() + UP_BLOCK − 2 < x.len().
        unsafe { block::<UP_BLOCK>(lanes, x.as_ptr().add(q), out.as_mut_ptr().add(q * FACTOR)) };
        q += UP_BLOCK;
    }
    while q < n {
        // SAFETY: as above, one input.
        unsafe { block::<1>(lanes, x.as_ptr().add(q), out.as_mut_ptr().add(q * FACTOR)) };
        q += 1;
    }
}

/// The decimator for consecutive outputs whose whole filter lies inside the residual: `r` starts
/// at the first output's first tap and covers the last output's last; output `k` adds
/// `scale × dot(r[8k ..], taps)` to `y[k]`, summed exactly as [`dot`] sums (so the same bits).
fn decimate_run(taps: &[f32], r: &[f32], scale: f32, y: &mut [f32]) {
    assert!(y.is_empty() || r.len() + FACTOR >= y.len() * FACTOR + taps.len(), "decimate_run: lengths");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && taps.len() >= FACTOR {
        // SAFETY: the CPU supports AVX2 (checked just above); the lengths are checked above.
        return unsafe { decimate_run_avx2(taps, r, scale, y) };
    }
    decimate_run_portable(taps, r, scale, y)
}

/// [`decimate_run`] one output at a time, without AVX2.
fn decimate_run_portable(taps: &[f32], r: &[f32], scale: f32, y: &mut [f32]) {
    for (k, out) in y.iter_mut().enumerate() {
        *out += scale * dot(&r[k * FACTOR..k * FACTOR + taps.len()], taps);
    }
}

/// [`decimate_run`] on 8-lane registers, eight outputs at a time: each output's eight partial
/// sums in a register as [`dot`] keeps them, then the eight registers transposed so that lane
/// `l` of all eight outputs sits in one register, and the partial sums added in [`dot`]'s order
/// for all eight at once (then its tail, then the scaled add): the same bits as [`dot`].
///
/// # Safety
/// The CPU must support AVX2; `taps.len() ≥ 8` and `r.len() ≥ 8·(y.len() − 1) + taps.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn decimate_run_avx2(taps: &[f32], r: &[f32], scale: f32, y: &mut [f32]) {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_i32gather_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setr_epi32,
        _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let chunks = taps.len() / 8;
    let n = y.len();
    let whole = n / 8 * 8;
    let (rp, tp) = (r.as_ptr(), taps.as_ptr());
    let stride = _mm256_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56);
    let mut k = 0;
    while k < whole {
        // SAFETY (the loads below): output k + b reads r[8(k + b) .. 8(k + b) + taps.len()],
        // inside r by the caller's bound; taps[8c .. 8c + 8] with 8c + 8 ≤ taps.len().
        let base = unsafe { rp.add(k * FACTOR) };
        let mut acc: [__m256; 8] = [_mm256_setzero_ps(); 8];
        for c in 0..chunks {
            let t = unsafe { _mm256_loadu_ps(tp.add(c * 8)) };
            for (b, a) in acc.iter_mut().enumerate() {
                let x = unsafe { _mm256_loadu_ps(base.add(b * FACTOR + c * 8)) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(x, t));
            }
        }
        let mut sum = transposed_sum(acc);
        for (i, &t) in taps.iter().enumerate().skip(chunks * 8) {
            // SAFETY: r[8(k + b) + i] for b < 8, inside r as above.
            let x = unsafe { _mm256_i32gather_ps::<4>(base.add(i), stride) };
            let t = _mm256_set1_ps(t);
            sum = _mm256_add_ps(sum, _mm256_mul_ps(x, t));
        }
        // SAFETY: y[k .. k + 8], k + 8 ≤ whole ≤ y.len().
        let out = unsafe { y.as_mut_ptr().add(k) };
        let prior = unsafe { _mm256_loadu_ps(out) };
        unsafe { _mm256_storeu_ps(out, _mm256_add_ps(prior, _mm256_mul_ps(_mm256_set1_ps(scale), sum))) };
        k += 8;
    }
    for (k, out) in y.iter_mut().enumerate().skip(whole) {
        *out += scale * dot(&r[k * FACTOR..k * FACTOR + taps.len()], taps);
    }
}

/// Runs `[first, last]` (inclusive) of non-zero values in `x`, merged when fewer than `gap`
/// zeros apart.
fn nonzero_runs(x: &[f32], gap: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    // Eight at a time: a block of zeros (most of a quiet stretch) costs one test.
    for (k, block) in x.chunks(8).enumerate() {
        if block.iter().fold(false, |any, v| any | (*v != 0.0)) {
            for (j, v) in block.iter().enumerate() {
                if *v == 0.0 {
                    continue;
                }
                let i = k * 8 + j;
                match runs.last_mut() {
                    Some(last) if i - last.1 <= gap => last.1 = i,
                    _ => runs.push((i, i)),
                }
            }
        }
    }
    runs
}

/// Dot product in eight independent lanes (vectorises; summation order fixed, so deterministic).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magnitude response of the zero-phase taps at `f` (fraction of the original rate), dB.
    fn response_db(o: &Oversampler, f: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * f / FACTOR as f64;
        let h: f64 =
            o.taps.iter().enumerate().map(|(i, t)| f64::from(*t) * (w * (i as f64 - o.half as f64)).cos()).sum();
        20.0 * h.abs().max(1e-20).log10()
    }

    #[test]
    fn filter_is_flat_in_the_passband_and_100_db_down_in_the_stopband() {
        let o = Oversampler::new();
        for i in 0..=40 {
            let f = 0.01 * f64::from(i);
            assert!(response_db(&o, f).abs() < 0.01, "passband ripple at {f} fs: {} dB", response_db(&o, f));
        }
        for i in 60..=400 {
            let f = 0.01 * f64::from(i);
            assert!(response_db(&o, f) < -95.0, "stopband at {f} fs: {} dB", response_db(&o, f));
        }
    }

    #[test]
    fn upsampling_reproduces_the_input_at_the_original_instants_and_interpolates_a_sine() {
        let o = Oversampler::new();
        let f = 0.2; // cycles per original sample
        let x: Vec<f32> = (0..400).map(|i| (2.0 * std::f64::consts::PI * f * i as f64).sin() as f32).collect();
        let mut up = Vec::new();
        o.upsample_span(&x, 100, 300, &mut up);
        for (m, v) in up.iter().enumerate() {
            let t = 100.0 + m as f64 / FACTOR as f64;
            let want = (2.0 * std::f64::consts::PI * f * t).sin();
            assert!((f64::from(*v) - want).abs() < 1e-4, "at t = {t}: {v} vs {want}");
        }
    }

    #[test]
    fn up_then_down_of_a_band_limited_signal_is_the_identity() {
        let o = Oversampler::new();
        let x: Vec<f32> = (0..600).map(|i| (0.3 * i as f32).sin() * 0.5 + (0.05 * i as f32).cos() * 0.3).collect();
        let mut up = Vec::new();
        o.upsample_span(&x, 0, x.len(), &mut up);
        let mut y = vec![0f32; x.len()];
        o.decimate_add_span(&up, 0, 1.0, &mut y);
        // Away from the ends (where the zero padding is not band-limited) the round trip is exact.
        for i in 100..500 {
            assert!((y[i] - x[i]).abs() < 2e-4, "sample {i}: {} vs {}", y[i], x[i]);
        }
    }
}
#[cfg(test)]
mod kernel_tests {
    use super::*;

    #[test]
    fn the_vector_kernels_give_the_same_bits_as_the_portable_loops() {
        let o = Oversampler::new();
        let mut s = 7u64;
        let x: Vec<f32> = (0..3000)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        // Interpolation of 1000 inputs (not a multiple of the block).
        let inputs = &x[100..100 + 2 * o.reach + 1000];
        let (mut fast, mut slow) = (vec![0f32; 1000 * FACTOR], vec![0f32; 1000 * FACTOR]);
        interpolate_run(&o.lanes, inputs, &mut fast);
        interpolate_run_portable(&o.lanes, inputs, &mut slow);
        assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "interpolation");
        // Decimation of 301 outputs, and eight edge outputs with their own stretches.
        let (mut fast, mut slow) = (vec![0.25f32; 301], vec![0.25f32; 301]);
        let r = &x[..300 * FACTOR + o.taps.len()];
        decimate_run(&o.taps, r, 0.7, &mut fast);
        decimate_run_portable(&o.taps, r, 0.7, &mut slow);
        assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "decimation");
        let jobs: Vec<DotJob> =
            (0..8).map(|k| DotJob { out: k, r0: 13 * k, t0: 3 * k, len: o.taps.len() - 3 * k - 5 * k }).collect();
        let (mut fast, mut slow) = (vec![0.5f32; 8], vec![0.5f32; 8]);
        dots_add(&x, &o.taps, &jobs, 0.9, &mut fast);
        for j in &jobs {
            slow[j.out] += 0.9 * dot(&x[j.r0..j.r0 + j.len], &o.taps[j.t0..j.t0 + j.len]);
        }
        assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "edge outputs");
    }
}

#[cfg(test)]
mod meter_tests {
    use super::*;
    #[test]
    fn wide_design_interpolates_a_15_khz_sine() {
        let o = Oversampler::design(0.46, 0.54, 60.0);
        let f = 15_000.0 / 44_100.0;
        let x: Vec<f32> = (0..2000).map(|i| (0.5 * (2.0 * std::f64::consts::PI * f * i as f64).sin()) as f32).collect();
        let mut up = Vec::new();
        o.upsample_span(&x, 500, 1500, &mut up);
        let mut worst = 0f64;
        for (m, v) in up.iter().enumerate() {
            let t = 500.0 + m as f64 / FACTOR as f64;
            let want = 0.5 * (2.0 * std::f64::consts::PI * f * t).sin();
            worst = worst.max((f64::from(*v) - want).abs());
        }
        let mut w = Vec::new();
        let peak = (500..1500).map(|i| o.between_peak(&x, i, &mut w)).fold(0f32, f32::max);
        assert!(worst < 2e-3, "worst {worst}, peak {peak}, taps {} half {} reach {}", o.taps.len(), o.half, o.reach);
        assert!((peak - 0.5).abs() < 2e-3, "peak {peak}");
    }
}
