//! `rxl cpupool-*`: xl's `cpupool-list` table, and `cpupool-create`'s pool file read as xl
//! reads it (`name`, `sched`, `cpus`, `nodes`, then `KEY=VALUE` arguments).

use rxen_proto::api::{CpupoolCreated, CpupoolInfo};
use xlcfg::{PoolConfig, PoolCpus};

/// A pool file that cannot become a pool, in xl's words where xl has some.
#[derive(Debug, thiserror::Error)]
pub enum PoolFileError {
    /// Neither `name` nor a file to name the pool after.
    #[error("Missing cpupool name!")]
    MissingName,
    /// The file's syntax.
    #[error("Failed to parse config file: {0}")]
    Parse(Box<xlcfg::ConfigError>),
    /// `cpus` as a range that does not read.
    #[error("cpus \"{spec}\": {source}")]
    Cpus {
        /// The range.
        spec: String,
        /// Why.
        source: xlcfg::SpecError,
    },
    /// A `nodes` entry the host does not have.
    #[error("no free cpu found (node {0} does not exist)")]
    NoNode(u32),
}

/// What `cpupool-create` asks rxend for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRequest {
    /// The pool's name.
    pub name: String,
    /// Its scheduler (`None`: rxend's default).
    pub sched: Option<String>,
    /// Its CPUs.
    pub cpus: Vec<u32>,
    /// Keys xl does not read in a pool file.
    pub ignored: Vec<String>,
}

/// xl's name for a pool file without `name`: the file's base name (`libxl_basename`).
fn basename(file: &str) -> String {
    file.rsplit('/').next().unwrap_or(file).to_string()
}

/// Reads a pool file (`file`: its name, `None` for the command line alone) into a request;
/// `node_cpus` gives a NUMA node's CPUs, `host` the number of host CPUs.
pub fn pool_request(
    text: &str,
    file: Option<&str>,
    vars: &[String],
    host: u32,
    node_cpus: impl Fn(u32) -> Option<Vec<u32>>,
) -> Result<PoolRequest, PoolFileError> {
    let src = file.unwrap_or("command line");
    let cfg: PoolConfig =
        xlcfg::parse_pool(text, src, vars).map_err(|e| PoolFileError::Parse(Box::new(e)))?;
    let name = match (cfg.name, file) {
        (Some(n), _) => n,
        (None, Some(f)) => basename(f),
        (None, None) => return Err(PoolFileError::MissingName),
    };
    let cpus = if let Some(nodes) = cfg.nodes {
        let mut all = Vec::new();
        for n in nodes {
            all.extend(node_cpus(n).ok_or(PoolFileError::NoNode(n))?);
        }
        all.sort_unstable();
        all.dedup();
        all
    } else {
        match cfg.cpus {
            None => Vec::new(),
            Some(PoolCpus::List(l)) => l,
            Some(PoolCpus::Range(spec)) => xlcfg::parse_cpu_list(&spec, host)
                .map_err(|source| PoolFileError::Cpus { spec, source })?,
        }
    };
    Ok(PoolRequest {
        name,
        sched: cfg.sched,
        cpus,
        ignored: cfg.ignored,
    })
}

/// The lines xl prints before it creates a pool.
pub fn created_text(src: &str, c: &CpupoolCreated) -> String {
    format!(
        "Using config file \"{src}\"\ncpupool name:   {}\nscheduler:      {}\nnumber of cpus: {}\n",
        c.name, c.sched, c.cpus
    )
}

/// `xl cpupool-list [-c]`: every pool, or only `only`.
pub fn list_text(pools: &[CpupoolInfo], cpus: bool, only: Option<&str>) -> String {
    let mut out = format!("{:<19}", "Name");
    out.push_str(if cpus {
        "CPU list\n"
    } else {
        "CPUs   Sched     Active   Domain count\n"
    });
    for p in pools.iter().filter(|p| only.is_none_or(|o| o == p.name)) {
        out.push_str(&format!("{:<19}", p.name));
        if cpus {
            let list: Vec<String> = p.cpus.iter().map(u32::to_string).collect();
            out.push_str(&list.join(","));
        } else {
            out.push_str(&format!(
                "{:3} {:>9}       y       {:4}",
                p.cpus.len(),
                p.sched,
                p.domains
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Vec<CpupoolInfo> {
        vec![
            CpupoolInfo {
                id: 0,
                name: "Pool-0".into(),
                sched: "credit".into(),
                cpus: vec![0, 2],
                domains: 2,
            },
            CpupoolInfo {
                id: 1,
                name: "web".into(),
                sched: "credit2".into(),
                cpus: vec![1],
                domains: 0,
            },
        ]
    }

    #[test]
    fn the_list_is_xls_printf_layout() {
        assert_eq!(
            list_text(&pools(), false, None),
            "Name               CPUs   Sched     Active   Domain count\n\
             Pool-0               2    credit       y          2\n\
             web                  1   credit2       y          0\n"
        );
        assert_eq!(
            list_text(&pools(), true, Some("Pool-0")),
            "Name               CPU list\nPool-0             0,2\n"
        );
    }

    #[test]
    fn pool_files_become_requests() {
        let nodes = |n| (n == 0).then(|| vec![0, 1]);
        let r = pool_request("cpus=\"1\"\n", Some("/etc/xen/web.pool"), &[], 2, nodes).unwrap();
        assert_eq!((r.name.as_str(), r.cpus.as_slice()), ("web.pool", &[1][..]));
        let r = pool_request(
            "",
            None,
            &["name=\"p\"".into(), "nodes=[0]".into()],
            2,
            nodes,
        )
        .unwrap();
        assert_eq!(r.cpus, vec![0, 1]);
        assert!(matches!(
            pool_request("", None, &[], 2, nodes),
            Err(PoolFileError::MissingName)
        ));
        assert!(matches!(
            pool_request("nodes=[3]\nname='x'\n", None, &[], 2, nodes),
            Err(PoolFileError::NoNode(3))
        ));
        assert!(pool_request("name='x'\ncpus=\"7\"\n", None, &[], 2, nodes).is_err());
    }
}
