#!/bin/sh
# Re-create every capture in this directory (see README.md for versions). Needs openssl, curl,
# chromium, firefox-esr, go, java (17+) and python3 on PATH; `ONLY="go java"` re-captures some.
# rustls.bin is not made here: `cargo test --lib hello::tests::write_rustls_capture -- --ignored`.
set -eu
cd "$(dirname "$0")"
PORT=${PORT:-18443}
ONLY=${ONLY:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cap() { # cap NAME CLIENT-COMMAND...
    name=$1; shift
    if [ -n "$ONLY" ] && ! echo " $ONLY " | grep -q " $name "; then return 0; fi
    python3 capture.py "$PORT" "$name.bin" & pid=$!
    sleep 0.5
    timeout 60 "$@" >/dev/null 2>&1 </dev/null || true
    wait "$pid"
    sleep 1
}
cap openssl-sni   openssl s_client -connect 127.0.0.1:$PORT -servername www.example.com
cap openssl-nosni openssl s_client -connect 127.0.0.1:$PORT -noservername
cap openssl-tls12 openssl s_client -connect 127.0.0.1:$PORT -servername www.example.com -tls1_2
cap curl          curl -k --resolve www.example.com:$PORT:127.0.0.1 https://www.example.com:$PORT/
cap chromium-pq   chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$tmp/chromium" --host-resolver-rules="MAP www.example.com 127.0.0.1" \
    --ignore-certificate-errors "https://www.example.com:$PORT/"

# Firefox (NSS): a fresh profile that resolves www.example.com to loopback and stays quiet.
mkdir -p "$tmp/firefox"
cat >"$tmp/firefox/user.js" <<JS
user_pref("network.dns.localDomains", "www.example.com");
user_pref("network.dns.disableIPv6", true);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
JS
cap firefox       firefox-esr --headless --no-remote --profile "$tmp/firefox" "https://www.example.com:$PORT/"

# Go crypto/tls, Java HttpClient, Python ssl: the small clients below.
cat >"$tmp/main.go" <<GO
package main

import ("crypto/tls"; "os")

func main() {
	c, err := tls.Dial("tcp", "127.0.0.1:"+os.Args[1], &tls.Config{ServerName: "www.example.com",
		InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err == nil { c.Close() }
}
GO
cap go            sh -c "cd '$tmp' && GOFLAGS=-mod=mod GOCACHE='$tmp/gocache' go run main.go $PORT"
printf '127.0.0.1 www.example.com\n' >"$tmp/hosts"
cat >"$tmp/Hello.java" <<JAVA
import java.net.URI;
import java.net.http.*;
public class Hello {
    public static void main(String[] a) throws Exception {
        HttpClient c = HttpClient.newHttpClient();
        try { c.send(HttpRequest.newBuilder(URI.create("https://www.example.com:" + a[0] + "/")).build(),
                     HttpResponse.BodyHandlers.discarding()); } catch (Exception e) { }
    }
}
JAVA
cap java          java -Djdk.net.hosts.file="$tmp/hosts" "$tmp/Hello.java" "$PORT"
cap python        python3 -c "
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(['h2', 'http/1.1'])
try: ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='www.example.com')
except OSError: pass" "$PORT"
ls -l ./*.bin
