//! `sni-dispatch demo`: a complete local edge with nothing to prepare.
//!
//! It makes a throw-away CA and one certificate per site (rcgen), starts small HTTP origins
//! that answer which site and path served them, writes a configuration that shows every way a
//! connection is routed, prints the `curl` commands that show each case, and serves it:
//!
//! | address          | client sends          | route         | what happens                                   |
//! |------------------|-----------------------|---------------|------------------------------------------------|
//! | 127.0.0.2 (own)  | any SNI or none       | `dedicated`   | terminated with dedicated.demo.test's cert     |
//! | 127.0.0.1        | SNI shop.demo.test    | `shop`        | terminated with shop.demo.test's cert          |
//! | 127.0.0.1        | SNI *.app.demo.test   | `app`         | passed through to the internal terminator      |
//! | 127.0.0.3 (tier) | (from the front)      | `app-tier`    | the internal terminator: app's cert, to origin |
//! | 127.0.0.1        | no SNI                | `default`     | the default certificate                        |
//! | 127.0.0.1        | any other SNI         | —             | dropped                                        |

use crate::config::RuntimeOverrides;
use crate::pki;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A demo site: its route name, certificate name and origin.
struct Site {
    route: &'static str,
    dns: &'static str,
}

const SITES: [Site; 4] = [
    Site { route: "dedicated", dns: "dedicated.demo.test" },
    Site { route: "shop", dns: "shop.demo.test" },
    Site { route: "app-tier", dns: "*.app.demo.test" },
    Site { route: "default", dns: "default.demo.test" },
];

/// Writes the demo's files into `dir` and returns the config path and the text to print.
/// `port` is the port of every public listener.
pub fn prepare(dir: &Path, port: u16) -> Result<(PathBuf, String), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, data: &str| {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))
    };
    let ca = pki::Ca::new("sni-dispatch demo CA").map_err(|e| e.to_string())?;
    ca.write(dir, "ca.pem").map_err(|e| e.to_string())?;
    let mut origins = Vec::new();
    for site in &SITES {
        ca.issue(&[site.dns]).and_then(|leaf| leaf.write(dir, site.route)).map_err(|e| e.to_string())?;
        origins.push(start_origin(site.route)?);
    }
    let terminate = |site: &Site, origin: SocketAddr, extra: &str| {
        format!(
            "[[route]]\nname = \"{r}\"\n{extra}action = \"terminate\"\ncert = \"{r}.pem\"\nkey = \"{r}.key\"\nalpn = [\"http/1.1\"]\nbackends = [\"{origin}\"]\n\n",
            r = site.route
        )
    };
    let mut toml = format!(
        "# Written by `sni-dispatch demo`; certificates signed by ca.pem beside it.\n\
         [runtime]\nhello_timeout_ms = 5000\n\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\n\n[[listener]]\naddress = \"127.0.0.2:{port}\"\n\n\
         [[listener]]\naddress = \"127.0.0.3:{port}\"\n\n[fallback]\nno_sni = \"default\"\n\n"
    );
    toml += &terminate(&SITES[0], origins[0], "dedicated_ips = [\"127.0.0.2\"]\n");
    toml += &terminate(&SITES[1], origins[1], "sni = [\"shop.demo.test\"]\n");
    toml += &format!(
        "[[route]]\nname = \"app\"\nsni = [\"*.app.demo.test\"]\naction = \"passthrough\"\nbackends = [\"127.0.0.3:{port}\"]\n\n"
    );
    toml += &terminate(&SITES[2], origins[2], "dedicated_ips = [\"127.0.0.3\"]\n");
    toml += &terminate(&SITES[3], origins[3], "");
    write("demo.toml", &toml)?;

    let ca = dir.join("ca.pem");
    let ca = ca.display();
    let curl =
        |name: &str, ip: &str| format!("curl --cacert {ca} --resolve {name}:{port}:{ip} https://{name}:{port}/hello");
    let text = format!(
        "sni-dispatch demo: a local edge on 127.0.0.1-3, port {port} (files in {dir})\n\n\
         SNI on the shared address, terminated here:\n  {shop}\n\
         SNI passed through to the internal terminator on 127.0.0.3 (two tiers):\n  {app}\n\
         A dedicated IP serves its site whatever the SNI:\n  {ded}\n  {ded_other}\n\
         No SNI on the shared address gets the default certificate:\n  \
         openssl s_client -connect 127.0.0.1:{port} -noservername -CAfile {ca} </dev/null 2>/dev/null | grep subject\n\
         An unknown name is dropped:\n  {unknown}\n\n\
         Ctrl-C stops it.\n",
        dir = dir.display(),
        shop = curl("shop.demo.test", "127.0.0.1"),
        app = curl("www.app.demo.test", "127.0.0.1"),
        ded = curl("dedicated.demo.test", "127.0.0.2"),
        ded_other =
            curl("shop.demo.test", "127.0.0.2").replace(&format!("--cacert {ca}"), "-k") + "  # dedicated's page",
        unknown = curl("nobody.demo.test", "127.0.0.1"),
    );
    Ok((dir.join("demo.toml"), text))
}

/// Runs the demo until SIGINT/SIGTERM.
pub fn run(port: u16, overrides: &RuntimeOverrides) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("sni-dispatch-demo-{}", std::process::id()));
    let (config, text) = prepare(&dir, port)?;
    // The banner is advice: a closed stdout (a pipe whose reader left) must not stop the edge.
    let _ = writeln!(std::io::stdout(), "{text}");
    let result = crate::server::serve(&config, overrides, &Default::default()).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// An HTTP/1.1 origin on an ephemeral loopback port that answers which site and path it served.
fn start_origin(site: &'static str) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("origin for {site}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name(format!("origin-{site}"))
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || answer(conn, site));
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
}

fn answer(mut conn: TcpStream, site: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let body = format!("served by site {site:?}, path {path}\n");
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
