//! A scenario: the seed and the signals of one simulated plant, checked as a whole.
//!
//! A [`Scenario`] can only be built through [`Scenario::new`], [`Scenario::from_toml_str`],
//! [`Scenario::from_file`] or [`Scenario::demo`], so a value of the type always has unique
//! names, registers that do not overlap and waveforms that give finite values. Apart from
//! [`Scenario::from_file`] reading its one file, nothing here does I/O.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use model::TagName;
use model::settings::{self, ConfigError, ConfigErrors, Report, Validate};
use serde::Deserialize;

use crate::registers::{self, LAST_REGISTER, REGISTERS_PER_SIGNAL, ReadError};
use crate::signal::{self, Breach, Fault, Signal, SignalKind};

/// The seed a scenario file gets when it does not name one.
pub const DEFAULT_SEED: u64 = 42;

/// Why a scenario could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
}

/// A checked set of signals, the seed their noise derives from, and the PLC's outages.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    seed: u64,
    signals: Vec<Signal>,
    outages: Vec<Outage>,
}

/// A time during which the PLC answers every read with a Modbus exception instead of data,
/// written as `[[outage]]`: communication lost behind a gateway, or a failing device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The exception every read gets meanwhile.
    #[serde(default)]
    pub answer: OutageAnswer,
}

/// The Modbus exception an outage answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageAnswer {
    /// 0x0B: a gateway got no answer from the device behind it (communication lost).
    #[default]
    GatewayTargetFailedToRespond,
    /// 0x0A: a gateway has no path to the device.
    GatewayPathUnavailable,
    /// 0x04: the device failed while handling the request.
    ServerDeviceFailure,
    /// 0x06: the device is busy.
    ServerDeviceBusy,
}

/// The file as written, before the checks that span several signals.
#[derive(Debug, Deserialize)]
struct ScenarioFile {
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default, rename = "signal")]
    signals: Vec<Signal>,
    #[serde(default, rename = "outage")]
    outages: Vec<Outage>,
}

fn default_seed() -> u64 {
    DEFAULT_SEED
}

impl Validate for ScenarioFile {
    fn validate(&self, report: &mut Report) {
        for problem in problems(&self.signals)
            .into_iter()
            .chain(outage_problems(&self.outages))
        {
            report.error(problem.path, problem.message);
        }
    }
}

impl Scenario {
    /// Builds a scenario from signals made in code, with the same checks a file gets.
    pub fn new(seed: u64, signals: Vec<Signal>) -> Result<Self, ScenarioError> {
        let errors = problems(&signals);
        if errors.is_empty() {
            Ok(Self {
                seed,
                signals,
                outages: Vec::new(),
            })
        } else {
            Err(ConfigErrors {
                source_name: "scenario".to_owned(),
                errors,
            }
            .into())
        }
    }

    /// Parses a scenario file. `source_name` names it in error messages. Every problem is
    /// reported at once with its key path (`signal[1].address`): syntax, unknown keys, wrong
    /// types, overlapping registers, duplicate names, periods of zero, values that are not
    /// finite.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Self, ScenarioError> {
        // Scenario files are not layered configuration: no environment variable may change
        // what a recorded scenario replays, so the environment given is empty.
        let file: ScenarioFile = settings::load(
            source_name,
            text,
            "",
            std::iter::empty::<(String, String)>(),
        )?;
        Ok(Self {
            seed: file.seed,
            signals: file.signals,
            outages: file.outages,
        })
    }

    /// This scenario with `outages`, checked as a file's are.
    pub fn with_outages(mut self, outages: Vec<Outage>) -> Result<Self, ScenarioError> {
        let errors = outage_problems(&outages);
        if !errors.is_empty() {
            return Err(ConfigErrors {
                source_name: "scenario".to_owned(),
                errors,
            }
            .into());
        }
        self.outages = outages;
        Ok(self)
    }

    /// The exception the PLC answers every read with `t` seconds after start, if an outage
    /// is under way.
    pub fn outage_at(&self, t: f64) -> Option<OutageAnswer> {
        self.outages.iter().find_map(|o| {
            let from = o.at.as_secs_f64();
            (t >= from && t < from + o.duration.as_secs_f64()).then_some(o.answer)
        })
    }

    /// Reads and parses a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// The built-in demo plant: one hydraulic press (`press-1`) whose bearing starts to
    /// overheat 20 s after start, reaching 92 °C 5 s later. `config/scenarios/demo.toml`
    /// holds the same scenario as a documented file.
    pub fn demo() -> Self {
        let tag = |name: &str| TagName::parse(name).expect("demo signal names are valid tags");
        let sine = |base, amplitude, period_s| SignalKind::Sine {
            base,
            amplitude,
            period: Duration::from_secs(period_s),
        };
        Self {
            seed: DEFAULT_SEED,
            outages: Vec::new(),
            signals: vec![
                Signal {
                    name: tag("bearing_temp"),
                    address: 0,
                    kind: sine(62.0, 3.0, 60),
                    noise: 0.5,
                    breach: Some(Breach {
                        after: Duration::from_secs(20),
                        value: 92.0,
                        ramp: Duration::from_secs(5),
                    }),
                    faults: Vec::new(),
                },
                Signal {
                    name: tag("vibration"),
                    address: 2,
                    kind: sine(2.5, 0.4, 17),
                    noise: 0.1,
                    breach: None,
                    faults: Vec::new(),
                },
                Signal {
                    name: tag("motor_current"),
                    address: 4,
                    kind: sine(41.0, 4.0, 30),
                    noise: 1.0,
                    breach: None,
                    faults: Vec::new(),
                },
                Signal {
                    name: tag("cycle_count"),
                    address: 6,
                    kind: SignalKind::Ramp {
                        start: 0.0,
                        slope_per_s: 0.5,
                    },
                    noise: 0.0,
                    breach: None,
                    faults: Vec::new(),
                },
            ],
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn signals(&self) -> &[Signal] {
        &self.signals
    }

    /// The value the signal called `name` has `t` seconds after start, before it is rounded
    /// to the `f32` the registers carry.
    pub fn value_of(&self, name: &str, t: f64) -> Option<f64> {
        let index = self.signals.iter().position(|s| s.name.as_str() == name)?;
        Some(self.value_at(index, t))
    }

    /// Answers a read of `count` registers from `start`, `t` seconds after start. Registers no
    /// signal occupies read as 0; a read may start or end in the middle of a signal and then
    /// sees only one of its two words, as on a real PLC.
    pub fn read_registers(&self, t: f64, start: u16, count: u16) -> Result<Vec<u16>, ReadError> {
        registers::check_read(start, count)?;
        let first = u32::from(start);
        let last = first + u32::from(count) - 1;
        let mut words = vec![0; usize::from(count)];
        for (index, signal) in self.signals.iter().enumerate() {
            let address = u32::from(signal.address);
            if address + u32::from(REGISTERS_PER_SIGNAL) - 1 < first || address > last {
                continue;
            }
            // Narrowing to f32 is the point: it is the type the registers carry.
            let encoded = registers::encode_f32(self.value_at(index, t) as f32);
            for (register, word) in (address..).zip(encoded) {
                if (first..=last).contains(&register) {
                    let slot = usize::try_from(register - first)
                        .expect("a register offset within a read of at most 125 fits in usize");
                    words[slot] = word;
                }
            }
        }
        Ok(words)
    }

    fn value_at(&self, index: usize, t: f64) -> f64 {
        let signal_seed = signal::mix(self.seed, index as u64);
        self.signals[index].value_at(signal_seed, t)
    }
}

/// Every problem in a set of signals, each with the key path it would have in a file.
fn problems(signals: &[Signal]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut error = |path: String, message: String| errors.push(ConfigError { path, message });
    if signals.is_empty() {
        error(
            "signal".into(),
            "a scenario needs at least one [[signal]]".into(),
        );
    }
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    for (i, signal) in signals.iter().enumerate() {
        let at = |key: &str| format!("signal[{i}].{key}");
        match seen_names.entry(signal.name.as_str()) {
            Entry::Occupied(first) => error(
                at("name"),
                format!(
                    "{:?} is already the name of signal[{}]",
                    signal.name.as_str(),
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        if signal.address > LAST_REGISTER + 1 - REGISTERS_PER_SIGNAL {
            error(
                at("address"),
                format!(
                    "{} is too high: a signal takes two registers and the last one is {LAST_REGISTER}",
                    signal.address
                ),
            );
        }
        if !(signal.noise >= 0.0 && signal.noise.is_finite()) {
            error(
                at("noise"),
                format!(
                    "must be a finite amplitude of 0 or more, not {}",
                    signal.noise
                ),
            );
        }
        for (key, value) in kind_numbers(&signal.kind) {
            if !value.is_finite() {
                error(at(&key), format!("must be a finite number, not {value}"));
            }
        }
        if let SignalKind::Sine { period, .. } = signal.kind
            && period.is_zero()
        {
            error(at("kind.sine.period"), "must be longer than 0s".into());
        }
        for (j, fault) in signal.faults.iter().enumerate() {
            let at = |key: &str| format!("signal[{i}].fault[{j}].{key}");
            match *fault {
                Fault::Spike {
                    duration, value, ..
                } => {
                    if !value.is_finite() {
                        error(at("value"), format!("must be a finite number, not {value}"));
                    }
                    if duration.is_zero() {
                        error(at("duration"), "must be longer than 0s".into());
                    }
                }
                Fault::Drift { per_second, .. } if !per_second.is_finite() => error(
                    at("per_second"),
                    format!("must be a finite number, not {per_second}"),
                ),
                Fault::Stuck {
                    duration: Some(duration),
                    ..
                }
                | Fault::Dropout { duration, .. }
                    if duration.is_zero() =>
                {
                    error(at("duration"), "must be longer than 0s".into());
                }
                _ => {}
            }
        }
        if let Some(breach) = &signal.breach
            && !breach.value.is_finite()
        {
            error(
                at("breach.value"),
                format!("must be a finite number, not {}", breach.value),
            );
        }
    }
    let mut by_address: Vec<(usize, &Signal)> = signals.iter().enumerate().collect();
    by_address.sort_by_key(|(i, s)| (s.address, *i));
    // Sorted by address, a signal can only overlap its predecessor (each is two registers
    // wide), so one pass finds every overlap without comparing all pairs.
    for pair in by_address.windows(2) {
        let [(i, a), (j, b)] = pair else { continue };
        if b.address - a.address < REGISTERS_PER_SIGNAL {
            let (first, second) = if i < j { (i, j) } else { (j, i) };
            let (earlier, later) = if i < j { (a, b) } else { (b, a) };
            error(
                format!("signal[{second}].address"),
                format!(
                    "registers {}..={} of {:?} overlap registers {}..={} of signal[{first}] {:?}; \
                     each signal is an f32 in two registers",
                    later.address,
                    u32::from(later.address) + 1,
                    later.name.as_str(),
                    earlier.address,
                    u32::from(earlier.address) + 1,
                    earlier.name.as_str(),
                ),
            );
        }
    }
    errors
}

fn outage_problems(outages: &[Outage]) -> Vec<ConfigError> {
    outages
        .iter()
        .enumerate()
        .filter(|(_, o)| o.duration.is_zero())
        .map(|(i, _)| ConfigError {
            path: format!("outage[{i}].duration"),
            message: "must be longer than 0s".into(),
        })
        .collect()
}

fn kind_numbers(kind: &SignalKind) -> Vec<(String, f64)> {
    let named = |variant: &str, fields: &[(&str, f64)]| {
        fields
            .iter()
            .map(|(field, value)| (format!("kind.{variant}.{field}"), *value))
            .collect()
    };
    match *kind {
        SignalKind::Sine {
            base, amplitude, ..
        } => named("sine", &[("base", base), ("amplitude", amplitude)]),
        SignalKind::Ramp { start, slope_per_s } => {
            named("ramp", &[("start", start), ("slope_per_s", slope_per_s)])
        }
        SignalKind::Constant { value } => named("constant", &[("value", value)]),
        SignalKind::Step { before, after, .. } => {
            named("step", &[("before", before), ("after", after)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO_FILE: &str = include_str!("../../config/scenarios/demo.toml");

    fn accepted(result: Result<Scenario, ScenarioError>) -> Scenario {
        match result {
            Ok(scenario) => scenario,
            Err(err) => panic!("refused: {err}"),
        }
    }

    fn refused(result: Result<Scenario, ScenarioError>) -> ConfigErrors {
        match result {
            Err(ScenarioError::Invalid(errors)) => errors,
            other => panic!("expected a list of problems, got {other:?}"),
        }
    }

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_toml_str(text, "t.toml")
    }

    fn paths(errors: &ConfigErrors) -> Vec<&str> {
        let mut paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        paths
    }

    fn read(scenario: &Scenario, t: f64, start: u16, count: u16) -> Vec<u16> {
        scenario
            .read_registers(t, start, count)
            .expect("the test reads a legal range")
    }

    #[test]
    fn the_demo_file_is_the_built_in_demo() {
        let parsed = accepted(Scenario::from_toml_str(DEMO_FILE, "demo.toml"));
        assert_eq!(parsed, Scenario::demo());
    }

    #[test]
    fn the_built_in_demo_passes_its_own_checks() {
        let demo = Scenario::demo();
        let rebuilt = accepted(Scenario::new(demo.seed(), demo.signals().to_vec()));
        assert_eq!(rebuilt, demo);
    }

    #[test]
    fn a_minimal_file_gets_the_default_seed_and_ramp() {
        let s = accepted(parse(
            r#"
            [[signal]]
            name = "level"
            address = 10
            kind.constant = { value = 3 }
            breach = { after = "1m", value = 0.5 }
            "#,
        ));
        assert_eq!(s.seed(), DEFAULT_SEED);
        let Some(breach) = &s.signals()[0].breach else {
            panic!("the breach was lost");
        };
        assert_eq!(breach.ramp, crate::signal::DEFAULT_BREACH_RAMP);
        assert_eq!(breach.after, Duration::from_secs(60));
        assert_eq!(s.value_of("level", 0.0), Some(3.0));
        assert_eq!(s.value_of("nope", 0.0), None);
    }

    #[test]
    fn faults_and_outages_are_read_from_the_file_and_checked() {
        let temp = "[[signal]]\nname = \"temp\"\naddress = 0\nkind.constant = { value = 50.0 }\n";
        let scenario = accepted(parse(&format!(
            "{temp}{}",
            r#"
            [[signal.fault]]
            kind = "spike"
            at = "10s"
            value = 120.0
            [[signal.fault]]
            kind = "dropout"
            at = "30s"
            duration = "5s"
            [[outage]]
            at = "60s"
            duration = "10s"
            [[outage]]
            at = "80s"
            duration = "1s"
            answer = "server_device_busy"
            "#
        )));
        assert_eq!(scenario.value_of("temp", 10.5), Some(120.0));
        assert_eq!(scenario.value_of("temp", 11.0), Some(50.0));
        assert!(scenario.value_of("temp", 31.0).is_some_and(f64::is_nan));
        assert_eq!(scenario.outage_at(59.9), None);
        assert_eq!(
            scenario.outage_at(65.0),
            Some(OutageAnswer::GatewayTargetFailedToRespond)
        );
        assert_eq!(
            scenario.outage_at(80.5),
            Some(OutageAnswer::ServerDeviceBusy)
        );
        assert_eq!(scenario.outage_at(81.0), None);

        let errors = refused(parse(&format!(
            "{temp}{}",
            r#"
            [[signal.fault]]
            kind = "spike"
            at = "10s"
            duration = "0s"
            value = inf
            [[signal.fault]]
            kind = "drift"
            at = "1s"
            per_second = nan
            [[signal.fault]]
            kind = "dropout"
            at = "1s"
            duration = "0s"
            [[outage]]
            at = "1s"
            duration = "0s"
            "#
        )));
        assert_eq!(
            paths(&errors),
            [
                "outage[0].duration",
                "signal[0].fault[0].duration",
                "signal[0].fault[0].value",
                "signal[0].fault[1].per_second",
                "signal[0].fault[2].duration",
            ],
            "{errors}"
        );
        let unknown = refused(parse(
            "[[signal]]\nname = \"t\"\naddress = 0\nkind.constant = { value = 1.0 }\n\
             [[signal.fault]]\nkind = \"melt\"\nat = \"1s\"\n",
        ));
        assert!(unknown.to_string().contains("melt"), "{unknown}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let errors = refused(parse(
            r#"
            sed = 1
            [[signal]]
            name = "a"
            address = 0
            kind.sine = { base = 1, amplitude = 1, period = "0s", phase = 3 }
            [[signal]]
            name = "a"
            address = 1
            kind.constant = { value = nan }
            noise = -1
            [[signal]]
            name = "c"
            address = 1000
            kind.ramp = { start = 0, slope_per_s = 1 }
            breach = { after = "1s", value = inf, ramp = "2s" }
            "#,
        ));
        assert_eq!(
            paths(&errors),
            [
                "sed",
                // Unknown keys are found by serde_ignored, whose paths leave out enum variants.
                "signal[0].kind.phase",
                "signal[0].kind.sine.period",
                "signal[1].address",
                "signal[1].kind.constant.value",
                "signal[1].name",
                "signal[1].noise",
                "signal[2].address",
                "signal[2].breach.value",
            ],
            "{errors}"
        );
        let text = errors.to_string();
        assert!(text.starts_with("t.toml has 9 errors:"), "{text}");
        assert!(
            text.contains("overlap registers 0..=1 of signal[0]"),
            "{text}"
        );
    }

    #[test]
    fn type_errors_and_unknown_kinds_name_their_key() {
        let table = [
            (
                "address = -1\nkind.constant = { value = 1 }",
                "signal[0].address",
            ),
            (
                "address = 0\nkind.sine = { base = 'x', amplitude = 1, period = '1s' }",
                "signal[0].kind.sine.base",
            ),
            ("address = 0\nkind.square = { value = 1 }", "signal[0].kind"),
            ("address = 0", "signal[0]"),
        ];
        for (rest, path) in table {
            let errors = refused(parse(&format!("[[signal]]\nname = 'a'\n{rest}")));
            assert_eq!(paths(&errors), [path], "{errors}");
        }
        let errors = refused(parse("[[signal]]\nname = 'a b'\naddress = 0"));
        assert_eq!(paths(&errors), ["signal[0].name"], "{errors}");
    }

    #[test]
    fn an_empty_scenario_is_refused() {
        let errors = refused(parse("seed = 1"));
        assert_eq!(paths(&errors), ["signal"], "{errors}");
        refused(Scenario::new(1, Vec::new()));
    }

    #[test]
    fn overlaps_are_found_whatever_the_order() {
        let mut signals = Scenario::demo().signals().to_vec();
        signals[3].address = 3;
        let errors = refused(Scenario::new(1, signals));
        assert_eq!(
            paths(&errors),
            ["signal[3].address", "signal[3].address"],
            "{errors}"
        );
    }

    #[test]
    fn a_missing_file_says_which() {
        let result = Scenario::from_file(Path::new("does/not/exist.toml"));
        let Err(err @ ScenarioError::Read { .. }) = result else {
            panic!("expected a read error, got {result:?}");
        };
        assert!(err.to_string().contains("does/not/exist.toml"), "{err}");
    }

    #[test]
    fn reads_fill_unused_registers_with_zero_and_split_signals() {
        let demo = Scenario::demo();
        let words = read(&demo, 30.0, 0, 10);
        assert_eq!(words.len(), 10);
        assert_eq!(&words[8..], [0, 0]);
        // cycle_count has no noise: 0.5 per second for 30 s.
        assert_eq!(registers::decode_f32([words[6], words[7]]), 15.0);
        // Bearing breached at 20 s and reached 92 after 5 s more; noise is ±0.5.
        let bearing = registers::decode_f32([words[0], words[1]]);
        assert!((bearing - 92.0).abs() <= 0.5, "{bearing}");
        assert_eq!(read(&demo, 30.0, 7, 2), [words[7], 0]);
        assert_eq!(read(&demo, 30.0, 5, 1), [words[5]]);
        assert_eq!(read(&demo, 30.0, 500, 125), vec![0; 125]);
    }

    #[test]
    fn reads_outside_the_map_are_refused() {
        let demo = Scenario::demo();
        assert_eq!(
            demo.read_registers(0.0, 0, 0),
            Err(ReadError::BadCount { count: 0 })
        );
        assert_eq!(
            demo.read_registers(0.0, 990, 20),
            Err(ReadError::OutOfRange {
                start: 990,
                count: 20
            })
        );
    }

    #[test]
    fn each_signal_has_its_own_noise() {
        let flat = |name: &str, address| Signal {
            name: TagName::parse(name).expect("the test's names are valid"),
            address,
            kind: SignalKind::Constant { value: 0.0 },
            noise: 1.0,
            breach: None,
            faults: Vec::new(),
        };
        let s = accepted(Scenario::new(9, vec![flat("a", 0), flat("b", 2)]));
        let series = |name| -> Vec<Option<f64>> {
            (0..20).map(|t| s.value_of(name, f64::from(t))).collect()
        };
        assert_ne!(series("a"), series("b"));
        assert!(series("a").iter().all(Option::is_some));
    }
}
