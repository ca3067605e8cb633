#!/usr/bin/env bash
# Regenerates the OCSP test vectors of src/tls/ocsp.rs with the real `openssl ocsp` responder
# (and faketime for the expired one). The unit tests check them at a fixed time (NOW in
# ocsp.rs: 2026-06-01), so the files never expire in the repository.
set -euo pipefail
cd "$(dirname "$0")"
rm -f -- *.pem *.key *.der *.txt *.csr *.srl *.cnf
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null; }
at() { faketime "$1" "${@:2}"; }
# A CA, another CA, a leaf of the CA, a delegated OCSP responder, and one without the OCSP purpose.
at '2026-01-01 00:00:00' openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -subj "/CN=ocsp test CA" -days 3650 2>/dev/null
at '2026-01-01 00:00:00' openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other-ca.key -out other-ca.pem -subj "/CN=ocsp test CA" -days 3650 2>/dev/null
ec leaf a.example
at '2026-01-01 00:00:00' openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 0x1001 -out leaf.pem -days 3650 2>/dev/null
printf 'extendedKeyUsage=OCSPSigning\n' > responder.cnf
ec responder "ocsp responder"
at '2026-01-01 00:00:00' openssl x509 -req -in responder.csr -CA ca.pem -CAkey ca.key -set_serial 0x2001 -extfile responder.cnf -out responder.pem -days 3650 2>/dev/null
ec plain "not a responder"
at '2026-01-01 00:00:00' openssl x509 -req -in plain.csr -CA ca.pem -CAkey ca.key -set_serial 0x2002 -out plain.pem -days 3650 2>/dev/null
printf 'V\t351231235959Z\t\t1001\tunknown\t/CN=a.example\n' > index.txt
printf 'R\t351231235959Z\t260301000000Z\t1001\tunknown\t/CN=a.example\n' > revoked-index.txt
printf 'V\t351231235959Z\t\t1002\tunknown\t/CN=b.example\n' > other-index.txt
openssl ocsp -issuer ca.pem -cert leaf.pem -reqout req.der -no_nonce
openssl ocsp -issuer ca.pem -serial 0x1002 -reqout other-req.der -no_nonce
respond() { # TIME OUT.der INDEX SIGNER KEY [REQ] [DAYS] [extra...]
  at "$1" openssl ocsp -index "$3" -rsigner "$4" -rkey "$5" -CA ca.pem -reqin "${6:-req.der}" -respout "$2" -ndays "${7:-30}" "${@:8}" 2>/dev/null
}
respond '2026-05-20 00:00:00' good.der index.txt ca.pem ca.key
respond '2026-05-01 00:00:00' expired.der index.txt ca.pem ca.key req.der 1
respond '2026-06-10 00:00:00' future.der index.txt ca.pem ca.key
respond '2026-05-20 00:00:00' revoked.der revoked-index.txt ca.pem ca.key
respond '2026-05-20 00:00:00' other-serial.der other-index.txt ca.pem ca.key other-req.der
respond '2026-05-20 00:00:00' delegated.der index.txt responder.pem responder.key
respond '2026-05-20 00:00:00' not-a-responder.der index.txt plain.pem plain.key
respond '2026-05-20 00:00:00' by-key.der index.txt ca.pem ca.key req.der 30 -resp_key_id
# The same serial, issuer name and key of another CA: the issuer key hash differs.
openssl ocsp -issuer other-ca.pem -serial 0x1001 -reqout other-ca-req.der -no_nonce
at '2026-05-20 00:00:00' openssl ocsp -index index.txt -rsigner other-ca.pem -rkey other-ca.key -CA other-ca.pem -reqin other-ca-req.der -respout other-issuer.der -ndays 30 2>/dev/null
rm -f -- *.csr *.key *.srl *.cnf *req.der *index.txt
