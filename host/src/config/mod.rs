//! The node's configuration, layered as a Fabric operator expects: the
//! built-in defaults, then `orderer.yaml` (Fabric's file, read unchanged,
//! plus a `ConsenterHost:` section of our own), then `ORDERER_*`
//! environment variables (named from the key as Fabric's viper names
//! them: `General.ListenPort` is `ORDERER_GENERAL_LISTENPORT`), then
//! command-line flags. Each value remembers where it came from
//! ([`Source`]), which `consenter-host config show` prints.
//!
//! Keys are matched without regard to case, as viper does. Fabric's keys
//! the node does not use ([`schema::IGNORED`]) are collected to be listed
//! once as ignored; other unknown keys are collected to be warned about
//! by name; a value of the wrong type is an error naming the key and the
//! value. Relative paths in the file, and in variables when a file is in
//! use, are relative to the file's directory, as Fabric resolves them.
//! Reads the one file it is given; the typed view is [`settings`].

pub mod schema;
pub mod settings;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use schema::{Kind, SETTINGS, Spec};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The node's built-in default.
    Default,
    /// The configuration file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its name, e.g. `--listen`).
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// A setting's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// Not set (an empty value in the file counts as not set).
    Unset,
    /// Text or a path.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// A number (a byte size in bytes).
    Num(u64),
    /// A duration.
    Dur(Duration),
    /// A list.
    List(Vec<String>),
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Unset => f.write_str("(unset)"),
            Val::Str(s) if s.is_empty() => f.write_str("\"\""),
            Val::Str(s) => f.write_str(s),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Num(n) => write!(f, "{n}"),
            Val::Dur(d) => f.write_str(&go_duration(*d)),
            Val::List(l) => write!(f, "[{}]", l.join(", ")),
        }
    }
}

/// A duration as Go prints it (`1h0m0s`, `1m30s`, `2s`, `100ms`, `0s`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_frac(ns as f64 / 1e3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_frac(ns as f64 / 1e6));
    }
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let s = if frac == 0 {
        format!("{}s", secs % 60)
    } else {
        format!("{}s", trim_frac((secs % 60) as f64 + f64::from(frac) / 1e9))
    };
    match (secs / 3600, secs / 60 % 60) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

fn trim_frac(v: f64) -> String {
    let t = format!("{v:.9}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One setting's value and where it came from.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The value.
    pub value: Val,
    /// Its source.
    pub source: Source,
}

/// What went wrong loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML, or not a mapping at the top.
    #[error("configuration file {path}: {reason}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A value of the wrong type.
    #[error("{key} = {value:?} ({from}): {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// Where it was written.
        from: Source,
        /// What the key takes.
        expected: String,
    },
    /// A key that has no setting (a flag naming a key that is not one).
    #[error("{0} is not a setting")]
    NoSuchKey(String),
}

/// The layered configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// One entry per setting, in [`SETTINGS`] order.
    entries: Vec<Entry>,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// Fabric keys present that the node does not use (as written, from
    /// the file, or the variable's name).
    pub ignored: Vec<String>,
    /// Keys (and `ORDERER_*` variables) that are no setting at all.
    pub unknown: Vec<String>,
}

impl Config {
    /// The built-in defaults.
    pub fn defaults() -> Config {
        let entries = SETTINGS
            .iter()
            .map(|s| {
                let value = match s.default {
                    // The table's defaults are checked by a test.
                    Some(text) => parse_text(s, text, None).unwrap_or(Val::Unset),
                    None => Val::Unset,
                };
                Entry { value, source: Source::Default }
            })
            .collect();
        Config { entries, file: None, ignored: vec![], unknown: vec![] }
    }

    /// Defaults, then `file` (if given), then the `ORDERER_*` variables of
    /// `env` (and `FABRIC_LOGGING_SPEC`, `FABRIC_LOGGING_FORMAT`).
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut c = Config::defaults();
        if let Some(path) = file {
            c.apply_file(path)?;
        }
        c.apply_env(env)?;
        Ok(c)
    }

    /// The file to read: `explicit` (`--config`), else
    /// `$FABRIC_CFG_PATH/orderer.yaml` if it exists.
    pub fn locate(explicit: Option<&Path>, fabric_cfg_path: Option<&str>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        let dir = fabric_cfg_path.filter(|d| !d.is_empty())?;
        let p = Path::new(dir).join("orderer.yaml");
        p.is_file().then_some(p)
    }

    fn index(key: &str) -> Option<usize> {
        SETTINGS.iter().position(|s| s.key.eq_ignore_ascii_case(key))
    }

    /// The entry of `key` (any case).
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        Self::index(key).map(|i| &self.entries[i])
    }

    /// Sets `key` from a source (a flag, typically).
    pub fn set(&mut self, key: &str, value: Val, source: Source) -> Result<(), ConfigError> {
        let i = Self::index(key).ok_or_else(|| ConfigError::NoSuchKey(key.to_string()))?;
        self.entries[i] = Entry { value, source };
        Ok(())
    }

    /// Sets `key` from text, parsed as its type (a flag's text, typically).
    pub fn set_text(&mut self, key: &str, text: &str, source: Source) -> Result<(), ConfigError> {
        let i = Self::index(key).ok_or_else(|| ConfigError::NoSuchKey(key.to_string()))?;
        let value = parse_text(&SETTINGS[i], text, None).map_err(|expected| ConfigError::WrongType {
            key: SETTINGS[i].key.to_string(),
            value: text.to_string(),
            from: source.clone(),
            expected,
        })?;
        self.entries[i] = Entry { value, source };
        Ok(())
    }

    /// Reads `path` over what is set.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let docs = YamlLoader::load_from_str(&text)
            .map_err(|e| ConfigError::Yaml { path: path.to_path_buf(), reason: e.to_string() })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        self.file = Some(path.to_path_buf());
        let source = Source::File(path.to_path_buf());
        match docs.into_iter().next() {
            None | Some(Yaml::Null) => {}
            Some(Yaml::Hash(h)) => self.walk("", &h, &dir, &source)?,
            Some(_) => {
                return Err(ConfigError::Yaml {
                    path: path.to_path_buf(),
                    reason: "the top of the file is not a mapping of sections (General:, FileLedger:, ...)".into(),
                });
            }
        }
        // Without its own say, a file means a real deployment: no
        // development channel.
        let dev = Self::index("ConsenterHost.DevChannel.Enabled").unwrap_or(0);
        if self.entries[dev].source == Source::Default {
            self.entries[dev] = Entry { value: Val::Bool(false), source };
        }
        Ok(())
    }

    fn walk(
        &mut self,
        prefix: &str,
        h: &yaml_rust2::yaml::Hash,
        dir: &Path,
        source: &Source,
    ) -> Result<(), ConfigError> {
        for (k, v) in h {
            let name = match k {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            let key = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
            if let Some(i) = Self::index(&key) {
                let spec = &SETTINGS[i];
                let value = parse_yaml(spec, v, Some(dir)).map_err(|expected| ConfigError::WrongType {
                    key: key.clone(),
                    value: yaml_text(v),
                    from: source.clone(),
                    expected,
                })?;
                self.entries[i] = Entry { value, source: source.clone() };
            } else if schema::ignored(&key) {
                self.ignored.push(key);
            } else if schema::is_section(&key) {
                match v {
                    Yaml::Hash(inner) => self.walk(&key, inner, dir, source)?,
                    Yaml::Null => {}
                    other => {
                        return Err(ConfigError::WrongType {
                            key: key.clone(),
                            value: yaml_text(other),
                            from: source.clone(),
                            expected: "a section (a mapping of keys)".into(),
                        });
                    }
                }
            } else {
                self.unknown.push(key);
            }
        }
        Ok(())
    }

    /// Applies the `ORDERER_*` variables of `env` over what is set, and
    /// Fabric's `FABRIC_LOGGING_SPEC` and `FABRIC_LOGGING_FORMAT`.
    pub fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        let dir = self
            .file
            .as_ref()
            .and_then(|f| f.parent())
            .map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() });
        let mut vars: Vec<(String, String)> = env.into_iter().collect();
        vars.sort();
        for (name, text) in vars {
            let key = match name.as_str() {
                "FABRIC_LOGGING_SPEC" => Some("ConsenterHost.Logging.Spec"),
                "FABRIC_LOGGING_FORMAT" => Some("ConsenterHost.Logging.Format"),
                n if n.starts_with("ORDERER_") => SETTINGS.iter().find(|s| schema::env_name(s.key) == n).map(|s| s.key),
                _ => continue,
            };
            let Some(key) = key else {
                let ignored = schema::IGNORED.iter().any(|p| {
                    let e = schema::env_name(p);
                    name == e || name.starts_with(&format!("{e}_"))
                });
                if ignored {
                    self.ignored.push(name)
                } else {
                    self.unknown.push(name)
                }
                continue;
            };
            let Some(i) = Self::index(key) else { continue };
            let source = Source::Env(name.clone());
            let value = parse_text(&SETTINGS[i], &text, dir.as_deref()).map_err(|expected| ConfigError::WrongType {
                key: key.to_string(),
                value: text.clone(),
                from: source.clone(),
                expected,
            })?;
            self.entries[i] = Entry { value, source };
        }
        Ok(())
    }

    fn value(&self, key: &str) -> &Val {
        debug_assert!(Self::index(key).is_some(), "no setting {key}");
        Self::index(key).map_or(&Val::Unset, |i| &self.entries[i].value)
    }

    /// A text setting (None if unset).
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.value(key) {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A path setting (None if unset).
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        self.str(key).map(PathBuf::from)
    }

    /// A boolean setting (false if unset).
    pub fn bool(&self, key: &str) -> bool {
        matches!(self.value(key), Val::Bool(true))
    }

    /// A numeric setting (None if unset).
    pub fn num(&self, key: &str) -> Option<u64> {
        match self.value(key) {
            Val::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// A duration setting (None if unset).
    pub fn duration(&self, key: &str) -> Option<Duration> {
        match self.value(key) {
            Val::Dur(d) => Some(*d),
            _ => None,
        }
    }

    /// A list setting (empty if unset).
    pub fn list(&self, key: &str) -> Vec<String> {
        match self.value(key) {
            Val::List(l) => l.clone(),
            _ => vec![],
        }
    }

    /// Whether `key` was set by anything but the defaults.
    pub fn is_set(&self, key: &str) -> bool {
        self.entry(key).is_some_and(|e| e.source != Source::Default)
    }

    /// Every setting: key, value and source, aligned, one per line (what
    /// `consenter-host config show` prints), then the ignored and unknown
    /// keys.
    pub fn show(&self) -> String {
        let rows: Vec<(String, String, String)> = SETTINGS
            .iter()
            .zip(&self.entries)
            .map(|(s, e)| (s.key.to_string(), e.value.to_string(), e.source.to_string()))
            .collect();
        let kw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let vw = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0).min(60);
        let mut out = String::new();
        match &self.file {
            Some(f) => out.push_str(&format!("# configuration file: {}\n", f.display())),
            None => out.push_str("# configuration file: none (built-in defaults)\n"),
        }
        for (k, v, s) in rows {
            let pad = vw.saturating_sub(v.chars().count());
            out.push_str(&format!("{k:kw$}  {v}{}  # {s}\n", " ".repeat(pad)));
        }
        if !self.ignored.is_empty() {
            out.push_str(&format!("# ignored (Fabric settings this node does not use): {}\n", self.ignored.join(", ")));
        }
        if !self.unknown.is_empty() {
            out.push_str(&format!("# unknown (no such setting): {}\n", self.unknown.join(", ")));
        }
        out
    }
}

fn yaml_text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => String::new(),
        Yaml::Array(a) => format!("[{}]", a.iter().map(yaml_text).collect::<Vec<_>>().join(", ")),
        Yaml::Hash(_) => "(a mapping)".into(),
        other => format!("{other:?}"),
    }
}

/// A value from the file.
fn parse_yaml(spec: &Spec, v: &Yaml, dir: Option<&Path>) -> Result<Val, String> {
    let list_kind = matches!(spec.kind, Kind::List | Kind::PathList | Kind::PluginList);
    match v {
        Yaml::Null => Ok(Val::Unset),
        Yaml::Hash(_) => Err(format!("expected {}, not a mapping", expected(spec.kind))),
        Yaml::Array(items) if list_kind => {
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                match it {
                    Yaml::String(_) | Yaml::Integer(_) | Yaml::Real(_) | Yaml::Boolean(_) => {
                        out.push(item(spec.kind, &yaml_text(it), dir)?)
                    }
                    Yaml::Null => {}
                    _ => return Err(format!("expected {}, with an item that is not text", expected(spec.kind))),
                }
            }
            Ok(Val::List(out))
        }
        Yaml::Array(_) => Err(format!("expected {}, not a list", expected(spec.kind))),
        Yaml::Boolean(b) if spec.kind == Kind::Bool => Ok(Val::Bool(*b)),
        Yaml::Boolean(_) if spec.kind != Kind::Str => Err(format!("expected {}", expected(spec.kind))),
        scalar => parse_text(spec, &yaml_text(scalar), dir),
    }
}

fn expected(kind: Kind) -> String {
    match kind {
        Kind::Str => "text".into(),
        Kind::Path => "a path".into(),
        Kind::Bool => "true or false".into(),
        Kind::Num(max) if max == u64::from(u16::MAX) => "a port number (0 to 65535)".into(),
        Kind::Num(max) => format!("a whole number from 0 to {max}"),
        Kind::Duration => "a duration such as 2s, 500ms or 1h30m".into(),
        Kind::List => "a list".into(),
        Kind::PathList => "a list of paths".into(),
        Kind::PluginList => "a list of TYPE=PATH".into(),
        Kind::Size => "a size such as 1 MB, 512 KB or a number of bytes".into(),
    }
}

/// A relative path made relative to `dir` (the config file's directory).
fn translate(p: &str, dir: Option<&Path>) -> String {
    match dir {
        Some(d) if !p.is_empty() && Path::new(p).is_relative() => d.join(p).to_string_lossy().into_owned(),
        _ => p.to_string(),
    }
}

fn item(kind: Kind, text: &str, dir: Option<&Path>) -> Result<String, String> {
    let text = text.trim();
    Ok(match kind {
        Kind::PathList => translate(text, dir),
        Kind::PluginList => {
            let Some((ty, path)) = text.split_once('=') else {
                return Err(format!("{text:?} is not TYPE=PATH"));
            };
            format!("{ty}={}", translate(path, dir))
        }
        _ => text.to_string(),
    })
}

/// A value from text (a variable, a flag, a default or a scalar of the
/// file); `dir` resolves relative paths.
fn parse_text(spec: &Spec, text: &str, dir: Option<&Path>) -> Result<Val, String> {
    let t = text.trim();
    if t.is_empty() && spec.kind != Kind::Str {
        return Ok(Val::Unset);
    }
    let bad = || format!("expected {}", expected(spec.kind));
    Ok(match spec.kind {
        Kind::Str => Val::Str(text.to_string()),
        Kind::Path => Val::Str(translate(t, dir)),
        Kind::Bool => Val::Bool(match t {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            _ => return Err(bad()),
        }),
        Kind::Num(max) => Val::Num(t.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(bad)?),
        Kind::Duration => {
            let ns = consenter_fabric::channel::parse_go_duration_nanos(t).map_err(|_| bad())?;
            Val::Dur(Duration::from_nanos(u64::try_from(ns).map_err(|_| bad())?))
        }
        Kind::Size => Val::Num(parse_size(t).ok_or_else(bad)?),
        Kind::List | Kind::PathList | Kind::PluginList => {
            let inner = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(t);
            let mut out = vec![];
            for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                out.push(item(spec.kind, part, dir)?);
            }
            Val::List(out)
        }
    })
}

/// Fabric's byte sizes: a number, optionally followed by B, KB, MB or GB
/// (powers of 1024).
fn parse_size(t: &str) -> Option<u64> {
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().ok()?;
    let unit = t[digits..].trim().to_ascii_uppercase();
    let mult: u64 = match unit.as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        for s in SETTINGS {
            if let Some(d) = s.default {
                assert!(parse_text(s, d, None).is_ok(), "default of {} ({d:?}) does not parse", s.key);
            }
            assert!(!schema::ignored(s.key), "{} is both a setting and ignored", s.key);
        }
        let c = Config::defaults();
        assert_eq!(c.str("General.ListenAddress"), Some("127.0.0.1"));
        assert_eq!(c.num("General.ListenPort"), Some(7050));
        assert_eq!(c.duration("ConsenterHost.RestartBackoffInitial"), Some(Duration::from_millis(100)));
        assert!(c.bool("ConsenterHost.DevChannel.Enabled"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(168 * 3600)), "168h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1 MB"), Some(1 << 20));
        assert_eq!(parse_size("512KB"), Some(512 << 10));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1 XB"), None);
    }

    #[test]
    fn fabric_sampleconfig_loads_unchanged() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric/sampleconfig/orderer.yaml");
        let c = Config::load(Some(&f), vec![]).unwrap();
        assert!(c.unknown.is_empty(), "unknown keys in Fabric's own file: {:?}", c.unknown);
        for k in ["General.Keepalive", "General.BCCSP", "Kafka", "Debug", "Consensus", "Metrics.Statsd"] {
            assert!(c.ignored.iter().any(|i| i == k), "{k} not listed as ignored: {:?}", c.ignored);
        }
        assert_eq!(c.num("General.ListenPort"), Some(7050));
        assert_eq!(c.str("Operations.ListenAddress"), Some("127.0.0.1:8443"));
        assert_eq!(c.str("Admin.ListenAddress"), Some("127.0.0.1:9443"));
        assert_eq!(c.str("Metrics.Provider"), Some("disabled"));
        assert!(!c.bool("ChannelParticipation.Enabled"));
        assert_eq!(c.path("FileLedger.Location"), Some(PathBuf::from("/var/hyperledger/production/orderer")));
        assert_eq!(c.path("General.LocalMSPDir"), Some(f.parent().unwrap().join("msp")));
        assert_eq!(c.str("General.BootstrapMethod"), Some("file"));
        let s = settings::Settings::from_config(&c).unwrap();
        assert_eq!(s.bootstrap_file, Some(f.parent().unwrap().join("genesisblock")));
        assert_eq!(s.local_msp.as_ref().unwrap().1, "SampleOrg");
        assert!(s.general_tls.is_none() && !s.metrics && !s.participation && s.dev_channel.is_none());
    }

    #[test]
    fn layers_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("orderer.yaml");
        std::fs::write(
            &f,
            "General:\n  listenport: 7150\n  LocalMSPDir: msp\n  Keepalive:\n    ServerTimeout: 20s\n  Bogus: 1\n\
             Kafka:\n  Verbose: true\nConsenterHost:\n  PluginMemoryMiB: 32\n",
        )
        .unwrap();
        let env = vec![
            ("ORDERER_GENERAL_LISTENADDRESS".to_string(), "0.0.0.0".to_string()),
            ("ORDERER_GENERAL_TLS_ROOTCAS".to_string(), "[a.pem, /b.pem]".to_string()),
            ("ORDERER_NOPE".to_string(), "x".to_string()),
            ("ORDERER_KAFKA_VERBOSE".to_string(), "true".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let c = Config::load(Some(&f), env).unwrap();
        assert_eq!(c.num("General.ListenPort"), Some(7150));
        assert_eq!(c.entry("General.ListenPort").unwrap().source, Source::File(f.clone()));
        assert_eq!(c.str("General.ListenAddress"), Some("0.0.0.0"));
        assert_eq!(
            c.entry("General.ListenAddress").unwrap().source,
            Source::Env("ORDERER_GENERAL_LISTENADDRESS".into())
        );
        assert_eq!(c.path("General.LocalMSPDir"), Some(dir.path().join("msp")));
        assert_eq!(
            c.list("General.TLS.RootCAs"),
            vec![dir.path().join("a.pem").to_string_lossy().into_owned(), "/b.pem".into()]
        );
        assert_eq!(c.num("ConsenterHost.PluginMemoryMiB"), Some(32));
        assert!(!c.bool("ConsenterHost.DevChannel.Enabled"), "a file turns the development channel off");
        assert_eq!(c.ignored, vec!["General.Keepalive", "Kafka", "ORDERER_KAFKA_VERBOSE"]);
        assert_eq!(c.unknown, vec!["General.Bogus", "ORDERER_NOPE"]);
        assert!(c.show().contains("General.ListenAddress"));

        std::fs::write(&f, "General:\n  ListenPort: seventy\n").unwrap();
        let e = Config::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.contains("General.ListenPort = \"seventy\"") && e.contains("a port number"), "{e}");
        let e = Config::load(None, vec![("ORDERER_GENERAL_TLS_ENABLED".into(), "maybe".into())]).unwrap_err();
        assert!(
            e.to_string().contains("ORDERER_GENERAL_TLS_ENABLED") && e.to_string().contains("true or false"),
            "{e}"
        );
        std::fs::write(&f, "General: 3\n").unwrap();
        assert!(Config::load(Some(&f), vec![]).unwrap_err().to_string().contains("a section"));
    }
}
