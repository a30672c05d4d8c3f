//! Signal-processing building blocks shared by analysis and rendering: biquads, the LR4
//! crossover, linear-phase FIR design and fast convolution, true-peak oversampling.

pub mod biquad;
pub mod crossover;
pub mod fir;
pub mod oversample;
pub mod truepeak;

/// Defines `fn NAME(args) { BODY }` whose body runs compiled with the CPU's AVX2 and FMA
/// instructions when it has them (checked at run time; the binary stays portable), else as it
/// is. For the per-sample loops of filters with fused multiply-adds
/// ([`biquad::FusedBiquad`]): with the instructions each is one operation, without them a
/// library call computing the same bits. The body becomes an `#[inline(always)]` function, so
/// that it is compiled inside the feature-enabled one (a closure handed to a feature-enabled
/// function is compiled apart, without the features).
macro_rules! fma_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `fast` is compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use fma_dispatch;
