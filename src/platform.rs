//! Delivery targets (`--platform`) and what each streaming service's loudness normalisation
//! does to a master's playback level.
//!
//! Targets (integrated loudness, true-peak ceiling):
//!
//! | platform | target | ceiling | playback normalisation assumed |
//! | --- | --- | --- | --- |
//! | spotify | -14 LUFS | -1 dBTP | down, and up as far as the true peak stays at or under -1 dBTP |
//! | apple | -16 LUFS | -1 dBTP | down, and up as far as the true peak stays at or under -1 dBTP |
//! | youtube, tidal, amazon | -14 LUFS | -1 dBTP | down only |
//! | deezer | -15 LUFS | -1 dBTP | down only |
//! | soundcloud | -14 LUFS | -1 dBTP | none |
//! | cd, club | the reference's | -0.3 dBTP | none (no normaliser: as loud as the reference) |
//!
//! Sources and assumptions:
//! - Spotify publishes its rule (Spotify for Artists, "Loudness normalization"): tracks are
//!   adjusted to -14 LUFS (ITU-R BS.1770); louder masters get negative gain; softer masters get
//!   positive gain, but only as far as leaves 1 dB of true-peak headroom (their example: a
//!   -20 LUFS track peaking at -5 dBTP is lifted to -16 LUFS only). That is the default "Normal"
//!   mode; "Loud" (-11, with a limiter) and "Quiet" (-19) are listener choices and not modelled.
//! - Apple Music's Sound Check is taken as -16 LUFS (the figure mastering guides agree on; Apple
//!   publishes no number). Sound Check also raises quiet tracks (iTunes lists a positive
//!   adjustment for them); Apple does not say how far, so the same true-peak limit as Spotify's
//!   (-1 dBTP) is assumed.
//! - YouTube, Tidal and Amazon Music are taken as -14 LUFS and Deezer as -15 LUFS, all turning
//!   loud tracks down and never up (the common reading of these services in mastering guides;
//!   none of them publishes its rule).
//! - SoundCloud publishes no loudness normalisation and is assumed to play files as uploaded;
//!   -14 LUFS at -1 dBTP is the usual streaming delivery recommendation, used as its target.
//! - "cd" and "club" have no normaliser: they keep the reference's loudness (as without
//!   `--platform`) with a -0.3 dBTP ceiling, the usual limit for material that is not
//!   lossy-encoded afterwards.

use std::fmt;
use std::str::FromStr;

use crate::analysis::Profile;

/// A delivery target for `--platform`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Spotify (Normal mode).
    Spotify,
    /// Apple Music (Sound Check).
    Apple,
    /// YouTube.
    Youtube,
    /// Tidal.
    Tidal,
    /// Amazon Music.
    Amazon,
    /// Deezer.
    Deezer,
    /// SoundCloud.
    Soundcloud,
    /// CD: as loud as the reference, -0.3 dBTP.
    Cd,
    /// Club play: as loud as the reference, -0.3 dBTP.
    Club,
}

/// What a platform's player does to a track's level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalisation {
    /// Plays the file as it is.
    None,
    /// Turns tracks louder than `target_lufs` down to it; never turns up.
    DownOnly {
        /// Normalisation target, LUFS.
        target_lufs: f64,
    },
    /// Turns tracks down to `target_lufs`, and quieter ones up toward it as far as their true
    /// peak stays at or under `peak_limit_dbtp`.
    UpAndDown {
        /// Normalisation target, LUFS.
        target_lufs: f64,
        /// Highest true peak positive gain may lead to, dBTP.
        peak_limit_dbtp: f64,
    },
}

impl Platform {
    /// All platforms, in the order of `--help` and the playback report.
    pub const ALL: [Platform; 9] = [
        Platform::Spotify,
        Platform::Apple,
        Platform::Youtube,
        Platform::Tidal,
        Platform::Amazon,
        Platform::Deezer,
        Platform::Soundcloud,
        Platform::Cd,
        Platform::Club,
    ];

    /// The name `--platform` takes.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Spotify => "spotify",
            Platform::Apple => "apple",
            Platform::Youtube => "youtube",
            Platform::Tidal => "tidal",
            Platform::Amazon => "amazon",
            Platform::Deezer => "deezer",
            Platform::Soundcloud => "soundcloud",
            Platform::Cd => "cd",
            Platform::Club => "club",
        }
    }

    /// The name people know it by.
    pub fn display_name(self) -> &'static str {
        match self {
            Platform::Spotify => "Spotify",
            Platform::Apple => "Apple Music",
            Platform::Youtube => "YouTube",
            Platform::Tidal => "Tidal",
            Platform::Amazon => "Amazon Music",
            Platform::Deezer => "Deezer",
            Platform::Soundcloud => "SoundCloud",
            Platform::Cd => "CD",
            Platform::Club => "Club",
        }
    }

    /// Loudness target of a master for this platform, LUFS; `None` means the reference's.
    pub fn target_lufs(self) -> Option<f64> {
        match self {
            Platform::Spotify | Platform::Youtube | Platform::Tidal | Platform::Amazon | Platform::Soundcloud => {
                Some(-14.0)
            }
            Platform::Apple => Some(-16.0),
            Platform::Deezer => Some(-15.0),
            Platform::Cd | Platform::Club => None,
        }
    }

    /// True-peak ceiling of a master for this platform, dBTP.
    pub fn ceiling_dbtp(self) -> f64 {
        match self {
            Platform::Cd | Platform::Club => -0.3,
            _ => -1.0,
        }
    }

    /// What the platform's player does to a track's level (see the module documentation).
    pub fn normalisation(self) -> Normalisation {
        match self {
            Platform::Spotify | Platform::Apple => {
                Normalisation::UpAndDown { target_lufs: self.target_lufs().unwrap_or(-14.0), peak_limit_dbtp: -1.0 }
            }
            Platform::Youtube | Platform::Tidal | Platform::Amazon | Platform::Deezer => {
                Normalisation::DownOnly { target_lufs: self.target_lufs().unwrap_or(-14.0) }
            }
            Platform::Soundcloud | Platform::Cd | Platform::Club => Normalisation::None,
        }
    }

    /// True for the streaming services (the platforms of the playback report).
    pub fn is_streaming(self) -> bool {
        !matches!(self, Platform::Cd | Platform::Club)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let alias = match lower.as_str() {
            "apple-music" | "applemusic" | "itunes" => "apple",
            "amazon-music" => "amazon",
            other => other,
        };
        Platform::ALL.iter().copied().find(|p| p.name() == alias).ok_or_else(|| {
            let names: Vec<&str> = Platform::ALL.iter().map(|p| p.name()).collect();
            format!("unknown platform `{s}` (use one of: {})", names.join(", "))
        })
    }
}

/// The playback level change one platform applies to a master.
#[derive(Debug, Clone, PartialEq)]
pub struct Playback {
    /// The platform.
    pub platform: Platform,
    /// Gain its player applies, dB (negative: turned down).
    pub gain_db: f64,
    /// Why, in words ("turned down to -14 LUFS").
    pub reason: String,
}

impl fmt::Display for Playback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "-0.0" reads oddly: a change that rounds to nothing is printed unsigned.
        let g = if self.gain_db.abs() < 0.05 { "0.0".to_string() } else { format!("{:+.1}", self.gain_db) };
        write!(f, "{}: {g} dB ({})", self.platform.display_name(), self.reason)
    }
}

/// What `platform` does to the playback level of a track measuring `integrated_lufs` with a true
/// peak of `true_peak_dbtp`.
pub fn playback(platform: Platform, integrated_lufs: f64, true_peak_dbtp: f64) -> Playback {
    let make = |gain_db: f64, reason: String| Playback { platform, gain_db, reason };
    if !integrated_lufs.is_finite() {
        return make(0.0, "silent: nothing to normalise".into());
    }
    let near = |target: f64| (integrated_lufs - target).abs() < 0.05;
    match platform.normalisation() {
        Normalisation::None => make(0.0, "no loudness normalisation: plays as mastered".into()),
        Normalisation::DownOnly { target_lufs } => {
            if near(target_lufs) {
                make(0.0, format!("at its {target_lufs:.0} LUFS target"))
            } else if integrated_lufs > target_lufs {
                make(target_lufs - integrated_lufs, format!("turned down to {target_lufs:.0} LUFS"))
            } else {
                make(
                    0.0,
                    format!(
                        "never turned up: plays {:.1} LU under its {target_lufs:.0} LUFS target",
                        target_lufs - integrated_lufs
                    ),
                )
            }
        }
        Normalisation::UpAndDown { target_lufs, peak_limit_dbtp } => {
            if near(target_lufs) {
                make(0.0, format!("at its {target_lufs:.0} LUFS target"))
            } else if integrated_lufs > target_lufs {
                make(target_lufs - integrated_lufs, format!("turned down to {target_lufs:.0} LUFS"))
            } else {
                let wanted = target_lufs - integrated_lufs;
                let headroom =
                    if true_peak_dbtp.is_finite() { (peak_limit_dbtp - true_peak_dbtp).max(0.0) } else { wanted };
                if headroom >= wanted {
                    make(wanted, format!("turned up to {target_lufs:.0} LUFS"))
                } else {
                    make(
                        headroom,
                        format!(
                            "turned up only to {:.1} LUFS: its true peak may not pass {peak_limit_dbtp:.0} dBTP",
                            integrated_lufs + headroom
                        ),
                    )
                }
            }
        }
    }
}

/// What every streaming platform does to the playback level of a master profiled as `master`.
pub fn playback_report(master: &Profile) -> Vec<Playback> {
    Platform::ALL
        .iter()
        .filter(|p| p.is_streaming())
        .map(|&p| playback(p, master.loudness.integrated_lufs, master.loudness.true_peak_dbtp))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for p in Platform::ALL {
            assert_eq!(p.name().parse::<Platform>(), Ok(p));
        }
        let e = "napster".parse::<Platform>().unwrap_err();
        assert!(e.contains("spotify") && e.contains("club"), "{e}");
    }

    #[test]
    fn spotify_turns_loud_masters_down_and_lifts_quiet_ones_only_within_the_peak_headroom() {
        let loud = playback(Platform::Spotify, -9.0, -1.0);
        assert!((loud.gain_db + 5.0).abs() < 1e-9, "{loud}");
        // Spotify's own example: -20 LUFS peaking at -5 dBTP is lifted to -16 LUFS only.
        let quiet = playback(Platform::Spotify, -20.0, -5.0);
        assert!((quiet.gain_db - 4.0).abs() < 1e-9, "{quiet}");
        let youtube = playback(Platform::Youtube, -20.0, -5.0);
        assert_eq!(youtube.gain_db, 0.0);
        assert_eq!(playback(Platform::Soundcloud, -8.0, -0.1).gain_db, 0.0);
        assert_eq!(
            playback(Platform::Apple, -10.0, -1.0).to_string(),
            "Apple Music: -6.0 dB (turned down to -16 LUFS)"
        );
    }
}
