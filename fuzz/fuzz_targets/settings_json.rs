//! Arbitrary text through `Settings::from_json`; what it accepts must be valid, must survive its
//! own JSON, and must render a short signal to finite samples under the ceiling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use refmaster::audio::AudioBuffer;
use refmaster::settings::Settings;

const RATES: [u32; 6] = [8_000, 22_050, 44_100, 48_000, 96_000, 192_000];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let settings = match Settings::from_json(&text, "fuzz.json") {
        Ok(s) => s,
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "multi-line error: {line}");
            return;
        }
    };
    settings.validate("fuzz.json").expect("from_json returned settings that do not validate");
    let again = Settings::from_json(&settings.to_json(), "again.json").expect("written settings must read back");
    // A short loud stereo signal (a 1 kHz square and a 50 Hz sine) at a rate the settings pick.
    let rate = RATES[(settings.dither_seed % RATES.len() as u64) as usize];
    let n = (rate / 20) as usize;
    let left: Vec<f32> = (0..n).map(|i| if (i * 1000 / rate as usize) % 2 == 0 { 0.9 } else { -0.9 }).collect();
    let right: Vec<f32> =
        (0..n).map(|i| (2.0 * std::f32::consts::PI * 50.0 * i as f32 / rate as f32).sin() * 2.0).collect();
    let mix = AudioBuffer { sample_rate_hz: rate, channels: vec![left, right] };
    let out = refmaster::render::render(&mix, &again).expect("valid settings render");
    assert!(out.audio.channels.iter().flatten().all(|x| x.is_finite()), "non-finite output");
    if again.limiter.enabled {
        let planes: Vec<&[f32]> = out.audio.channels.iter().map(Vec::as_slice).collect();
        let tp = refmaster::dsp::truepeak::true_peak_db(&planes);
        assert!(tp <= again.limiter.ceiling_dbtp, "true peak {tp} over the ceiling {}", again.limiter.ceiling_dbtp);
    }
});
