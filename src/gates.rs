//! Eval gates: `.lode/gates.toml`, the built-in checks, the requirement
//! expressions, and running a gate on one file.
//!
//! ```toml
//! [[gate]]
//! name = "no-nans"
//! paths = ["models/**/*.safetensors"]
//! check = "nan"                       # built-in: "nan", "format", "size"
//!
//! [[gate]]
//! name = "accuracy"
//! paths = ["models/**/*.safetensors"]
//! run = "python3 eval.py {path} {metrics}"
//! require = ["accuracy >= 0.9", "loss <= baseline.loss * 1.02"]
//! timeout = "20m"
//! ```
//!
//! A gate yields metrics (a JSON object of numbers); it passes when every
//! requirement holds. Built-ins have fixed requirements: `nan` passes when
//! no float tensor holds a NaN or an infinity, `format` when the file is not
//! pickle-based (unless `allow_pickle = true`), `size` when the file is at
//! most `max_bytes`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub const FILE: &str = ".lode/gates.toml";

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{FILE}: {0}")]
    Config(String),
    #[error("{0}")]
    Run(String),
}

pub type Result<T, E = GateError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub name: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub check: Option<String>,
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub require: Vec<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    /// `size`: the budget in bytes.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// `format`: accept pickle-based weights.
    #[serde(default)]
    pub allow_pickle: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatesFile {
    #[serde(default)]
    gate: Vec<Gate>,
}

/// The gates of a repository, checked and compiled.
#[derive(Debug)]
pub struct Gates {
    pub gates: Vec<Gate>,
    matchers: Vec<globset::GlobSet>,
    requires: Vec<Vec<Requirement>>,
    /// BLAKE3 of the gates file, recorded with every result.
    pub digest: String,
}

/// `metric OP number`, or `metric OP baseline.metric [* | + | - number]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub text: String,
    pub metric: String,
    pub op: Op,
    pub rhs: Rhs,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Ge,
    Le,
    Gt,
    Lt,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    Number(f64),
    Baseline {
        metric: String,
        scale: char,
        by: f64,
    },
}

/// One requirement's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checked {
    pub require: String,
    pub metric: String,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub ok: bool,
    /// Why it passed without a comparison, or why it failed without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One gate run on one file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub gate: String,
    /// BLAKE3 of this gate's settings: a result is reused only for the same.
    pub gate_digest: String,
    pub path: String,
    pub file_id: String,
    pub passed: bool,
    pub metrics: BTreeMap<String, f64>,
    pub checks: Vec<Checked>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || c == '/')
        && !s.starts_with("baseline.")
}

impl Requirement {
    pub fn parse(text: &str) -> std::result::Result<Requirement, String> {
        let ops = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        let (at, sym, op) = ops
            .iter()
            .filter_map(|(sym, op)| text.find(sym).map(|at| (at, *sym, *op)))
            .min_by_key(|(at, sym, _)| (*at, usize::MAX - sym.len()))
            .ok_or_else(|| format!("{text:?}: no comparison (>=, <=, >, <, ==, !=)"))?;
        let metric = text[..at].trim().to_string();
        let rest = text[at + sym.len()..].trim();
        if !is_ident(&metric) {
            return Err(format!("{text:?}: {metric:?} is not a metric name"));
        }
        let rhs = if let Some(v) = parse_number(rest) {
            Rhs::Number(v)
        } else if let Some(b) = rest.strip_prefix("baseline.") {
            let (name, scale, by) = match b.find(['*', '+', '-']) {
                Some(i) => {
                    let by = parse_number(&b[i + 1..]).ok_or_else(|| {
                        format!("{text:?}: {:?} is not a number", b[i + 1..].trim())
                    })?;
                    (b[..i].trim(), b[i..].chars().next().expect("operator"), by)
                }
                None => (b.trim(), '*', 1.0),
            };
            if !is_ident(name) {
                return Err(format!("{text:?}: {name:?} is not a metric name"));
            }
            Rhs::Baseline {
                metric: name.to_string(),
                scale,
                by,
            }
        } else {
            return Err(format!(
                "{text:?}: the right side must be a number or baseline.<metric> [* | + | - number]"
            ));
        };
        Ok(Requirement {
            text: text.to_string(),
            metric,
            op,
            rhs,
        })
    }

    /// Check against `metrics`, with `baseline` (the same path's metrics at
    /// the remote's version) when there is one.
    pub fn check(
        &self,
        metrics: &BTreeMap<String, f64>,
        baseline: Option<&BTreeMap<String, f64>>,
    ) -> Checked {
        let value = metrics.get(&self.metric).copied();
        let mut out = Checked {
            require: self.text.clone(),
            metric: self.metric.clone(),
            value,
            threshold: None,
            ok: false,
            note: None,
        };
        let threshold = match &self.rhs {
            Rhs::Number(v) => Some(*v),
            Rhs::Baseline { metric, scale, by } => match baseline.and_then(|b| b.get(metric)) {
                Some(&b) => Some(match scale {
                    '+' => b + by,
                    '-' => b - by,
                    _ => b * by,
                }),
                None => {
                    // The first version of a model has nothing to compare with.
                    out.ok = value.is_some();
                    out.note = Some("no baseline: passes on an absolute basis only".into());
                    if value.is_none() {
                        out.note = Some(format!("the run did not report {:?}", self.metric));
                    }
                    return out;
                }
            },
        };
        out.threshold = threshold;
        let (Some(v), Some(t)) = (value, threshold) else {
            out.note = Some(format!("the run did not report {:?}", self.metric));
            return out;
        };
        out.ok = match self.op {
            Op::Ge => v >= t,
            Op::Le => v <= t,
            Op::Gt => v > t,
            Op::Lt => v < t,
            Op::Eq => v == t,
            Op::Ne => v != t,
        };
        out
    }
}

/// `20m`, `90s`, `2h`, or a number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .map(|n| Duration::from_secs(n * mult))
}

impl Gates {
    /// Parse and check a gates file. Errors name the line (TOML errors) or
    /// the gate.
    pub fn parse(text: &str) -> Result<Gates> {
        let file: GatesFile = toml::from_str(text).map_err(|e| GateError::Config(e.to_string()))?;
        let bad = |g: &Gate, what: String| GateError::Config(format!("gate {:?}: {what}", g.name));
        let mut names = HashSet::new();
        let mut matchers = Vec::new();
        let mut requires = Vec::new();
        for g in &file.gate {
            if g.name.trim().is_empty() {
                return Err(GateError::Config("a gate has an empty name".into()));
            }
            if !names.insert(g.name.clone()) {
                return Err(bad(
                    g,
                    "the name is used twice; names must be unique".into(),
                ));
            }
            if g.paths.is_empty() {
                return Err(bad(g, "`paths` is empty".into()));
            }
            let mut set = globset::GlobSetBuilder::new();
            for p in &g.paths {
                let glob = globset::GlobBuilder::new(p.trim_start_matches('/'))
                    .literal_separator(true)
                    .build()
                    .map_err(|e| bad(g, format!("path pattern {p:?}: {e}")))?;
                set.add(glob);
            }
            matchers.push(set.build().map_err(|e| bad(g, e.to_string()))?);
            match (&g.check, &g.run) {
                (Some(c), None) => {
                    if !["nan", "format", "size"].contains(&c.as_str()) {
                        return Err(bad(
                            g,
                            format!("unknown check {c:?} (built-ins: nan, format, size)"),
                        ));
                    }
                    if c == "size" && g.max_bytes.is_none() {
                        return Err(bad(g, "check \"size\" needs `max_bytes`".into()));
                    }
                }
                (None, Some(run)) => {
                    if !run.contains("{path}") {
                        return Err(bad(g, "`run` must name the file as {path}".into()));
                    }
                    if g.require.is_empty() {
                        return Err(bad(g, "`run` needs at least one `require`".into()));
                    }
                }
                _ => {
                    return Err(bad(
                        g,
                        "give exactly one of `check` (built-in) or `run` (a command)".into(),
                    ));
                }
            }
            if let Some(t) = &g.timeout
                && parse_duration(t).is_none()
            {
                return Err(bad(
                    g,
                    format!("timeout {t:?} is not a duration (examples: 90s, 20m, 2h)"),
                ));
            }
            let reqs = g
                .require
                .iter()
                .map(|r| Requirement::parse(r).map_err(|e| bad(g, e)))
                .collect::<Result<Vec<_>>>()?;
            requires.push(reqs);
        }
        Ok(Gates {
            gates: file.gate,
            matchers,
            requires,
            digest: blake3::hash(text.as_bytes()).to_hex().to_string(),
        })
    }

    /// The gates file of a working tree, if it has one.
    pub fn load(workdir: &Path) -> Result<Option<Gates>> {
        match std::fs::read_to_string(workdir.join(FILE)) {
            Ok(text) => Gates::parse(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(GateError::Config(e.to_string())),
        }
    }

    /// Indexes of the gates that apply to `path`.
    pub fn for_path(&self, path: &str) -> Vec<usize> {
        (0..self.gates.len())
            .filter(|&i| self.matchers[i].is_match(path))
            .collect()
    }

    /// BLAKE3 of gate `i`'s settings (results are reused only for the same).
    pub fn gate_digest(&self, i: usize) -> String {
        let json = serde_json::to_vec(&self.gates[i]).expect("gate serializes");
        blake3::hash(&json).to_hex().to_string()
    }

    pub fn requirements(&self, i: usize) -> &[Requirement] {
        &self.requires[i]
    }
}

/// Scan a safetensors file's float tensors for NaN and infinity, in
/// parallel over the mapped file. Returns (nan, inf, values scanned).
pub fn scan_nan(bytes: &[u8]) -> std::result::Result<(u64, u64, u64), String> {
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a safetensors file: {e}"))?;
    let base = 8 + header_len;
    let mut counts = (0u64, 0u64, 0u64);
    for (_, info) in meta.tensors() {
        let (start, end) = info.data_offsets;
        let data = bytes
            .get(base + start..base + end)
            .ok_or("a tensor lies outside the file")?;
        use safetensors::Dtype;
        let c = match info.dtype {
            Dtype::F16 => scan_words::<2>(data, |w| {
                let v = u16::from_le_bytes(w) as u64;
                classify(v, 0x7C00, 0x03FF)
            }),
            Dtype::BF16 => scan_words::<2>(data, |w| {
                let v = u16::from_le_bytes(w) as u64;
                classify(v, 0x7F80, 0x007F)
            }),
            Dtype::F32 => scan_words::<4>(data, |w| {
                let v = u32::from_le_bytes(w) as u64;
                classify(v, 0x7F80_0000, 0x007F_FFFF)
            }),
            Dtype::F64 => scan_words::<8>(data, |w| {
                let v = u64::from_le_bytes(w);
                classify(v, 0x7FF0_0000_0000_0000, 0x000F_FFFF_FFFF_FFFF)
            }),
            _ => (0, 0, 0),
        };
        counts = (counts.0 + c.0, counts.1 + c.1, counts.2 + c.2);
    }
    Ok(counts)
}

/// 0: finite, 1: NaN, 2: infinity, for an IEEE value with these masks.
#[inline]
fn classify(v: u64, exp: u64, frac: u64) -> u8 {
    if v & exp != exp {
        0
    } else if v & frac != 0 {
        1
    } else {
        2
    }
}

fn scan_words<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> u8 + Sync) -> (u64, u64, u64) {
    data.par_chunks(1 << 20)
        .map(|piece| {
            let (mut nan, mut inf) = (0u64, 0u64);
            for w in piece.chunks_exact(N) {
                match f(w.try_into().expect("N bytes")) {
                    0 => {}
                    1 => nan += 1,
                    _ => inf += 1,
                }
            }
            (nan, inf, (piece.len() / N) as u64)
        })
        .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

/// Whether a file holds pickle-based weights (PyTorch `.bin`/`.pt`, which
/// run code when loaded): a pickle stream, or a zip archive with a
/// `data.pkl`, or a pickle file extension.
pub fn is_pickle(path: &str, head: &[u8]) -> bool {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    if ["pkl", "pickle", "pt", "pth", "ckpt"].contains(&ext.as_str()) {
        return true;
    }
    let pickle_stream = head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]);
    let zip_with_pickle =
        head.starts_with(b"PK\x03\x04") && head.windows(8).any(|w| w == b"data.pkl");
    pickle_stream || zip_with_pickle
}

/// Run built-in check `check` of gate `g` on the file at `file`.
pub fn builtin(
    g: &Gate,
    path: &str,
    file: &Path,
) -> std::result::Result<BTreeMap<String, f64>, String> {
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut m = BTreeMap::new();
    match g.check.as_deref() {
        Some("size") => {
            m.insert("bytes".into(), len as f64);
        }
        Some("format") => {
            let mut head = vec![0u8; 4096.min(len as usize)];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0)
                .map_err(|e| e.to_string())?;
            m.insert(
                "pickle".into(),
                if is_pickle(path, &head) { 1.0 } else { 0.0 },
            );
        }
        Some("nan") => {
            if !path.ends_with(".safetensors") {
                return Err(format!(
                    "{path}: the nan check reads safetensors files only"
                ));
            }
            let map = crate::store::map_readonly(&f, len).map_err(|e| e.to_string())?;
            let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
            let (nan, inf, n) = scan_nan(bytes)?;
            m.insert("nan".into(), nan as f64);
            m.insert("inf".into(), inf as f64);
            m.insert("values".into(), n as f64);
        }
        other => return Err(format!("unknown check {other:?}")),
    }
    Ok(m)
}

/// The fixed requirements of a built-in check.
pub fn builtin_requirements(g: &Gate) -> Vec<Requirement> {
    let texts: Vec<String> = match g.check.as_deref() {
        Some("nan") => vec!["nan == 0".into(), "inf == 0".into()],
        Some("format") if g.allow_pickle => vec![],
        Some("format") => vec!["pickle == 0".into()],
        Some("size") => vec![format!("bytes <= {}", g.max_bytes.unwrap_or(0))],
        _ => vec![],
    };
    texts
        .iter()
        .map(|t| Requirement::parse(t).expect("built-in requirements parse"))
        .collect()
}

/// Run a gate's command with `{path}` and `{metrics}` filled in, under its
/// timeout (the whole process group is killed when it runs over); returns
/// the metrics it wrote. Its output goes to stderr.
pub fn run_command(
    g: &Gate,
    file: &Path,
    workdir: &Path,
) -> std::result::Result<BTreeMap<String, f64>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let metrics_path = dir.path().join("metrics.json");
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    let cmd = g
        .run
        .as_deref()
        .unwrap_or_default()
        .replace("{path}", &quote(file))
        .replace("{metrics}", &quote(&metrics_path));
    let timeout = g
        .timeout
        .as_deref()
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(3600));
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .current_dir(workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting `{cmd}`: {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if started.elapsed() > timeout {
            // The whole group: a shell's children too.
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid"),
                rustix::process::Signal::KILL,
            );
            let _ = child.wait();
            return Err(format!(
                "timed out after {} (timeout {:?}); the gate fails closed",
                humantime(started.elapsed()),
                g.timeout.as_deref().unwrap_or("1h")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        return Err(format!(
            "`{}` failed ({status}); the gate fails closed",
            g.run.as_deref().unwrap_or_default()
        ));
    }
    let text = std::fs::read_to_string(&metrics_path).map_err(|_| {
        "the command wrote no metrics file ({metrics}); the gate fails closed".to_string()
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("the metrics file is not JSON ({e}); the gate fails closed"))?;
    let obj = value
        .as_object()
        .ok_or("the metrics file is not a JSON object; the gate fails closed")?;
    let mut m = BTreeMap::new();
    for (k, v) in obj {
        let v = v
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("metric {k:?} is not a finite number; the gate fails closed"))?;
        m.insert(k.clone(), v);
    }
    Ok(m)
}

fn humantime(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_parse_and_check() {
        let r = Requirement::parse("loss <= baseline.loss * 1.02").unwrap();
        let m = BTreeMap::from([("loss".to_string(), 1.0)]);
        let base = BTreeMap::from([("loss".to_string(), 0.99)]);
        assert!(r.check(&m, Some(&base)).ok);
        let base = BTreeMap::from([("loss".to_string(), 0.9)]);
        let c = r.check(&m, Some(&base));
        assert!(!c.ok && (c.threshold.unwrap() - 0.918).abs() < 1e-9);
        assert!(r.check(&m, None).ok, "no baseline: absolute only");
        let acc = Requirement::parse("accuracy >= 0.9").unwrap();
        assert!(
            !acc.check(&BTreeMap::from([("accuracy".into(), 0.8)]), None)
                .ok
        );
        assert!(
            !acc.check(&BTreeMap::new(), None).ok,
            "a missing metric fails"
        );
        assert!(Requirement::parse("accuracy").is_err());
        assert!(Requirement::parse("accuracy >= lots").is_err());
        assert_eq!(Requirement::parse("a>=1").unwrap().op, Op::Ge);
    }

    #[test]
    fn a_malformed_gates_file_names_the_line_or_the_gate() {
        let err = Gates::parse("[[gate]]\nname = \"x\"\npaths = [\"*.st\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line"), "{err}");
        let err = Gates::parse("[[gate]]\nname = \"x\"\npaths = [\"a\"]\ncheck = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gate \"x\"") && err.contains("unknown check"),
            "{err}"
        );
        let two = "[[gate]]\nname = \"x\"\npaths = [\"a\"]\ncheck = \"nan\"\n";
        let err = Gates::parse(&format!("{two}{two}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
        let g = Gates::parse(
            "[[gate]]\nname = \"n\"\npaths = [\"models/**/*.safetensors\"]\ncheck = \"nan\"\n",
        )
        .unwrap();
        assert_eq!(g.for_path("models/a/b/m.safetensors"), vec![0]);
        assert_eq!(g.for_path("models/m.safetensors"), vec![0]);
        assert!(g.for_path("other/m.safetensors").is_empty());
    }

    #[test]
    fn nan_and_inf_are_found_in_each_float_type() {
        use safetensors::{Dtype, tensor::TensorView};
        let f16 = [0x3C00u16, 0x7E00, 0x7C00, 0x0001]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let bf16 = [0x3F80u16, 0x7FC0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let f32s = [1.0f32, f32::INFINITY, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let f64s = [1.0f64, f64::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let ints = [0xFFu8; 8].to_vec();
        let views = vec![
            ("a", TensorView::new(Dtype::F16, vec![4], &f16).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![2], &bf16).unwrap()),
            ("c", TensorView::new(Dtype::F32, vec![3], &f32s).unwrap()),
            ("d", TensorView::new(Dtype::F64, vec![2], &f64s).unwrap()),
            ("e", TensorView::new(Dtype::U8, vec![8], &ints).unwrap()),
        ];
        let bytes = safetensors::serialize(views, None).unwrap();
        assert_eq!(scan_nan(&bytes).unwrap(), (3, 3, 11));
        assert!(scan_nan(b"not a model").is_err());
    }

    #[test]
    fn pickles_are_recognized() {
        assert!(is_pickle("m.bin", &[0x80, 0x04, 0x95]));
        assert!(is_pickle("m.pt", b"anything"));
        assert!(is_pickle("m.bin", b"PK\x03\x04....archive/data.pkl...."));
        assert!(!is_pickle(
            "m.safetensors",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{}"
        ));
    }
}
