//! CPU pool config files (`xl cpupool-create`): `name`, `sched`, `cpus` and `nodes`, in
//! xl.cfg's syntax, with xl's `KEY=VALUE` arguments after the file.

use crate::error::{ConfigError, ConfigErrorKind};
use crate::number::parse_c_long;
use crate::syntax::{Settings, Spanned, Value};

/// A pool's CPUs as the file gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolCpus {
    /// `cpus = ["1", "3"]`: CPU numbers.
    List(Vec<u32>),
    /// `cpus = "1-3,^2"`: a CPU range as `vcpu-pin` reads it (resolved against the host).
    Range(String),
}

/// What a cpupool config file asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolConfig {
    /// `name` (xl falls back to the file's base name).
    pub name: Option<String>,
    /// `sched`: the scheduler's name.
    pub sched: Option<String>,
    /// `cpus`.
    pub cpus: Option<PoolCpus>,
    /// `nodes`: NUMA node numbers, whose free CPUs the pool takes (xl reads it before `cpus`).
    pub nodes: Option<Vec<u32>>,
    /// Keys xl does not read in a pool file (it ignores them too), in order.
    pub ignored: Vec<String>,
}

const KEYS: &[&str] = &["name", "sched", "cpus", "nodes"];

fn err(files: &[String], v: &Spanned, kind: ConfigErrorKind) -> ConfigError {
    ConfigError {
        file: files.get(v.pos.src).cloned().unwrap_or_default(),
        line: v.pos.line,
        column: v.pos.col,
        kind,
    }
}

fn single(
    files: &[String],
    s: &Settings,
    key: &str,
    expected: &'static str,
) -> Result<Option<String>, ConfigError> {
    let Some(set) = s.get(key) else {
        return Ok(None);
    };
    match &set.value.value {
        Value::Atom { text, .. } => Ok(Some(text.clone())),
        Value::List(_) => Err(err(
            files,
            &set.value,
            ConfigErrorKind::ExpectedSingleValue {
                key: key.into(),
                expected,
            },
        )),
    }
}

fn numbers(files: &[String], key: &str, items: &[Spanned]) -> Result<Vec<u32>, ConfigError> {
    items
        .iter()
        .map(|it| {
            let bad = |found: String| {
                err(
                    files,
                    it,
                    ConfigErrorKind::NotANumber {
                        key: key.into(),
                        expected: "a number",
                        found,
                    },
                )
            };
            match &it.value {
                Value::Atom { text, .. } => parse_c_long(text)
                    .ok()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(format!("\"{}\"", text.escape_debug()))),
                Value::List(_) => Err(bad("a list".into())),
            }
        })
        .collect()
}

/// Reads a cpupool config file's text and xl's `KEY=VALUE` arguments (`file` names the file in
/// messages).
///
/// ```
/// let p = xlcfg::parse_pool("name = \"p1\"\ncpus = [\"1\", \"3\"]\n", "p1.cfg", &["sched=\"credit\"".into()]).unwrap();
/// assert_eq!(p.name.as_deref(), Some("p1"));
/// assert_eq!(p.cpus, Some(xlcfg::PoolCpus::List(vec![1, 3])));
/// assert_eq!(p.sched.as_deref(), Some("credit"));
/// ```
pub fn parse_pool(text: &str, file: &str, overrides: &[String]) -> Result<PoolConfig, ConfigError> {
    let (s, files) = crate::read_settings(text, file, overrides)?;
    let name = single(&files, &s, "name", "the pool's name")?;
    let sched = single(&files, &s, "sched", "a scheduler name")?;
    let nodes = match s.get("nodes") {
        None => None,
        Some(set) => match &set.value.value {
            Value::List(items) => Some(numbers(&files, "nodes", items)?),
            Value::Atom { .. } => Some(numbers(&files, "nodes", std::slice::from_ref(&set.value))?),
        },
    };
    let cpus = match s.get("cpus") {
        None => None,
        Some(set) => match &set.value.value {
            Value::List(items) => Some(PoolCpus::List(numbers(&files, "cpus", items)?)),
            Value::Atom { text, .. } => Some(PoolCpus::Range(text.clone())),
        },
    };
    let ignored = s
        .list
        .iter()
        .filter(|set| !KEYS.contains(&set.key.as_str()))
        .map(|set| set.key.clone())
        .collect();
    Ok(PoolConfig {
        name,
        sched,
        cpus,
        nodes,
        ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_files_read_as_xl_reads_them() {
        let p = parse_pool("name='p'\ncpus=\"1-3\"\nnodes=[0]\nfoo=1\n", "p.cfg", &[]).unwrap();
        assert_eq!(p.cpus, Some(PoolCpus::Range("1-3".into())));
        assert_eq!(p.nodes, Some(vec![0]));
        assert_eq!(p.ignored, vec!["foo".to_string()]);
        let none = parse_pool("", "x.cfg", &["name=\"q\"".into()]).unwrap();
        assert_eq!(none.name.as_deref(), Some("q"));
        assert_eq!(none.cpus, None);
        let bad = parse_pool("cpus=[\"one\"]\n", "b.cfg", &[]).unwrap_err();
        assert_eq!((bad.line, bad.column), (1, 7));
        assert!(parse_pool("name=[\"a\"]\n", "b.cfg", &[]).is_err());
    }
}
