//! A test etcd for the pool sections: one member on free loopback ports with a data
//! directory of its own, killed on drop (Debian's `etcd-server`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};
use crate::sections::migration::free_port;

/// A test etcd: one member on free loopback ports, killed on drop.
pub struct Etcd {
    child: Child,
    client: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd's binary, if installed.
pub fn binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Etcd {
    /// Starts it and waits until it answers its health check.
    pub fn start(bin: &PathBuf) -> Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("rxen-bench-etcd-")
            .tempdir()
            .map_err(|e| BenchError::io("make etcd's directory", e))?;
        let (client, peer) = (free_port()?, free_port()?);
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let child = Command::new(bin)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("bench={p}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: bin.display().to_string(),
                source,
            })?;
        let e = Etcd {
            child,
            client,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !e.healthy() {
            if Instant::now() > deadline {
                return Err(BenchError::timeout("etcd", Duration::from_secs(30)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(e)
    }

    /// Its client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut a = String::new();
        let _ = s.read_to_string(&mut a);
        a.contains("\"health\":\"true\"")
    }
}
