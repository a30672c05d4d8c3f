//! Signal-processing building blocks shared by analysis and rendering: biquads, the LR4
//! crossover, linear-phase FIR design and fast convolution, true-peak oversampling.

pub mod biquad;
pub mod crossover;
pub mod fir;
pub mod oversample;
pub mod truepeak;
