//! refmaster: automatic reference-matching mastering.
//!
//! The pipeline, one stage a module, data flowing one way:
//! [`decode`] → [`analysis`] → [`solve`] → [`render`] → [`master`] (verify) → [`export`], with
//! [`encode`] writing audio and [`report`] telling the user what happened.

pub mod album;
pub mod analysis;
pub mod audio;
pub mod ceiling;
pub mod decode;
pub mod dsp;
pub mod encode;
pub mod error;
pub mod export;
pub mod job;
pub mod learn;
pub mod master;
pub mod platform;
pub mod preview;
pub mod proxy;
pub mod render;
pub mod report;
pub mod report_html;
pub mod serve;
pub mod settings;
pub mod solve;
pub mod source;

pub use audio::AudioBuffer;
pub use error::{Error, Result};
