//! A small blocking client for etcd's v3 API through its JSON gateway (`POST /v3/...` over
//! HTTP or HTTPS): keys and values base64, 64-bit numbers as strings. Supported by etcd 3.4
//! and later. It tries each endpoint in turn and sticks to the one that answered.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest answer read from etcd.
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// What can go wrong talking to etcd; each is one line for the log or the user.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("etcd unreachable ({endpoints}): {last}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last failure.
        last: String,
    },
    /// etcd answered with an error.
    #[error("etcd refused {op}: {message} (code {code})")]
    Refused {
        /// What was asked.
        op: &'static str,
        /// etcd's message.
        message: String,
        /// The gRPC status code.
        code: i32,
    },
    /// etcd answered something that is not what its API says.
    #[error("etcd answered {op} with something unexpected: {0}", op = .1)]
    Garbled(String, &'static str),
    /// A TLS or credentials file could not be used.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// How to reach etcd (from `[pool]` in rxend.toml).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `http://HOST:PORT` or `https://HOST:PORT`, tried in order.
    pub endpoints: Vec<String>,
    /// PEM file of the CA that signed etcd's certificate (default: the usual web roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's key.
    pub key_file: Option<std::path::PathBuf>,
    /// etcd user, with the password read from `password_file`.
    pub user: Option<String>,
    /// The file that holds the user's password (first line).
    pub password_file: Option<std::path::PathBuf>,
}

/// One key and its value, as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// The revision of its last change (for compare-and-delete).
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// What [`Etcd::put_if`] expects of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It does not exist.
    Absent,
    /// It was last changed at this revision.
    ModRevision(i64),
}

/// etcd's client.
pub struct Etcd {
    agent: ureq::Agent,
    endpoints: Vec<String>,
    /// The endpoint that answered last (an index into `endpoints`).
    current: Mutex<usize>,
    credentials: Option<(String, String)>,
    /// The auth token when a user is configured.
    token: Mutex<Option<String>>,
}

// ---- the JSON gateway's messages (proto3 JSON: int64 as strings, defaults left out) ----

#[derive(Serialize)]
struct PutReq<'a> {
    key: &'a str,
    value: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    lease: i64,
}

#[derive(Serialize)]
struct RangeReq<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end: Option<&'a str>,
}

#[derive(Serialize)]
struct DeleteReq<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "UPPERCASE")]
struct GrantReq {
    ttl: i64,
}

#[derive(Serialize)]
struct LeaseIdReq {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Serialize)]
struct AuthReq<'a> {
    name: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct Compare<'a> {
    key: &'a str,
    target: &'static str,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mod_revision: Option<String>,
}

#[derive(Serialize)]
enum TxnOp<'a> {
    #[serde(rename = "request_put")]
    Put(PutReq<'a>),
    #[serde(rename = "request_range")]
    Range(RangeReq<'a>),
    #[serde(rename = "request_delete_range")]
    Delete(DeleteReq<'a>),
}

#[derive(Serialize)]
struct TxnReq<'a> {
    compare: Vec<Compare<'a>>,
    success: Vec<TxnOp<'a>>,
    failure: Vec<TxnOp<'a>>,
}

#[derive(Deserialize)]
struct WireKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: Num,
    #[serde(default)]
    lease: Num,
}

#[derive(Deserialize, Default)]
struct RangeResp {
    #[serde(default)]
    kvs: Vec<WireKv>,
}

#[derive(Deserialize)]
struct GrantResp {
    #[serde(rename = "ID", default)]
    id: Num,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize, Default)]
struct KeepAliveResult {
    #[serde(rename = "TTL", default)]
    ttl: Num,
}

#[derive(Deserialize)]
struct KeepAliveResp {
    #[serde(default)]
    result: Option<KeepAliveResult>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default)]
    revision: Num,
}

#[derive(Deserialize)]
struct TxnResp {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnOpResp>,
}

#[derive(Deserialize)]
struct TxnOpResp {
    #[serde(default)]
    response_range: Option<RangeResp>,
}

#[derive(Deserialize)]
struct AuthResp {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize, Debug)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    code: i32,
}

/// An int64 of proto3 JSON: a string, or a number from older gateways.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(from = "NumRepr")]
struct Num(i64);

#[derive(Deserialize)]
#[serde(untagged)]
enum NumRepr {
    Text(String),
    Int(i64),
}

impl From<NumRepr> for Num {
    fn from(r: NumRepr) -> Num {
        match r {
            NumRepr::Text(s) => Num(s.parse().unwrap_or(0)),
            NumRepr::Int(i) => Num(i),
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The end of the range of every key that starts with `prefix` (etcd's `WithPrefix`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn read_file(path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::File {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> EtcdError {
    EtcdError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The TLS settings of the options: the CA to trust and the client certificate, if any.
fn tls_config(opts: &EtcdOptions) -> Result<ureq::tls::TlsConfig, EtcdError> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let mut b = TlsConfig::builder();
    if let Some(ca) = &opts.ca_file {
        let pem = read_file(ca)?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(file_error(ca, "holds no PEM certificate"));
        }
        b = b.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            let pem = read_file(cert)?;
            let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if chain.is_empty() {
                return Err(file_error(cert, "holds no PEM certificate"));
            }
            let key_pem = read_file(key)?;
            let key_der = PrivateKey::from_pem(&key_pem).map_err(|e| file_error(key, e))?;
            b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key_der)));
        }
        (None, None) => {}
        _ => {
            return Err(EtcdError::File {
                path: "[pool]".into(),
                why: "cert-file and key-file go together".into(),
            })
        }
    }
    Ok(b.build())
}

impl Etcd {
    /// A client for these endpoints; reads the TLS and password files now.
    pub fn new(opts: &EtcdOptions) -> Result<Etcd, EtcdError> {
        if opts.endpoints.is_empty() {
            return Err(EtcdError::File {
                path: "[pool]".into(),
                why: "endpoints names no etcd".into(),
            });
        }
        let credentials = match (&opts.user, &opts.password_file) {
            (Some(user), Some(file)) => {
                let text = String::from_utf8(read_file(file)?)
                    .map_err(|_| file_error(file, "is not UTF-8 text"))?;
                let password = text.lines().next().unwrap_or("").to_string();
                Some((user.clone(), password))
            }
            (None, None) => None,
            _ => {
                return Err(EtcdError::File {
                    path: "[pool]".into(),
                    why: "user and password-file go together".into(),
                })
            }
        };
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .tls_config(tls_config(opts)?)
            .build();
        Ok(Etcd {
            agent: ureq::Agent::new_with_config(config),
            endpoints: opts
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            current: Mutex::new(0),
            credentials,
            token: Mutex::new(None),
        })
    }

    /// Posts `body` to `path` on the first endpoint that answers; the answer's text on 200.
    fn call<B: Serialize>(
        &self,
        op: &'static str,
        path: &str,
        body: &B,
    ) -> Result<String, EtcdError> {
        let token = self.token()?;
        match self.call_once(op, path, body, token.as_deref()) {
            // An expired or revoked token, or authentication turned on since: authenticate
            // again, once.
            Err(EtcdError::Refused { code, message, .. })
                if self.credentials.is_some()
                    && (code == 16 || message.contains("user name is empty")) =>
            {
                *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let token = self.token()?;
                self.call_once(op, path, body, token.as_deref())
            }
            other => other,
        }
    }

    /// The auth token, fetched when missing; `None` without credentials.
    fn token(&self) -> Result<Option<String>, EtcdError> {
        let Some((user, password)) = self.credentials.as_ref() else {
            return Ok(None);
        };
        let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_none() {
            let req = AuthReq {
                name: user,
                password,
            };
            *t = match self.call_once("authenticate", "/v3/auth/authenticate", &req, None) {
                Ok(text) => Some(Self::parse::<AuthResp>("authenticate", &text)?.token),
                // An etcd without authentication: no token is needed (an empty one stands
                // for that until etcd asks for one).
                Err(EtcdError::Refused {
                    code: 9, message, ..
                }) if message.contains("authentication is not enabled") => Some(String::new()),
                Err(e) => return Err(e),
            };
        }
        Ok(t.clone().filter(|t| !t.is_empty()))
    }

    fn call_once<B: Serialize>(
        &self,
        op: &'static str,
        path: &str,
        body: &B,
        token: Option<&str>,
    ) -> Result<String, EtcdError> {
        let n = self.endpoints.len();
        let first = *self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = String::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            let mut req = self.agent.post(&url);
            if let Some(t) = token {
                req = req.header("Authorization", t);
            }
            let mut resp = match req.send_json(body) {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{}: {e}", self.endpoints[idx]);
                    continue;
                }
            };
            let status = resp.status();
            let text = match resp
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_string()
            {
                Ok(t) => t,
                Err(e) => {
                    last = format!("{}: {e}", self.endpoints[idx]);
                    continue;
                }
            };
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = idx;
            if status.is_success() {
                return Ok(text);
            }
            // etcd's own refusals come with a JSON body; anything else (a proxy's page, a 5xx
            // of a member that is down) means: try the next.
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) if e.code != 14 => {
                    return Err(EtcdError::Refused {
                        op,
                        message: if e.message.is_empty() {
                            e.error
                        } else {
                            e.message
                        },
                        code: e.code,
                    })
                }
                _ => {
                    last = format!(
                        "{}: HTTP {}: {}",
                        self.endpoints[idx],
                        status.as_u16(),
                        text.trim().chars().take(200).collect::<String>()
                    );
                }
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints.join(", "),
            last,
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(op: &'static str, text: &str) -> Result<T, EtcdError> {
        serde_json::from_str(text).map_err(|e| EtcdError::Garbled(e.to_string(), op))
    }

    /// Writes `key` = `value`, attached to `lease` (0: none).
    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let (k, v) = (b64(key.as_bytes()), b64(value));
        let req = PutReq {
            key: &k,
            value: &v,
            lease,
        };
        self.call("put", "/v3/kv/put", &req).map(|_| ())
    }

    /// The key, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let k = b64(key.as_bytes());
        let req = RangeReq {
            key: &k,
            range_end: None,
        };
        let text = self.call("range", "/v3/kv/range", &req)?;
        let r: RangeResp = Self::parse("range", &text)?;
        Ok(Self::kvs(r).into_iter().next())
    }

    /// Every key that starts with `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let (k, end) = (b64(prefix.as_bytes()), b64(&prefix_end(prefix)));
        let req = RangeReq {
            key: &k,
            range_end: Some(&end),
        };
        let text = self.call("range", "/v3/kv/range", &req)?;
        Ok(Self::kvs(Self::parse("range", &text)?))
    }

    fn kvs(r: RangeResp) -> Vec<KeyValue> {
        r.kvs
            .into_iter()
            .filter_map(|kv| {
                let key = String::from_utf8(B64.decode(kv.key).ok()?).ok()?;
                let value = B64.decode(kv.value).ok()?;
                Some(KeyValue {
                    key,
                    value,
                    mod_revision: kv.mod_revision.0,
                    lease: kv.lease.0,
                })
            })
            .collect()
    }

    /// Deletes `key` (nothing when it does not exist).
    pub fn delete(&self, key: &str) -> Result<(), EtcdError> {
        let k = b64(key.as_bytes());
        let req = DeleteReq {
            key: &k,
            range_end: None,
        };
        self.call("delete", "/v3/kv/deleterange", &req).map(|_| ())
    }

    /// Deletes `key` only if it was not changed since `mod_revision`; whether it did.
    pub fn delete_if_unchanged(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        let k = b64(key.as_bytes());
        let req = TxnReq {
            compare: vec![Compare {
                key: &k,
                target: "MOD",
                result: "EQUAL",
                create_revision: None,
                mod_revision: Some(mod_revision.to_string()),
            }],
            success: vec![TxnOp::Delete(DeleteReq {
                key: &k,
                range_end: None,
            })],
            failure: vec![],
        };
        let text = self.call("txn", "/v3/kv/txn", &req)?;
        Ok(Self::parse::<TxnResp>("txn", &text)?.succeeded)
    }

    /// Writes `key` = `value` if the key is as `expect` says: `Ok(Ok(revision))` when written
    /// (the key's new modification revision), `Ok(Err(current))` when not (the key as it is,
    /// `None` when it does not exist).
    pub fn put_if(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<Result<i64, Option<KeyValue>>, EtcdError> {
        self.put_if_leased(key, value, expect, 0)
    }

    /// [`Etcd::put_if`] with the key attached to `lease` (0: none): it vanishes with the lease.
    pub fn put_if_leased(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
        lease: i64,
    ) -> Result<Result<i64, Option<KeyValue>>, EtcdError> {
        let (k, v) = (b64(key.as_bytes()), b64(value));
        let compare = match expect {
            Expect::Absent => Compare {
                key: &k,
                target: "CREATE",
                result: "EQUAL",
                create_revision: Some("0".into()),
                mod_revision: None,
            },
            Expect::ModRevision(rev) => Compare {
                key: &k,
                target: "MOD",
                result: "EQUAL",
                create_revision: None,
                mod_revision: Some(rev.to_string()),
            },
        };
        let req = TxnReq {
            compare: vec![compare],
            success: vec![TxnOp::Put(PutReq {
                key: &k,
                value: &v,
                lease,
            })],
            failure: vec![TxnOp::Range(RangeReq {
                key: &k,
                range_end: None,
            })],
        };
        let text = self.call("txn", "/v3/kv/txn", &req)?;
        let r: TxnResp = Self::parse("txn", &text)?;
        if r.succeeded {
            // The put's revision is the transaction's: the header of the answer.
            return Ok(Ok(r.header.revision.0));
        }
        let range = r
            .responses
            .into_iter()
            .find_map(|o| o.response_range)
            .unwrap_or_default();
        Ok(Err(Self::kvs(range).into_iter().next()))
    }

    /// Grants a lease of `ttl` seconds; its ID.
    pub fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let text = self.call("lease grant", "/v3/lease/grant", &GrantReq { ttl })?;
        let r: GrantResp = Self::parse("lease grant", &text)?;
        match r.error {
            Some(e) if !e.is_empty() => Err(EtcdError::Refused {
                op: "lease grant",
                message: e,
                code: 0,
            }),
            _ if r.id.0 == 0 => Err(EtcdError::Garbled("no lease ID".into(), "lease grant")),
            _ => Ok(r.id.0),
        }
    }

    /// Renews a lease; `false` when etcd no longer has it (it expired).
    pub fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let text = self.call(
            "lease keepalive",
            "/v3/lease/keepalive",
            &LeaseIdReq {
                id: lease.to_string(),
            },
        )?;
        // A stream of answers, one JSON object a line; the first is ours.
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let r: KeepAliveResp = Self::parse("lease keepalive", first)?;
        if let Some(e) = r.error {
            return Err(EtcdError::Refused {
                op: "lease keepalive",
                message: if e.message.is_empty() {
                    e.error
                } else {
                    e.message
                },
                code: e.code,
            });
        }
        Ok(r.result.is_some_and(|res| res.ttl.0 > 0))
    }

    /// Ends a lease now: the keys attached to it go.
    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call(
            "lease revoke",
            "/v3/lease/revoke",
            &LeaseIdReq {
                id: lease.to_string(),
            },
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn numbers_come_as_strings_or_numbers() {
        let r: RangeResp = serde_json::from_str(
            r#"{"kvs":[{"key":"L2E=","mod_revision":"7","value":"eA==","lease":12}]}"#,
        )
        .expect("json");
        let kv = Etcd::kvs(r);
        assert_eq!(kv[0].key, "/a");
        assert_eq!(kv[0].value, b"x");
        assert_eq!(kv[0].mod_revision, 7);
        assert_eq!(kv[0].lease, 12);
        let empty: RangeResp = serde_json::from_str(r#"{"header":{}}"#).expect("json");
        assert!(Etcd::kvs(empty).is_empty());
    }
}
