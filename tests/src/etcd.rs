//! A test etcd of its own: a single member on free loopback ports with its own data directory,
//! killed when the guard drops. Stopping and starting it again (with or without its data) is
//! how the pool tests take etcd away from the hosts.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// etcd's binary (Debian's `etcd-server`, which scripts/test.sh installs).
fn etcd_binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("etcd is missing: install Debian's etcd-server (scripts/test.sh does)");
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running test etcd; dropping it kills it.
pub struct TestEtcd {
    /// Where its data and log live.
    pub dir: tempfile::TempDir,
    /// The network namespace it runs in (`None`: this one) and its address there.
    netns: Option<String>,
    /// Its TLS files, when clients reach it over https.
    tls: Option<TlsFiles>,
    addr: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl TestEtcd {
    /// Starts one on free loopback ports and waits until it answers.
    pub fn start() -> TestEtcd {
        TestEtcd::launch(None, "127.0.0.1", free_port(), free_port())
    }

    /// Starts one inside network namespace `netns`, on `addr` (an address there), ports 2379
    /// and 2380 (the namespace is the test's own), and waits until it answers.
    pub fn start_in(netns: &str, addr: &str) -> TestEtcd {
        TestEtcd::launch(Some(netns.to_string()), addr, 2379, 2380)
    }

    /// Starts one on free loopback ports serving clients over TLS only, with a certificate of
    /// `tls`'s CA and client certificates required (`--client-cert-auth`).
    pub fn start_tls(tls: &TlsFiles) -> TestEtcd {
        let dir = tempfile::Builder::new()
            .prefix("rxen-etcd-")
            .tempdir()
            .expect("tempdir");
        let mut e = TestEtcd {
            dir,
            netns: None,
            tls: Some(tls.clone()),
            addr: "127.0.0.1".into(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        e.restart();
        e
    }

    fn launch(netns: Option<String>, addr: &str, client_port: u16, peer_port: u16) -> TestEtcd {
        let dir = tempfile::Builder::new()
            .prefix("rxen-etcd-")
            .tempdir()
            .expect("tempdir");
        let mut e = TestEtcd {
            dir,
            netns,
            tls: None,
            addr: addr.to_string(),
            client_port,
            peer_port,
            child: None,
        };
        e.restart();
        e
    }

    /// Its client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.addr, self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Throws its data away (while it is stopped): it comes back empty.
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "wipe a stopped etcd only");
        let _ = fs::remove_dir_all(self.data_dir());
    }

    /// Starts it again on the same ports and data directory; waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let client = self.endpoint();
        let peer = format!("http://{}:{}", self.addr, self.peer_port);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(etcd_binary());
                c
            }
            None => Command::new(etcd_binary()),
        };
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name")
            .arg("rxen-test")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("rxen-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether it answers `GET /health` with `"health":"true"` (asked from its namespace);
    /// over TLS, whether it says in its log that it serves clients (etcd's own gateway, which
    /// dials etcd with the server's certificate, is up then too).
    pub fn healthy(&self) -> bool {
        if self.tls.is_some() {
            return self.log().contains(&format!(
                "serving client requests on {}:{}",
                self.addr, self.client_port
            ));
        }
        let Some(ns) = self.netns.clone() else {
            return self.ask_health();
        };
        // A thread of its own enters the namespace (setns changes only the calling thread).
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let Ok(f) = fs::File::open(format!("/run/netns/{ns}")) else {
                        return false;
                    };
                    if nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                        return false;
                    }
                    self.ask_health()
                })
                .join()
                .unwrap_or(false)
        })
    }

    fn ask_health(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((self.addr.as_str(), self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// Posts `body` (JSON) to etcd's gateway at `path` (an etcd on loopback only); the answer.
    pub fn post(&self, path: &str, body: &str) -> String {
        assert!(self.netns.is_none(), "post to a loopback etcd only");
        let mut s = TcpStream::connect((self.addr.as_str(), self.client_port)).expect("etcd");
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .expect("send");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    }

    /// Turns on etcd's authentication with user `root` (role root) and `password`.
    pub fn enable_auth(&self, password: &str) {
        self.post("/v3/auth/role/add", r#"{"name":"root"}"#);
        let user = format!(r#"{{"name":"root","password":"{password}"}}"#);
        let added = self.post("/v3/auth/user/add", &user);
        assert!(added.contains("200 OK"), "{added}");
        self.post("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#);
        let on = self.post("/v3/auth/enable", "{}");
        assert!(on.contains("200 OK"), "{on}");
    }

    /// Its log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA and the certificates it signed: etcd's (for 127.0.0.1) and a client's.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// etcd's certificate and key.
    pub server_cert: PathBuf,
    /// etcd's key.
    pub server_key: PathBuf,
    /// A client certificate and key.
    pub client_cert: PathBuf,
    /// The client's key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and its two certificates in `dir` with openssl (P-256 keys, two days).
    pub fn make(dir: &std::path::Path) -> TlsFiles {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is missing (scripts/test.sh installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rxen test CA",
        ]);
        run(&ca);
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extfile) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.pem"),
                format!("{who}.ext"),
            );
            fs::write(dir.join(&extfile), ext).expect("extfile");
            let mut req = vec!["req"];
            req.extend(ec);
            let subj = format!("/CN=rxen test {who}");
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            run(&req);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ]);
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}
