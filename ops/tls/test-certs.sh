#!/usr/bin/env bash
# Owns the test certificates of the TLS services (ops/kafka/secure-broker.sh,
# ops/postgres/secure-db.sh): a certificate authority made for the tests, a server
# certificate it signed for 127.0.0.1 and localhost, and a second, unrelated CA that a
# test names to see verification fail. Nothing here is for production.
#
#   ops/tls/test-certs.sh make|path
#
# make: creates what is missing (or expires within a day) under
# $ORDERFLOW_STATE_DIR/tls (/var/lib/orderflow/tls) and prints the directory; path:
# prints the directory only. Files: ca.pem, ca.key, server.pem (the certificate, then
# the CA), server.key (PKCS#8, unencrypted), other-ca.pem.
set -euo pipefail

DIR="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/tls"
DAYS=30

die() { echo "test-certs: $*" >&2; exit 1; }

# Valid for at least one more day, and server.pem signed by this ca.pem.
fresh() {
  [[ -s $DIR/ca.pem && -s $DIR/ca.key && -s $DIR/server.pem && -s $DIR/server.key && -s $DIR/other-ca.pem ]] &&
    openssl x509 -checkend 86400 -noout -in "$DIR/server.pem" >/dev/null 2>&1 &&
    openssl verify -CAfile "$DIR/ca.pem" "$DIR/server.pem" >/dev/null 2>&1
}

ca() { # ca NAME SUBJECT
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$DAYS" \
    -subj "$2" -keyout "$TMP/$1.key" -out "$TMP/$1.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

make() {
  command -v openssl >/dev/null || die "openssl is needed to make the test certificates but is not installed."
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock 9
  fresh && return
  TMP=$(mktemp -d "$DIR/.new.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  {
    ca ca "/CN=orderflow test CA"
    ca other-ca "/CN=orderflow unrelated test CA"
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=127.0.0.1" \
      -keyout "$TMP/server.key" -out "$TMP/server.csr"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" >"$TMP/server.ext"
    openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" \
      -CAcreateserial -days "$DAYS" -sha256 -extfile "$TMP/server.ext" -out "$TMP/server.crt"
  } >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "openssl failed, its output is above."; }
  # Kafka's PEM key store wants the certificate chain and a PKCS#8 key.
  cat "$TMP/server.crt" "$TMP/ca.pem" >"$TMP/server.pem"
  chmod 600 "$TMP"/*.key
  chmod 644 "$TMP"/*.pem
  for f in ca.pem ca.key other-ca.pem other-ca.key server.pem server.key; do mv -f "$TMP/$f" "$DIR/$f"; done
}

case "${1:-}" in
  make) make; echo "$DIR" ;;
  path) echo "$DIR" ;;
  *) echo "usage: $0 make|path" >&2; exit 2 ;;
esac
